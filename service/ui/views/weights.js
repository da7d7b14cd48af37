// Weights: your uploaded pretrained weights (GET /v1/weights), an upload form for a .safetensors file
// and the architecture it is for (from GET /v1/models), and delete. A delete refused with 409 (a job
// not yet finished names them) shows the API's own message. Names are whatever the uploader chose,
// so, as on the datasets page, every string is only ever set as text.

import { api } from "../api.js";
import { sendWithProgress, removeAfterConfirm } from "./upload_steps.js";
import { h, fill, bytes, when, errorBox } from "../dom.js";

const CONTENT_TYPE = "application/octet-stream";

export function render(main) {
  const controller = new AbortController();
  const status = h("div", { role: "status" });
  const uploads = h("div.table-wrap");
  const file = h("input#weights-file", { type: "file", accept: ".safetensors", required: true });
  const architecture = h("select#weights-architecture", { required: true });
  const name = h("input#weights-name", { type: "text", maxlength: "100", autocomplete: "off" });
  const bar = h("progress#weights-progress", { max: "1", value: "0", "aria-label": "upload progress", hidden: true });
  const barText = h("span.hint", { "aria-live": "polite" });
  const button = h("button", { type: "submit", text: "Upload" });
  const form = h("form.upload-form", { novalidate: true },
    h("div.field", h("label", { for: "weights-file", text: "Weights (.safetensors)" }), file,
      h("p.hint", { text: "safetensors.torch.save_file(model.state_dict(), ...); never a pickle" })),
    h("div.field", h("label", { for: "weights-architecture", text: "Architecture" }), architecture),
    h("div.field", h("label", { for: "weights-name", text: "Name (optional)" }), name),
    button, h("div.progress-line", bar, barText));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) { fill(status, errorBox("Choose a .safetensors file first.")); return; }
    if (!/\.safetensors$/i.test(chosen.name)) {
      fill(status, errorBox("The file must be a .safetensors file (pickles such as .pt are refused).")); return;
    }
    if (!architecture.value) { fill(status, errorBox("Choose the architecture the weights are for.")); return; }
    const query = new URLSearchParams({ architecture: architecture.value });
    if (name.value.trim()) query.set("name", name.value.trim());
    await sendWithProgress(`/v1/weights?${query}`, chosen, CONTENT_TYPE, { bar, barText, button, status, form },
      (record) => `Uploaded “${label(record)}” as ${record.id} for ${record.architecture}: `
        + `${record.tensors} tensors checked.`, load);
  });

  async function remove(record) {
    await removeAfterConfirm(`/v1/weights/${encodeURIComponent(record.id)}`,
      `the weights “${label(record)}” (${record.id})`, label(record), status, load);
  }

  function row(record) {
    return h("tr", { "data-weights": record.id },
      h("th", { scope: "row", text: label(record) }),
      h("td.id", { text: record.id }),
      h("td", { text: record.architecture }),
      h("td.size", { text: bytes(record.bytes) }),
      h("td", { text: `${record.tensors} tensors, ${record.parameters.toLocaleString()} values (${record.dtypes.join(", ")})` }),
      h("td", { text: record.replaced.length ? record.replaced.join(", ") : "none" }),
      h("td", { text: when(record.created_at) }),
      h("td.actions", h("button.danger", { type: "button", text: "Delete", "aria-label": `delete weights ${label(record)}`,
        onclick: () => remove(record) })));
  }

  async function load() {
    try {
      const list = await api("/v1/weights", { signal: controller.signal });
      fill(uploads, list.items.length ? h("table.weights",
        h("caption.visually-hidden", { text: "Your uploaded weights" }),
        h("thead", h("tr", ["name", "id (finetune.weights)", "architecture", "size", "tensors", "adapted (head, stem)",
          "uploaded", ""].map((t) => h("th", { scope: "col", text: t })))),
        h("tbody", list.items.map(row))) : h("p", { text: "No weights uploaded yet." }));
    } catch (err) {
      if (err.name !== "AbortError") fill(status, errorBox(`Could not load the weights: ${err.message}`));
    }
  }

  async function architectures() {
    try {
      const models = await api("/v1/models", { signal: controller.signal });
      architecture.append(h("option", { value: "", text: "choose…" }),
        ...models.items.map((m) => h("option", { value: m.name, text: `${m.name} (${m.source})` })));
      form.setAttribute("data-ready", "true");
    } catch (err) {
      if (err.name !== "AbortError") fill(status, errorBox(`Could not load the architectures: ${err.message}`));
    }
  }

  fill(main, h("h1", { text: "Weights" }),
    h("section", { "aria-labelledby": "wup-h" }, h("h2#wup-h", { text: "Upload pretrained weights" }), form, status,
      h("p.hint", { text: "A job starts from them with finetune.weights set to their id and model set to their "
        + "architecture. A head for another class count is replaced; a stem for other input channels is "
        + "converted (RGB filters summed for grayscale data)." })),
    h("section", { "aria-labelledby": "wmine-h" }, h("h2#wmine-h", { text: "Your weights" }), uploads));
  architectures();
  load();
  return () => controller.abort();
}

function label(record) {
  return record.name || record.id;
}
