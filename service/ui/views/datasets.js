// Datasets: the catalog, your uploads with their classes and counts, an upload form with a progress
// bar (XMLHttpRequest: fetch reports no upload progress), and delete. Names and class names are
// whatever the uploader chose, so they are only ever set as text.

import { api } from "../api.js";
import { sendWithProgress, removeAfterConfirm } from "./upload_steps.js";
import { h, fill, bytes, when, errorBox } from "../dom.js";

const TYPES = [
  [/\.zip$/i, "application/zip"],
  [/\.(tar\.gz|tgz)$/i, "application/gzip"],
  [/\.tar$/i, "application/x-tar"],
];

export function render(main) {
  const controller = new AbortController();
  const status = h("div", { role: "status" });
  const uploads = h("div.uploads");
  const catalog = h("div.table-wrap");
  const file = h("input#upload-file", { type: "file", accept: ".zip,.tar,.tar.gz,.tgz", required: true });
  const name = h("input#upload-name", { type: "text", maxlength: "100", autocomplete: "off" });
  const bar = h("progress#upload-progress", { max: "1", value: "0", "aria-label": "upload progress", hidden: true });
  const barText = h("span.hint", { "aria-live": "polite" });
  const button = h("button", { type: "submit", text: "Upload" });
  const form = h("form.upload-form", { novalidate: true },
    h("div.field", h("label", { for: "upload-file", text: "Archive (.zip, .tar, .tar.gz)" }), file,
      h("p.hint", { text: "train/<class>/<image> plus test/ or val/" })),
    h("div.field", h("label", { for: "upload-name", text: "Name (optional)" }), name),
    button, h("div.progress-line", bar, barText));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) { fill(status, errorBox("Choose an archive first.")); return; }
    const type = TYPES.find(([pattern]) => pattern.test(chosen.name));
    if (!type) { fill(status, errorBox("The archive must be a .zip, .tar or .tar.gz file.")); return; }
    const query = name.value.trim() ? `?name=${encodeURIComponent(name.value.trim())}` : "";
    await sendWithProgress(`/v1/datasets${query}`, chosen, type[1], { bar, barText, button, status, form },
      (record) => `Uploaded “${record.name}” as ${record.id}: ${record.num_classes} classes.`, load);
  });

  async function remove(record) {
    await removeAfterConfirm(`/v1/datasets/${encodeURIComponent(record.id)}`,
      `the dataset “${record.name}” (${record.id})`, record.name, status, load);
  }

  function card(record) {
    const splits = Object.keys(record.counts || {});
    return h("article.dataset", { "data-dataset": record.id },
      h("h3", { text: record.name }),
      h("p.hint", { text: `${record.id} · ${record.format} · ${bytes(record.bytes)} · ${record.width}×${record.height}`
        + `×${record.channels} · ${when(record.created_at)} · validation: ${record.validation}` }),
      h("div.table-wrap", h("table.counts",
        h("caption", { text: `${record.num_classes} classes; images per split` }),
        h("thead", h("tr", h("th", { scope: "col", text: "class" }), splits.map((s) => h("th", { scope: "col", text: s })))),
        h("tbody", record.classes.map((cls) => h("tr", h("th", { scope: "row", text: cls }),
          splits.map((s) => h("td", { text: record.counts[s][cls] ?? 0 }))))))),
      h("button.danger", { type: "button", text: "Delete", "aria-label": `delete dataset ${record.name}`,
        onclick: () => remove(record) }));
  }

  async function load() {
    try {
      const list = await api("/v1/datasets", { signal: controller.signal });
      const mine = list.items.filter((d) => d.source === "upload");
      const records = await Promise.all(mine.map((d) => api(`/v1/datasets/${encodeURIComponent(d.name)}`,
        { signal: controller.signal })));
      fill(uploads, records.length ? records.map(card) : h("p", { text: "No uploads yet." }));
      fill(catalog, h("table.catalog",
        h("caption.visually-hidden", { text: "Built-in datasets" }),
        h("thead", h("tr", ["name", "description", "classes", "input"].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", list.items.filter((d) => d.source !== "upload").map((d) => h("tr",
          h("th", { scope: "row", text: d.name }), h("td", { text: d.description }),
          h("td", { text: d.classes.length || "from the files" }),
          h("td", { text: d.input_shape ? d.input_shape.join("×") : "any" }))))));
    } catch (err) {
      if (err.name !== "AbortError") fill(status, errorBox(`Could not load the datasets: ${err.message}`));
    }
  }

  fill(main, h("h1", { text: "Datasets" }),
    h("section", { "aria-labelledby": "up-h" }, h("h2#up-h", { text: "Upload an image-folder archive" }), form, status),
    h("section", { "aria-labelledby": "mine-h" }, h("h2#mine-h", { text: "Your uploads" }), uploads),
    h("section", { "aria-labelledby": "cat-h" }, h("h2#cat-h", { text: "Built in" }), catalog));
  load();
  return () => controller.abort();
}
