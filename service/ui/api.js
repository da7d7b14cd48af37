// Talking to /v1 on the same origin. The API key lives in sessionStorage (typed once per tab, gone
// when the tab closes) and travels only in the Authorization header, never in a URL.

const KEY_NAME = "clr.apiKey";

export const auth = {
  get key() { return sessionStorage.getItem(KEY_NAME); },
  set key(value) {
    if (value) sessionStorage.setItem(KEY_NAME, value);
    else sessionStorage.removeItem(KEY_NAME);
  },
  headers() { return this.key ? { Authorization: `Bearer ${this.key}` } : {}; },
};

/** An HTTP error with the API's body; `message` is already in words. */
export class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.body = body;
  }
}

/** The words for a failed response: the API's `detail`, or what the status means. */
export function describe(status, body) {
  if (status === 401) return "Not authorised: the server refused this API key (or needs one).";
  if (status === 0) return "The server could not be reached.";
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${fieldName(e.loc) || "request"}: ${e.msg}`).join("; ");
  }
  if (status === 429) return "Too many requests: wait a moment and try again.";
  if (status >= 500) return `The server failed (HTTP ${status}); try again shortly.`;
  return `The request failed (HTTP ${status}).`;
}

/** "range_test.num_iter" from a 422 `loc` such as ["body", "range_test", "num_iter"]. */
export function fieldName(loc) {
  if (!Array.isArray(loc)) return "";
  const parts = loc[0] === "body" || loc[0] === "query" || loc[0] === "header" ? loc.slice(1) : loc;
  return parts.filter((p) => typeof p === "string").join(".");
}

/** Fires `clr:unauthorised` so the page can ask for a (new) key wherever the 401 came from. */
function unauthorised() {
  window.dispatchEvent(new CustomEvent("clr:unauthorised"));
}

/** fetch() with the key; JSON in, JSON out (or the Response with `raw`). Throws ApiError. */
export async function api(path, { method = "GET", json, headers = {}, raw = false, signal } = {}) {
  const init = { method, headers: { ...auth.headers(), ...headers }, signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, null);
  }
  if (!response.ok) {
    if (response.status === 401) unauthorised();
    let body = null;
    try { body = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, body);
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

/** "open" (no key needed), "ok" (the stored key works) or "needs-key" (401). */
export async function probeAuth() {
  const response = await fetch("/v1/jobs?limit=1", { headers: auth.headers() });
  if (response.status === 401) return "needs-key";
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  return auth.key ? "ok" : "open";
}

/** An object URL of a file fetched with the key (for <img> and downloads); revoke it when done. */
export async function blobUrl(path, signal) {
  const response = await api(path, { raw: true, signal });
  return URL.createObjectURL(await response.blob());
}

/** Download a file that needs the key: fetch it, then click a temporary link to its blob URL. */
export async function download(path, filename) {
  const url = await blobUrl(path);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** POST a file with upload progress (fetch has none): resolves with the JSON body, rejects ApiError. */
export function upload(path, file, contentType, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(auth.headers())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Content-Type", contentType);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        if (xhr.status === 401) unauthorised();
        reject(new ApiError(xhr.status, body));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, null));
    xhr.send(file);
  });
}
