// Building DOM without HTML strings: every text goes in as a text node, so a dataset called
// `<img src=x onerror=alert(1)>` is shown as those characters and never parsed as markup.

/** h("tag#id.class", {attr: value, onclick: fn}, ...children); children are nodes, strings or arrays. */
export function h(spec, attrs = {}, ...children) {
  if (attrs instanceof Node || Array.isArray(attrs) || typeof attrs !== "object" || attrs === null) {
    children.unshift(attrs); // no attributes given: the second argument is the first child
    attrs = {};
  }
  const [head, ...classes] = spec.split(".");
  const [tag, id] = head.split("#");
  const el = document.createElement(tag);
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "text") el.textContent = String(value);
    else if (name === "style") throw new Error("no style attributes: use a class (CSP style-src 'self')");
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A number with `digits` significant digits; LRs and small values in exponent form. */
export function num(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (typeof value !== "number") return String(value);
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e5)) return value.toExponential(2);
  return String(Number(value.toPrecision(digits)));
}

export function pct(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)} %` : "–";
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** A state badge; the class only colours it, the word is the state itself. */
export function stateBadge(state) {
  return h(`span.badge.state-${String(state).replace(/[^a-z_]/g, "")}`, { text: state });
}

/** A status line for errors; role=alert so screen readers announce it. */
export function errorBox(message) {
  return h("p.banner.error", { role: "alert", text: message });
}

export const FINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
