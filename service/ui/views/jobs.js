// The jobs list: filter by state and kind, states refreshed every 2 s while the page is open,
// cancel and delete behind a confirmation, and a pick of jobs to compare.

import { api } from "../api.js";
import { h, fill, stateBadge, when, pct, errorBox, FINAL_STATES } from "../dom.js";

const STATES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"];
const KINDS = { train: "training", range_test: "range test" };
const REFRESH_MS = 2000;

export function render(main, params) {
  const stateSelect = h("select#filter-state", { name: "state" },
    h("option", { value: "", text: "any state" }), STATES.map((s) => h("option", { value: s, text: s })));
  const kindSelect = h("select#filter-kind", { name: "kind" },
    h("option", { value: "", text: "any kind" }),
    Object.entries(KINDS).map(([value, text]) => h("option", { value, text })));
  stateSelect.value = params.state || "";
  kindSelect.value = params.kind || "";
  const status = h("div.status", { role: "status" });
  const body = h("tbody");
  const compareButton = h("button", { type: "button", text: "Compare selected", disabled: true });
  const table = h("table.jobs",
    h("caption.visually-hidden", { text: "Your jobs, newest first" }),
    h("thead", h("tr", ["", "Job", "Kind", "State", "Progress", "Dataset / model", "Created", "Actions"]
      .map((t, i) => h("th", { scope: "col", text: t || null }, i === 0 ? h("span.visually-hidden", "select") : null)))),
    body);
  const selected = new Set();
  let timer = null;
  let stopped = false;

  const updateFilters = () => {
    const query = new URLSearchParams();
    if (stateSelect.value) query.set("state", stateSelect.value);
    if (kindSelect.value) query.set("kind", kindSelect.value);
    history.replaceState(null, "", `#/jobs${query.size ? `?${query}` : ""}`);
    load();
  };
  stateSelect.addEventListener("change", updateFilters);
  kindSelect.addEventListener("change", updateFilters);
  compareButton.addEventListener("click", () => {
    location.hash = `#/compare?ids=${[...selected].join(",")}`;
  });

  async function act(job, action) {
    const question = action === "cancel"
      ? `Cancel job ${job.id}? A running job stops within a few batches.`
      : `Delete job ${job.id} for good, with its model, plots and report?`;
    if (!window.confirm(question)) return;
    try {
      if (action === "cancel") await api(`/v1/jobs/${encodeURIComponent(job.id)}/cancel`, { method: "POST" });
      else await api(`/v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
      fill(status, `Job ${job.id}: ${action === "cancel" ? "cancel requested" : "deleted"}.`);
      selected.delete(job.id);
    } catch (err) {
      fill(status, errorBox(`Could not ${action} job ${job.id}: ${err.message}`));
    }
    load();
  }

  function row(job) {
    const spec = job.spec || {};
    const box = h("input", { type: "checkbox", "aria-label": `select ${job.id} to compare`, checked: selected.has(job.id) });
    box.addEventListener("change", () => {
      if (box.checked) selected.add(job.id); else selected.delete(job.id);
      compareButton.disabled = selected.size < 2;
    });
    const final = FINAL_STATES.has(job.state);
    const actions = h("td.actions",
      final ? null : h("button.secondary", { type: "button", text: "Cancel", onclick: () => act(job, "cancel"),
        "aria-label": `cancel ${job.id}` }),
      final ? h("button.danger", { type: "button", text: "Delete", onclick: () => act(job, "delete"),
        "aria-label": `delete ${job.id}` }) : null);
    const progress = job.progress && typeof job.progress.fraction === "number" ? job.progress.fraction : null;
    return h("tr", { "data-job": job.id, "data-state": job.state },
      h("td", box),
      h("td", h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, text: job.id })),
      h("td", { text: KINDS[job.kind] || job.kind }),
      h("td", stateBadge(job.state), job.error ? h("div.error-text", { text: job.error }) : null),
      h("td", { text: job.state === "succeeded" ? "done" : progress === null ? "–" : pct(progress) }),
      h("td", { text: `${spec.dataset || spec.preset || "–"} / ${spec.model || "–"}` }),
      h("td", { text: when(job.created_at) }),
      actions);
  }

  async function load() {
    clearTimeout(timer);
    if (document.hidden) { timer = setTimeout(load, REFRESH_MS); return; } // a background tab asks nothing
    const query = new URLSearchParams({ limit: "50" });
    if (stateSelect.value) query.set("state", stateSelect.value);
    if (kindSelect.value) query.set("kind", kindSelect.value);
    try {
      const page = await api(`/v1/jobs?${query}`);
      if (stopped) return;
      fill(body, page.items.length ? page.items.map(row)
        : h("tr", h("td", { colspan: "8", text: "No jobs match. Start one from “New job”." })));
      compareButton.disabled = selected.size < 2;
    } catch (err) {
      if (stopped) return;
      fill(status, errorBox(`Could not load the jobs: ${err.message}`));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  fill(main,
    h("h1", { text: "Jobs" }),
    h("div.toolbar",
      h("label", { for: "filter-state", text: "State" }), stateSelect,
      h("label", { for: "filter-kind", text: "Kind" }), kindSelect,
      compareButton,
      h("a.button", { href: "#/submit", text: "New job" })),
    status,
    h("div.table-wrap", table));
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
