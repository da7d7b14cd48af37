// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and a key in
// the URL would end up in logs. The parser follows the HTML spec's event-stream rules (id, event,
// data, retry; comments ignored) and reconnects with Last-Event-ID, so nothing is lost or repeated.

import { auth, ApiError, describe } from "./api.js";

const EOL = /\r\n|\r|\n/g;

/** Split a text stream into events; calls onEvent({id, event, data}) for each complete one. */
export class EventStreamParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.reset();
    this.lastId = null;
    this.retry = null;
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = undefined;
  }

  push(chunk) {
    this.buffer += chunk;
    let start = 0;
    for (;;) {
      EOL.lastIndex = start;
      const found = EOL.exec(this.buffer);
      // a lone "\r" at the very end may be the first half of "\r\n": wait for more
      if (!found || (found[0] === "\r" && found.index === this.buffer.length - 1)) break;
      this.line(this.buffer.slice(start, found.index));
      start = found.index + found[0].length;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(text) {
    if (text === "") {
      if (this.id !== undefined) this.lastId = this.id;
      if (this.data.length) {
        this.onEvent({ id: this.lastId, event: this.event || "message", data: this.data.join("\n") });
      }
      this.reset();
      return;
    }
    if (text.startsWith(":")) return;
    const colon = text.indexOf(":");
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? "" : text.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
  }
}

/**
 * Follow `path` until `isFinal(event)` says the stream is done or `signal` aborts.
 * onEvent gets {id, event, data} with data parsed as JSON. Drops of the connection are retried
 * after the server's `retry` hint (1 s otherwise), resuming after the last event seen.
 * onProblem(text) is told about each failed attempt; 401 and 404 end the follow.
 */
export async function follow(path, { onEvent, isFinal, onProblem = () => {}, signal }) {
  let lastId = null;
  let retryMs = 1000;
  let attempts = 0;
  while (!signal.aborted) {
    let done = false;
    const parser = new EventStreamParser(({ id, event, data }) => {
      let parsed = null;
      try { parsed = JSON.parse(data); } catch { parsed = { text: data }; }
      lastId = id;
      const message = { id, event, data: parsed };
      onEvent(message);
      if (isFinal(message)) done = true;
    });
    try {
      const headers = { ...auth.headers(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(path, { headers, signal, cache: "no-store" });
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiError(response.status, body);
      }
      attempts = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        parser.push(value);
        if (done) { reader.cancel().catch(() => {}); break; }
      }
      if (parser.retry !== null) retryMs = parser.retry;
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && (err.status === 401 || err.status === 404)) {
        onProblem(err.message);
        return;
      }
      attempts += 1;
      onProblem(err instanceof ApiError ? err.message : describe(0, null));
    }
    if (done) return;
    // the stream closed without a final event (server restart, proxy timeout): resume after lastId
    await sleep(Math.min(retryMs * Math.max(1, attempts), 10_000), signal);
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}
