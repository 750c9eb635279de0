// A job's log, followed live: StreamLogs over server-sent events.
//
// Each event is a LogChunk whose `data` is base64; one streaming TextDecoder
// turns the bytes into text, so a character split across two chunks is whole.
// The event id is the byte offset after the chunk, so the browser's automatic
// reconnect resumes exactly there (Last-Event-ID). The page keeps only the
// last MAX_CHARS characters in the DOM.

import {follow, query, seg} from "./api.js";
import {h, stateName} from "./dom.js";

const TAIL_LINES = 500;
const MAX_CHARS = 256 * 1024;

function bytesOf(b64) {
  const raw = atob(b64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i += 1) out[i] = raw.charCodeAt(i);
  return out;
}

// A log panel for `jobId`: returns {el, stop}.
export function logPanel(jobId) {
  const statusEl = h("span", {class: "live", id: "log-live"}, "connecting");
  const clippedEl = h("div", {class: "muted clipped", hidden: true}, "Earlier output is not shown.");
  const pre = h("pre", {class: "log", id: "log", tabindex: "0"});
  const el = h("section", {class: "panel"},
    h("div", {class: "panel-head"}, h("h2", {}, "Log"), statusEl), clippedEl, pre);
  const decoder = new TextDecoder("utf-8");
  let chars = 0;
  // Text waiting for the next frame: a burst of chunks costs one layout, not one each.
  let pending = "";
  let overflowed = false;
  let frame = 0;

  // Cut `text` to at most `max` characters from its end, at a line start when there is one.
  const lastOf = (text, max) => {
    const cut = text.indexOf("\n", text.length - max);
    return cut >= 0 && cut + 1 < text.length ? text.slice(cut + 1) : text.slice(-max);
  };

  const flush = () => {
    frame = 0;
    if (!pending) return;
    // Follow the end only when the reader is already there.
    const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
    if (overflowed) {
      pre.replaceChildren();
      chars = 0;
      overflowed = false;
      clippedEl.hidden = false;
    }
    pre.append(document.createTextNode(pending));
    chars += pending.length;
    pending = "";
    while (chars > MAX_CHARS && pre.firstChild) {
      const first = pre.firstChild;
      const excess = chars - MAX_CHARS;
      if (first.data.length <= excess) {
        chars -= first.data.length;
        first.remove();
      } else {
        const kept = lastOf(first.data, first.data.length - excess);
        chars -= first.data.length - kept.length;
        first.data = kept;
      }
      clippedEl.hidden = false;
    }
    if (atEnd) pre.scrollTop = pre.scrollHeight;
  };

  const append = (text) => {
    if (!text) return;
    pending += text;
    if (pending.length > MAX_CHARS) {
      // More than the page keeps arrived at once (or while the tab was hidden).
      pending = lastOf(pending, MAX_CHARS);
      overflowed = true;
    }
    if (!frame) frame = requestAnimationFrame(flush);
  };

  const flushNow = () => {
    cancelAnimationFrame(frame);
    flush();
  };

  const chunk = (c) => {
    if (c.truncated) append("\n[the log was truncated: it continues from its new start]\n");
    if (c.data) append(decoder.decode(bytesOf(c.data), {stream: true}));
  };

  const setStatus = (text, kind) => {
    statusEl.textContent = text;
    statusEl.dataset.state = kind;
  };

  const stop = follow(`/v1/jobs/${seg(jobId)}/logs${query({follow: true, tail_lines: TAIL_LINES})}`, {
    message: chunk,
    end(c) {
      chunk(c);
      append(decoder.decode());
      flushNow();
      const exit = c.exitCode !== undefined ? `, exit code ${c.exitCode}` : c.signal ? `, signal ${c.signal}` : "";
      setStatus(`complete: ${stateName(c.state)}${exit}`, "complete");
    },
    rpcError(status) {
      setStatus(`stopped: ${status.message || "stream failed"}`, "error");
    },
    closed() {
      setStatus("disconnected", "closed");
    },
    state(text) {
      if (text === "live") setStatus("following", "live");
      else if (text === "reconnecting") setStatus("reconnecting", "reconnecting");
    },
  });
  return {el, stop: () => {
    stop();
    cancelAnimationFrame(frame);
  }};
}
