// Compare: two or more jobs' curves on one chart, from their history.json (per epoch or per step)
// or range_test.json (smoothed loss over LR). Jobs are picked here or arrive as #/compare?ids=a,b.

import { api } from "../api.js";
import { LiveChart, PALETTE } from "../charts.js";
import { h, fill, errorBox, stateBadge } from "../dom.js";

const METRICS = {
  val_acc: { label: "validation accuracy per epoch", x: "epoch", file: "history.json" },
  val_loss: { label: "validation loss per epoch", x: "epoch", file: "history.json" },
  train_loss: { label: "training loss per epoch", x: "epoch", file: "history.json" },
  train_acc: { label: "training accuracy per epoch", x: "epoch", file: "history.json" },
  loss: { label: "training loss per step", x: "step", file: "history.json" },
  lr: { label: "learning rate per step", x: "step", file: "history.json" },
  range_test: { label: "range test: smoothed loss over LR", x: "learning rate", file: "range_test.json" },
};

export function render(main, params) {
  const controller = new AbortController();
  const picked = new Set((params.ids || "").split(",").filter(Boolean));
  const list = h("fieldset.pick", h("legend", { text: "Jobs" }));
  const metric = h("select#compare-metric", {},
    Object.entries(METRICS).map(([value, m]) => h("option", { value, text: m.label })));
  metric.value = METRICS[params.metric] ? params.metric : "val_acc";
  const status = h("div", { role: "status" });
  const chartBox = h("div.chart", { "data-chart": "compare" });
  const button = h("button", { type: "submit", text: "Draw" });
  let chart = null;

  const form = h("form.compare-form", { novalidate: true },
    list, h("div.field", h("label", { for: "compare-metric", text: "Curve" }), metric), button);

  function column(data, key) {
    const m = METRICS[key];
    if (key === "range_test") {
      const taken = (data.log || []).filter((r) => !r.skipped && r.lr > 0 && Number.isFinite(r.smoothed));
      return [taken.map((r) => r.lr), taken.map((r) => r.smoothed)];
    }
    const ys = data[key] || [];
    const xs = m.x === "epoch" ? (data.epoch || ys.map((_, i) => i + 1)) : ys.map((_, i) => i + 1);
    return [xs.slice(0, ys.length), ys.map((v) => (Number.isFinite(v) ? v : null))];
  }

  async function draw() {
    const ids = [...picked];
    const key = metric.value;
    history.replaceState(null, "", `#/compare?ids=${ids.join(",")}&metric=${key}`);
    if (ids.length < 2) { fill(status, errorBox("Pick two or more jobs.")); return; }
    status.replaceChildren();
    const file = METRICS[key].file;
    const results = await Promise.all(ids.map((id) =>
      api(`/v1/jobs/${encodeURIComponent(id)}/artifacts/${file}`, { signal: controller.signal })
        .then((data) => ({ id, data }), (err) => ({ id, err }))));
    const ok = results.filter((r) => r.data);
    const missing = results.filter((r) => r.err);
    if (missing.length) {
      fill(status, errorBox(missing.map((r) => `${r.id}: ${r.err.status === 404 ? `no ${file} (yet)` : r.err.message}`).join("; ")));
    }
    if (chart) { chart.destroy(); chart = null; }
    if (ok.length < 1) return;
    const tables = ok.map((r) => column(r.data, key)).map(([xs, ys]) => sortByX(xs, ys));
    const joined = globalThis.uPlot.join(tables);
    chart = new LiveChart(chartBox, {
      title: METRICS[key].label,
      xLabel: METRICS[key].x,
      yLabel: key === "range_test" ? "smoothed loss" : key,
      logX: key === "range_test",
      logY: key === "lr",
      height: 320,
      series: ok.map((r, i) => ({ label: r.id, color: PALETTE[i % PALETTE.length], points: METRICS[key].x === "epoch" })),
    });
    chart.set(joined);
    chartBox.dataset.series = String(ok.length);
  }

  form.addEventListener("submit", (event) => { event.preventDefault(); draw(); });

  async function load() {
    try {
      const page = await api("/v1/jobs?limit=50", { signal: controller.signal });
      const items = page.items.filter((j) => j.state === "succeeded" || picked.has(j.id));
      list.append(...(items.length ? items.map((job) => {
        const box = h("input", { type: "checkbox", id: `pick-${job.id}`, value: job.id, checked: picked.has(job.id) });
        box.addEventListener("change", () => { if (box.checked) picked.add(job.id); else picked.delete(job.id); });
        const spec = job.spec || {};
        return h("div.pick-row", box, h("label", { for: box.id },
          `${job.id} · ${job.kind} · ${spec.dataset || spec.preset || "–"} / ${spec.model || "–"} `), stateBadge(job.state));
      }) : [h("p", { text: "No finished jobs yet." })]));
      if (picked.size >= 2) await draw();
    } catch (err) {
      if (err.name !== "AbortError") fill(status, errorBox(`Could not load the jobs: ${err.message}`));
    }
  }

  fill(main, h("h1", { text: "Compare jobs" }), form, status, chartBox);
  load();
  return () => { controller.abort(); if (chart) chart.destroy(); };
}

function sortByX(xs, ys) {
  const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
  return [order.map((i) => xs[i]), order.map((i) => ys[i])];
}
