// The submit form: presets, models and datasets (uploads included) come from the API; a blank field
// means "the preset's value, or the server default", so only what the person typed is sent. A 422
// is shown next to the field its `loc` names (range_test.num_iter, max_lr, ...). Uploaded weights
// (GET /v1/weights) are offered only for the model the job will use, and named by their uploader, so
// (as on the weights page) their names are only ever set as text.

import { api, fieldName } from "../api.js";
import { h, fill, errorBox } from "../dom.js";

const POLICIES = ["triangular", "triangular2", "exp_range", "one_cycle", "constant"];

// name: [label, kinds it applies to, input attributes, hint]; "rt." fields are the range test's
// options: top level for a range-test job, under `range_test` for a training job.
const FIELDS = [
  ["epochs", "Epochs", ["train"], { type: "number", min: "1", step: "1", inputmode: "numeric" }],
  ["batch_size", "Batch size", ["train", "range_test"], { type: "number", min: "1", step: "1", inputmode: "numeric" }],
  ["max_lr", "max_lr", ["train"], { type: "text", value: "auto" }, "a number, or auto: run a range test first and use its bounds"],
  ["base_lr", "base_lr", ["train"], { type: "text" }, "blank: the range test's pick with max_lr auto, else max_lr / 25 (one_cycle: / div_factor)"],
  ["step_size", "Step size (epochs)", ["train"], { type: "text", inputmode: "decimal" }, "half a cycle"],
  ["rt.start_lr", "Range test start LR", ["train", "range_test"], { type: "text", inputmode: "decimal" }],
  ["rt.end_lr", "Range test end LR", ["train", "range_test"], { type: "text", inputmode: "decimal" }],
  ["rt.num_iter", "Range test iterations", ["train", "range_test"], { type: "number", min: "5", step: "1", inputmode: "numeric" }],
];
const NUMERIC = new Set(["epochs", "batch_size", "step_size", "base_lr", "max_lr", "rt.start_lr", "rt.end_lr", "rt.num_iter"]);

const domId = (name) => `f-${name.replace(/[^a-z0-9_]/gi, "-")}`;

export function render(main) {
  const controller = new AbortController();
  const inputs = new Map(); // field name -> input or select
  const errors = new Map(); // field name -> its message element
  const formError = h("div", { role: "alert" });
  const presetInfo = h("p#preset-info.hint");

  function field(name, label, control, hint) {
    control.id = domId(name);
    control.name = name;
    const message = h("p.field-error", { id: `${domId(name)}-error`, hidden: true });
    const hintEl = hint ? h("p.hint", { id: `${domId(name)}-hint`, text: hint }) : null;
    control.setAttribute("aria-describedby", [hintEl?.id, message.id].filter(Boolean).join(" "));
    inputs.set(name, control);
    errors.set(name, message);
    return h("div.field", { "data-field": name }, h("label", { for: control.id, text: label }), control, hintEl, message);
  }

  const kindTrain = h("input#kind-train", { type: "radio", name: "kind", value: "train", checked: true });
  const kindRange = h("input#kind-range", { type: "radio", name: "kind", value: "range_test" });
  const preset = h("select", {}, h("option", { value: "", text: "none" }));
  const dataset = h("select", {}, h("option", { value: "", text: "(preset or default: digits)" }));
  const model = h("select", {}, h("option", { value: "", text: "(preset or default: tiny_cnn)" }));
  const policy = h("select", {}, h("option", { value: "", text: "(preset or default: triangular)" }),
    POLICIES.map((p) => h("option", { value: p, text: p })));
  const device = h("select", {}, ["auto", "cpu", "cuda"].map((d) => h("option", { value: d, text: d })));
  const weights = h("select");
  const submitButton = h("button", { type: "submit", text: "Submit job" });

  const kindOf = () => (kindRange.checked ? "range_test" : "train");
  const blocks = [
    field("preset", "Preset", preset),
    field("dataset", "Dataset", dataset, "catalog datasets and your uploads"),
    field("model", "Model", model),
    field("policy", "Policy", policy),
    field("device", "Device", device, "auto: the server's default queue"),
    field("finetune.weights", "Start from uploaded weights", weights, "your uploads (Weights page) for this model"),
    ...FIELDS.map(([name, label, , attrs, hint]) => field(name, label, h("input", { ...attrs, autocomplete: "off" }), hint)),
  ];
  const kindsOf = { preset: ["train"], policy: ["train", "range_test"] };
  FIELDS.forEach(([name, , kinds]) => { kindsOf[name] = kinds; });

  function applyKind() {
    for (const block of blocks) {
      const kinds = kindsOf[block.dataset.field];
      block.hidden = Boolean(kinds) && !kinds.includes(kindOf());
    }
  }
  kindTrain.addEventListener("change", applyKind);
  kindRange.addEventListener("change", applyKind);

  let presets = {};
  let uploaded = []; // GET /v1/weights items

  // The model a blank select means (the preset's, else the server's default) decides which weights fit.
  function fillWeights() {
    const arch = model.value || presets[preset.value]?.fields.model || "tiny_cnn";
    const previous = weights.value;
    const fitting = uploaded.filter((w) => w.architecture === arch);
    fill(weights, h("option", { value: "", text: fitting.length ? "none: from scratch" : `none for ${arch}: from scratch` }),
      fitting.map((w) => h("option", { value: w.id, text: w.name ? `${w.name} (${w.id})` : w.id })));
    weights.value = fitting.some((w) => w.id === previous) ? previous : "";
  }
  model.addEventListener("change", fillWeights);
  preset.addEventListener("change", fillWeights);

  preset.addEventListener("change", () => {
    const chosen = presets[preset.value];
    presetInfo.textContent = chosen ? chosen.description : "";
    for (const [name, control] of inputs) {
      if (control.tagName !== "INPUT" || name === "max_lr") continue;
      const [outer, inner] = name.startsWith("rt.") ? ["range_test", name.slice(3)] : [name, null];
      const value = chosen ? (inner ? chosen.fields[outer]?.[inner] : chosen.fields[outer]) : undefined;
      control.placeholder = value === undefined ? "" : String(value);
    }
  });

  const form = h("form.job-form", { novalidate: true },
    h("fieldset", h("legend", { text: "Job kind" }),
      h("label.inline", { for: "kind-train" }, kindTrain, " training run"),
      h("label.inline", { for: "kind-range" }, kindRange, " range test only")),
    presetInfo,
    h("div.fields", blocks),
    formError,
    submitButton);

  function showErrors(detail) {
    const known = [...inputs.keys()];
    const pathOf = (name) => (name.startsWith("rt.")
      ? (kindOf() === "train" ? `range_test.${name.slice(3)}` : name.slice(3)) : name);
    const byField = new Map();
    const loose = [];
    for (const err of detail) {
      const loc = fieldName(err.loc);
      const where = loc === "finetune" ? "finetune.weights" : loc; // the only finetune field the form has
      const match = known.filter((name) => where === pathOf(name) || where.startsWith(`${pathOf(name)}.`))
        .sort((a, b) => pathOf(b).length - pathOf(a).length)[0];
      if (match && !inputs.get(match).closest("[hidden]")) {
        byField.set(match, [...(byField.get(match) || []), err.msg]);
      } else loose.push(`${where || "request"}: ${err.msg}`);
    }
    for (const [name, messages] of byField) {
      const message = errors.get(name);
      message.textContent = [...new Set(messages)].join(", or: ");
      message.hidden = false;
      inputs.get(name).setAttribute("aria-invalid", "true");
    }
    if (loose.length) fill(formError, errorBox(loose.join("; ")));
    const first = [...byField.keys()][0];
    if (first) inputs.get(first).focus();
  }

  function clearErrors() {
    for (const [name, message] of errors) {
      message.hidden = true;
      message.textContent = "";
      inputs.get(name).removeAttribute("aria-invalid");
    }
    formError.replaceChildren();
  }

  function body() {
    const kind = kindOf();
    const spec = {};
    const range = {};
    for (const [name, control] of inputs) {
      const kinds = kindsOf[name];
      if (kinds && !kinds.includes(kind)) continue;
      const raw = control.value.trim();
      if (raw === "") continue;
      const value = NUMERIC.has(name) && raw !== "auto" && raw !== "" && !Number.isNaN(Number(raw)) ? Number(raw) : raw;
      if (name.startsWith("rt.")) range[name.slice(3)] = value;
      else if (name.startsWith("finetune.")) spec.finetune = { ...spec.finetune, [name.slice(9)]: value };
      else spec[name] = value;
    }
    if (kind === "train" && Object.keys(range).length) spec.range_test = range;
    else Object.assign(spec, range);
    return { kind, spec };
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    const { kind, spec } = body();
    submitButton.disabled = true;
    try {
      const job = await api(kind === "train" ? "/v1/jobs/train" : "/v1/jobs/range-test", { method: "POST", json: spec });
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (err) {
      if (err.status === 422 && err.body && Array.isArray(err.body.detail)) showErrors(err.body.detail);
      else fill(formError, errorBox(`The job was not submitted: ${err.message}`));
    } finally {
      submitButton.disabled = false;
    }
  });

  async function options() {
    try {
      const [p, m, d, w] = await Promise.all(["/v1/presets", "/v1/models", "/v1/datasets", "/v1/weights"]
        .map((path) => api(path, { signal: controller.signal })));
      presets = Object.fromEntries(p.items.map((item) => [item.name, item]));
      preset.append(...p.items.map((item) => h("option", { value: item.name, text: item.name })));
      model.append(...m.items.map((item) => h("option", { value: item.name, text: `${item.name}: ${item.description}` })));
      dataset.append(...d.items.map((item) => h("option", { value: item.name,
        text: item.source === "upload" ? `${item.description} (${item.name})` : `${item.name}: ${item.description}` })));
      uploaded = w.items;
      fillWeights();
      form.setAttribute("data-ready", "true"); // not form.dataset: a form exposes its "dataset" field by that name
    } catch (err) {
      if (err.name !== "AbortError") fill(formError, errorBox(`Could not load the choices: ${err.message}`));
    }
  }

  fill(main, h("h1", { text: "New job" }), form);
  fillWeights();
  applyKind();
  options();
  return () => controller.abort();
}
