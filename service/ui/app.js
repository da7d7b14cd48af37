// The shell: finds out whether the server needs a key, keeps the key form in the header, and
// routes #/jobs, #/jobs/<id>, #/submit, #/datasets, #/weights and #/compare to their views. A view is
// render(main, params) returning a cleanup function (abort streams, stop timers, drop charts).

import { auth, probeAuth, describe } from "./api.js";
import { h, fill } from "./dom.js";
import * as jobs from "./views/jobs.js";
import * as job from "./views/job.js";
import * as submit from "./views/submit.js";
import * as datasets from "./views/datasets.js";
import * as weights from "./views/weights.js";
import * as compare from "./views/compare.js";

const main = document.getElementById("view");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("api-key");
const authState = document.getElementById("auth-state");
const authError = document.getElementById("auth-error");
const forget = document.getElementById("forget-key");
let cleanup = () => {};
let mode = "unknown";

function route() {
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  const params = Object.fromEntries(new URLSearchParams(query));
  if (parts[0] === "jobs" && parts[1]) return { view: job, name: "jobs", params: { ...params, id: parts[1] } };
  const views = { jobs, submit, datasets, weights, compare };
  return { view: views[parts[0]] || jobs, name: views[parts[0]] ? parts[0] : "jobs", params };
}

function show() {
  cleanup();
  cleanup = () => {};
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === route().name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (mode === "needs-key") {
    fill(main, h("h1", { tabindex: "-1", text: "API key needed" }),
      h("p", { text: "This server needs an API key. Type it in the box at the top; it is kept in this tab only." }));
    keyInput.focus();
    return;
  }
  const { view, params } = route();
  main.replaceChildren();
  cleanup = view.render(main, params) || (() => {});
  const heading = main.querySelector("h1");
  if (heading && document.activeElement !== keyInput) {
    heading.tabIndex = -1;
    heading.focus({ preventScroll: true });
  }
}

function setMode(next, problem = "") {
  mode = next;
  keyForm.hidden = next === "open" || next === "ok";
  forget.hidden = next !== "ok";
  authState.textContent = { open: "Open mode: no key needed", ok: "Key in use", "needs-key": "" }[next] || "";
  authError.hidden = !problem;
  authError.textContent = problem;
}

async function boot() {
  try {
    const state = await probeAuth();
    const refused = state === "needs-key" && auth.key;
    setMode(state, refused ? describe(401) : "");
  } catch (err) {
    setMode("unknown", err.message);
  }
  show();
}

keyForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  auth.key = keyInput.value.trim();
  keyInput.value = "";
  await boot();
});

forget.addEventListener("click", async () => {
  auth.key = null;
  await boot();
});

window.addEventListener("clr:unauthorised", () => {
  if (mode === "needs-key") return;
  setMode("needs-key", describe(401));
  show();
});

window.addEventListener("hashchange", show);
boot();
