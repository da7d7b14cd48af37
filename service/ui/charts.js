// Charts on uPlot (vendor/uPlot.iife.min.js, a classic script that defines globalThis.uPlot).
// Live charts take points as they arrive and redraw at most once per animation frame, so a burst
// of events costs one redraw, not one per event: that is how 1,000 events follow without dropped
// frames. The chart's element carries data-points (how many x values it shows) for tests and tools.

import { h, num } from "./dom.js";

export const PALETTE = ["#1f5fbf", "#c2410c", "#15803d", "#7e22ce", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

const uPlot = () => {
  if (!globalThis.uPlot) throw new Error("uPlot did not load (vendor/uPlot.iife.min.js)");
  return globalThis.uPlot;
};

function widthOf(el) {
  return Math.max(280, Math.floor(el.getBoundingClientRect().width || el.parentElement?.clientWidth || 600));
}

const lrTicks = (u, values) => values.map((v) => (v === null ? "" : num(v, 2)));

/**
 * A line chart that grows. series: [{label, color, dash, points, scale}]; options: title, xLabel,
 * yLabel, logX, logY, sync (a cursor-sync key), height, y2Label (for series with scale "y2").
 */
export class LiveChart {
  constructor(target, { title, xLabel, yLabel, series, logX = false, logY = false, sync, height = 240,
    y2Label, yRange, hooks = {} }) {
    this.target = target;
    this.columns = [[], ...series.map(() => [])];
    this.pending = false;
    const axes = [
      { label: xLabel, values: logX ? lrTicks : undefined, stroke: "#222" },
      { label: yLabel, values: logY ? lrTicks : undefined, stroke: "#222", size: 60 },
    ];
    const scales = {
      x: logX ? { time: false, distr: 3, log: 10 } : { time: false },
      y: logY ? { distr: 3, log: 10 } : { range: yRange },
    };
    if (y2Label) {
      axes.push({ scale: "y2", side: 1, label: y2Label, grid: { show: false }, stroke: "#222" });
      scales.y2 = { range: [0, 1] };
    }
    const opts = {
      title,
      width: widthOf(target),
      height,
      scales,
      axes,
      series: [
        { label: xLabel, value: (u, v) => (v === null || v === undefined ? "–" : num(v)) },
        ...series.map((s, i) => ({
          label: s.label,
          scale: s.scale || "y",
          stroke: s.color || PALETTE[i % PALETTE.length],
          width: s.width || 1.5,
          dash: s.dash,
          spanGaps: true,
          points: { show: s.points ?? false, size: 5 },
          value: (u, v) => (v === null || v === undefined ? "–" : num(v)),
        })),
      ],
      cursor: sync ? { sync: { key: sync } } : {},
      legend: { live: true },
      hooks,
    };
    this.plot = new (uPlot())(opts, this.columns, target);
    target.dataset.points = "0";
    this.resize = new ResizeObserver(() => this.plot.setSize({ width: widthOf(target), height }));
    this.resize.observe(target);
  }

  /** Add one x with its y values (null where a series has none); drawn on the next frame. */
  push(x, ...ys) {
    this.columns[0].push(x);
    for (let i = 1; i < this.columns.length; i += 1) this.columns[i].push(ys[i - 1] ?? null);
    this.schedule();
  }

  /** Set the newest x's value of one column (1 = the first series), e.g. a validation score. */
  setLast(column, value) {
    const values = this.columns[column];
    if (!values.length) return;
    values[values.length - 1] = value;
    this.schedule();
  }

  /** Replace all data: [xs, ys1, ys2, ...]. */
  set(columns) {
    this.columns = columns;
    this.schedule();
  }

  get length() { return this.columns[0].length; }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.plot.setData(this.columns);
      this.target.dataset.points = String(this.columns[0].length);
    });
  }

  destroy() {
    this.resize.disconnect();
    this.plot.destroy();
  }
}

/**
 * The range test from range_test.json: raw and smoothed loss over a log LR axis, every suggestion
 * as a labelled vertical line, the recommended band shaded, the divergence point marked, and a
 * readout of LR and loss under the cursor. Returns {element, destroy}.
 */
export function rangeTestChart(result) {
  const taken = (result.log || []).filter((r) => !r.skipped && r.lr > 0);
  const lrs = taken.map((r) => r.lr);
  const raw = taken.map((r) => (Number.isFinite(r.loss) ? r.loss : null));
  const smoothed = taken.map((r) => (Number.isFinite(r.smoothed) ? r.smoothed : null));
  // range_test.json: the sweep's `log` at the top, the choice read off it under `summary`
  // (files written before that split held the choice's fields at the top level).
  const choice = result.summary || result;
  const suggestions = Object.entries(choice.suggestions || {}).filter(([, lr]) => typeof lr === "number");
  const rec = choice.recommendation;
  const stopped = choice.stopped_at;

  const readout = h("output.readout", { "aria-live": "off", text: "Hover over the chart to read LR and loss." });
  const canvasBox = h("div.chart.range-chart", { "data-chart": "range-test" });
  const finite = smoothed.filter((v) => v !== null);
  const low = Math.min(...finite, ...raw.filter((v) => v !== null));
  const high = Math.max(...finite);
  const yRange = finite.length ? [low - 0.05 * Math.abs(low), high + 0.25 * Math.abs(high - low || 1)] : undefined;

  const element = h("div.range-test",
    canvasBox,
    readout,
    h("h4", { text: "Suggestions" }),
    h("ul.suggestions", suggestions.map(([name, lr], i) =>
      h("li", h(`span.swatch.c${i % PALETTE.length}`, { "aria-hidden": "true" }), `${name}: ${num(lr, 3)}`))),
    rec ? h("p.band-text", `Recommended band (${rec.policy || "policy"}): base_lr ${num(rec.base_lr, 3)} to max_lr `,
      `${num(rec.max_lr, 3)}`, rec.rule ? ` (rule: ${rec.rule})` : "",
      rec.low_confidence ? " (low confidence)" : "") : h("p", { text: "No recommendation: see the warnings." }),
    stopped ? h("p", { text: `Stopped at step ${stopped.step} (LR ${num(stopped.lr, 3)}): ${choice.stop_reason}` })
      : h("p", { text: `Stop reason: ${choice.stop_reason || "–"}` }),
    (choice.warnings || []).length ? h("ul.warnings", choice.warnings.map((w) => h("li", { text: w }))) : null,
  );

  const marks = (u) => {
    const { ctx } = u;
    const { top, height } = u.bbox;
    const ratio = devicePixelRatio || 1;
    ctx.save();
    if (rec && rec.base_lr > 0 && rec.max_lr > 0) {
      const x0 = u.valToPos(rec.base_lr, "x", true);
      const x1 = u.valToPos(rec.max_lr, "x", true);
      ctx.fillStyle = "rgba(21, 128, 61, 0.12)";
      ctx.fillRect(Math.min(x0, x1), top, Math.abs(x1 - x0), height);
    }
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.lineWidth = 1.5 * ratio;
    suggestions.forEach(([name, lr], i) => {
      const x = u.valToPos(lr, "x", true);
      ctx.strokeStyle = PALETTE[i % PALETTE.length];
      ctx.fillStyle = PALETTE[i % PALETTE.length];
      ctx.setLineDash([5 * ratio, 4 * ratio]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillText(name, x + 3 * ratio, top + (12 + 13 * i) * ratio);
    });
    if (stopped && stopped.lr > 0) {
      const x = u.valToPos(stopped.lr, "x", true);
      ctx.strokeStyle = "#b91c1c";
      ctx.setLineDash([2 * ratio, 2 * ratio]);
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
    }
    ctx.restore();
  };

  const chart = () => new LiveChart(canvasBox, {
    title: "LR range test",
    xLabel: "learning rate",
    yLabel: "loss",
    logX: true,
    yRange,
    series: [
      { label: "loss (raw)", color: "#94a3b8", width: 1 },
      { label: "loss (smoothed)", color: "#1f5fbf", width: 2 },
    ],
    hooks: {
      draw: [marks],
      setCursor: [(u) => {
        const i = u.cursor.idx;
        if (i === null || i === undefined) return;
        readout.textContent = `LR ${num(lrs[i], 3)} · loss ${num(raw[i])} · smoothed ${num(smoothed[i])}`;
      }],
    },
  });
  let live = null;
  return {
    element,
    /** Draw once the element is in the document (uPlot measures its container). */
    mount() {
      live = chart();
      live.set([lrs, raw, smoothed]);
    },
    destroy() { if (live) live.destroy(); },
  };
}
