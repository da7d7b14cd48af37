// One job: its state and progress, live curves from the SSE stream (replayed from the start, so a
// finished job shows its whole run too), the range test with its suggestions, the classification
// report and confusion matrix, the PNG plots and a download for every artifact.

import { api, blobUrl, download } from "../api.js";
import { LiveChart, rangeTestChart } from "../charts.js";
import { h, fill, num, pct, when, stateBadge, errorBox, FINAL_STATES } from "../dom.js";
import { follow } from "../sse.js";

const KINDS = { train: "training", range_test: "range test" };

export function render(main, { id }) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const controller = new AbortController();
  const disposers = [];
  const urls = [];
  const heading = h("h1", { text: `Job ${id}` });
  const summary = h("div.summary");
  const problem = h("div");
  const actions = h("div.toolbar");
  // The follow line changes every frame while a job runs: no live region there, or a screen reader
  // would read it non-stop. State changes are announced once each, in `announce`.
  const liveStatus = h("p.live-status");
  const announce = h("p.visually-hidden", { role: "status" });
  const curves = h("div.curves");
  const rangeSection = h("section", { "aria-labelledby": "rt-h" });
  const reportSection = h("section", { "aria-labelledby": "report-h" });
  const plotsSection = h("section", { "aria-labelledby": "plots-h" });
  const filesSection = h("section", { "aria-labelledby": "files-h" });
  fill(main, heading, announce, summary, problem, actions,
    h("section", { "aria-labelledby": "curves-h" }, h("h2#curves-h", { text: "Live curves" }), liveStatus, curves),
    rangeSection, reportSection, plotsSection, filesSection);

  let job = null;
  let announced = null;
  const shown = new Set(); // which artifact sections are drawn, so a reload does not redraw them
  const live = { range: null, loss: null, acc: null, lr: null, lastStep: 0, lastLr: 0, latest: null, frame: false,
    events: 0 };

  // ------------------------------------------------------------------ the record and its sections

  async function load() {
    try {
      job = await api(path, { signal: controller.signal });
    } catch (err) {
      if (err.name === "AbortError") return;
      fill(problem, errorBox(err.status === 404 ? `There is no job ${id} for this key (it may have been deleted).`
        : `Could not load the job: ${err.message}`));
      return;
    }
    if (announced !== null && announced !== job.state) announce.textContent = `The job is now ${job.state}.`;
    announced = job.state;
    renderSummary();
    performance.mark("clr:job-rendered");
    await renderArtifacts();
  }

  function renderSummary() {
    const spec = job.spec || {};
    const progress = job.progress || {};
    const fraction = job.state === "succeeded" ? 1 : progress.fraction;
    fill(summary, h("dl.facts",
      fact("Kind", KINDS[job.kind] || job.kind),
      fact("State", stateBadge(job.state)),
      fact("Dataset", spec.dataset || (spec.preset ? `(preset ${spec.preset})` : "–")),
      fact("Model", spec.model || "–"),
      spec.preset ? fact("Preset", spec.preset) : null,
      fact("Progress", h("progress", { max: "1", value: String(fraction ?? 0), "aria-label": "job progress" }),
        ` ${typeof fraction === "number" ? pct(fraction) : "–"}`,
        progress.phase && !FINAL_STATES.has(job.state) ? ` (${progress.phase})` : ""),
      fact("Created", when(job.created_at)),
      fact("Finished", when(job.finished_at)),
      job.result && typeof job.result.accuracy === "number" ? fact("Accuracy", pct(job.result.accuracy)) : null));
    summary.dataset.state = job.state;
    fill(problem,
      job.error ? errorBox(`This job ${job.state === "failed" ? "failed" : "stopped"}: ${job.error}`) : null,
      job.cancel_requested && !FINAL_STATES.has(job.state) ? h("p.banner", { text: "Cancel requested." }) : null);
    const final = FINAL_STATES.has(job.state);
    fill(actions,
      final ? null : h("button.secondary", { type: "button", text: "Cancel job", onclick: () => act("cancel") }),
      final ? h("button.danger", { type: "button", text: "Delete job", onclick: () => act("delete") }) : null,
      h("a.button.secondary", { href: `#/compare?ids=${encodeURIComponent(id)}`, text: "Compare with others" }));
  }

  async function act(action) {
    const question = action === "cancel" ? `Cancel job ${id}?`
      : `Delete job ${id} for good, with its model, plots and report?`;
    if (!window.confirm(question)) return;
    try {
      if (action === "cancel") {
        job = await api(`${path}/cancel`, { method: "POST" });
        renderSummary();
      } else {
        await api(path, { method: "DELETE" });
        location.hash = "#/jobs";
      }
    } catch (err) {
      fill(problem, errorBox(`Could not ${action} the job: ${err.message}`));
    }
  }

  async function renderArtifacts() {
    const links = job.links || {};
    const artifacts = links.artifacts || {};
    const jobs = [];
    if (artifacts["range_test.json"] && !shown.has("range")) {
      shown.add("range");
      jobs.push(showRangeTest(artifacts["range_test.json"]));
    }
    if (links.report && !shown.has("report")) {
      shown.add("report");
      jobs.push(showReport(links.report));
    }
    const plotNames = Object.keys(links.plots || {}).sort().join(",");
    if (plotNames && !shown.has(`plots:${plotNames}`)) {
      shown.add(`plots:${plotNames}`);
      jobs.push(showPlots(links.plots));
    }
    showFiles(links);
    await Promise.all(jobs);
  }

  async function showRangeTest(url) {
    try {
      const result = await api(url, { signal: controller.signal });
      const chart = rangeTestChart(result);
      fill(rangeSection, h("h2#rt-h", { text: "Range test" }), chart.element);
      chart.mount();
      disposers.push(() => chart.destroy());
    } catch (err) {
      if (err.name !== "AbortError") fill(rangeSection, h("h2#rt-h", { text: "Range test" }), errorBox(err.message));
    }
  }

  async function showReport(url) {
    try {
      const report = await api(url, { signal: controller.signal });
      fill(reportSection, h("h2#report-h", { text: "Classification report" }), reportTable(report),
        h("h3", { text: "Confusion matrix" }), confusionTable(report));
    } catch (err) {
      if (err.name !== "AbortError") fill(reportSection, h("h2#report-h", { text: "Classification report" }), errorBox(err.message));
    }
  }

  async function showPlots(plots) {
    const figures = Object.entries(plots).map(([name, url]) => {
      const img = h("img", { alt: `${name.replaceAll("_", " ")} plot`, "data-plot": name });
      blobUrl(url, controller.signal).then((src) => { urls.push(src); img.src = src; })
        .catch((err) => { if (err.name !== "AbortError") img.replaceWith(errorBox(`${name}: ${err.message}`)); });
      return h("figure", img, h("figcaption", { text: name.replaceAll("_", " ") }));
    });
    fill(plotsSection, h("h2#plots-h", { text: "Plots" }), h("div.plots", figures));
  }

  function showFiles(links) {
    const files = Object.entries(links.artifacts || {});
    if (links.report_text) files.push(["report.txt", links.report_text]);
    if (links.report) files.push(["report.json", links.report]);
    if (!files.length) { filesSection.replaceChildren(); return; }
    fill(filesSection, h("h2#files-h", { text: "Files" }), h("ul.files", files.map(([name, url]) =>
      h("li", h("button.link", { type: "button", text: `Download ${name}`, "data-file": name,
        onclick: () => download(url, name.includes(".") ? `${id}-${name}` : `${id}-${name}.pt`)
          .catch((err) => fill(problem, errorBox(`Download failed: ${err.message}`))) })))));
  }

  // ------------------------------------------------------------------ live curves

  function trainingCharts() {
    if (live.loss) return;
    const boxes = ["loss", "acc", "lr"].map((name) => h(`div.chart`, { "data-chart": name }));
    curves.append(...boxes);
    const common = { xLabel: "step", sync: `job-${id}`, height: 200 };
    live.loss = new LiveChart(boxes[0], { ...common, title: "Loss", yLabel: "loss",
      series: [{ label: "train loss" }, { label: "val loss", points: true, color: "#c2410c" }] });
    live.acc = new LiveChart(boxes[1], { ...common, title: "Accuracy", yLabel: "accuracy", yRange: [0, 1],
      series: [{ label: "train acc", color: "#15803d" }, { label: "val acc", points: true, color: "#7e22ce" }] });
    live.lr = new LiveChart(boxes[2], { ...common, title: "Learning rate", yLabel: "LR",
      series: [{ label: "LR", color: "#0e7490" }] });
    disposers.push(() => [live.loss, live.acc, live.lr].forEach((c) => c.destroy()));
  }

  function rangeChart() {
    if (live.range) return;
    const box = h("div.chart", { "data-chart": "live-range" });
    curves.prepend(box);
    live.range = new LiveChart(box, { title: "Range test (live)", xLabel: "learning rate", yLabel: "loss",
      logX: true, height: 200, series: [{ label: "loss", color: "#94a3b8" }, { label: "smoothed", width: 2 }] });
    disposers.push(() => live.range.destroy());
  }

  function onProgress(data) {
    const progress = data.progress || {};
    const m = data.metrics || {};
    live.latest = progress;
    live.events += 1;
    if (progress.phase === "range_test" && typeof m.lr === "number" && m.lr > live.lastLr) {
      rangeChart();
      live.lastLr = m.lr;
      live.range.push(m.lr, finite(m.loss), finite(m.smoothed_loss));
    } else if (progress.phase === "train" && typeof progress.step === "number" && progress.step > live.lastStep) {
      trainingCharts();
      live.lastStep = progress.step;
      live.loss.push(progress.step, finite(m.loss), null);
      live.acc.push(progress.step, finite(m.acc), null);
      live.lr.push(progress.step, finite(m.lr));
    } else if (progress.phase === "eval" && live.loss && live.loss.length
      && (typeof m.val_loss === "number" || typeof m.val_acc === "number")) {
      live.loss.setLast(2, finite(m.val_loss));
      live.acc.setLast(2, finite(m.val_acc));
    }
    paintSoon();
  }

  // Text updates once per frame, like the charts: a burst of events is one layout, not hundreds.
  function paintSoon() {
    if (live.frame) return;
    live.frame = true;
    requestAnimationFrame(() => {
      live.frame = false;
      curves.dataset.events = String(live.events); // progress events received: resuming must not repeat any
      const p = live.latest;
      if (!p) return;
      const where = p.phase === "range_test" ? `range test step ${p.step} of ${p.steps}`
        : p.phase === "train" ? `epoch ${p.epoch} of ${p.epochs}, step ${p.step} of ${p.steps}`
          : `${p.phase || "working"}${p.epoch ? ` after epoch ${p.epoch}` : ""}`;
      liveStatus.textContent = `Following: ${where}.`;
      const bar = summary.querySelector("progress");
      if (bar && typeof p.fraction === "number") bar.value = p.fraction;
    });
  }

  let lastPhase = null;
  function onEvent({ event, data }) {
    if (event === "progress") {
      onProgress(data);
      const phase = data.progress && data.progress.phase;
      if (phase !== lastPhase) {
        lastPhase = phase;
        if (job && phase === "train") load(); // the range test's files exist once training starts
      }
    } else if (event === "state") {
      if (job && data.state && data.state !== job.state) load();
    } else if (event === "error") {
      liveStatus.textContent = `The stream paused: ${data.detail || "server problem"}; resuming…`;
    }
  }

  const isFinal = ({ event, data }) => event === "state" && (FINAL_STATES.has(data.state) || data.state === "deleted");

  load().then(() => {
    if (!job) return; // not found or not loadable: said so above
    follow(`${path}/events`, {
      onEvent,
      isFinal,
      signal: controller.signal,
      onProblem: (text) => { liveStatus.textContent = `Live updates interrupted: ${text}`; },
    }).then(() => {
      if (controller.signal.aborted) return;
      if (!liveStatus.textContent.startsWith("Live updates interrupted")) liveStatus.textContent = "The job has ended.";
      load();
    });
  });

  return () => {
    controller.abort();
    disposers.forEach((d) => d());
    urls.forEach((u) => URL.revokeObjectURL(u));
  };
}

function finite(v) {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

function fact(name, ...value) {
  return h("div", h("dt", { text: name }), h("dd", ...value));
}

function reportTable(report) {
  const classes = report.classes || Object.keys(report).filter((k) => typeof report[k] === "object"
    && !Array.isArray(report[k]) && !k.includes("avg"));
  const rows = [...classes, "macro avg", "weighted avg"].filter((name) => report[name]);
  return h("table.report", { "data-table": "report" },
    h("caption", { text: `Test split: accuracy ${pct(report.accuracy)}` }),
    h("thead", h("tr", ["class", "precision", "recall", "f1-score", "support"].map((t) => h("th", { scope: "col", text: t })))),
    h("tbody", rows.map((name) => {
      const r = report[name];
      return h("tr", h("th", { scope: "row", text: name }),
        h("td", { text: num(r.precision, 3) }), h("td", { text: num(r.recall, 3) }),
        h("td", { text: num(r["f1-score"], 3) }), h("td", { text: num(r.support) }));
    })));
}

function confusionTable(report) {
  const matrix = report.confusion_matrix;
  const classes = report.classes || [];
  if (!Array.isArray(matrix) || !matrix.length) return h("p", { text: "No confusion matrix in the report." });
  return h("div.table-wrap", h("table.confusion", { "data-table": "confusion" },
    h("caption", { text: "Rows: true class; columns: predicted class" }),
    h("thead", h("tr", h("th", { scope: "col", text: "true \\ predicted" }),
      matrix[0].map((_, j) => h("th", { scope: "col", text: classes[j] ?? j })))),
    h("tbody", matrix.map((row, i) => {
      const total = row.reduce((a, b) => a + b, 0) || 1;
      return h("tr", h("th", { scope: "row", text: classes[i] ?? i }),
        row.map((count, j) => h(`td.heat-${Math.min(5, Math.round((count / total) * 5))}${i === j ? ".diag" : ""}`,
          { text: count })));
    }))));
}
