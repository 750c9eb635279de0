// Building DOM nodes and formatting values. Every string lands in the page as
// a text node (textContent), never as HTML: job names, specs and logs are
// whatever a submitter wrote.

// h("a", {href: "#/", class: "x"}, "text", child, [more]) -> element.
// Attribute values are set with setAttribute (no event-handler attributes are
// ever passed); listeners go through `on: {click: fn}`.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "on") {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// Replace an element's children.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// "JOB_STATE_RUNNING" -> "RUNNING"
export function stateName(state) {
  return String(state || "JOB_STATE_UNSPECIFIED").replace(/^(JOB|STEP)_STATE_/, "");
}

export function stateBadge(state) {
  const name = stateName(state);
  return h("span", {class: `state state-${name.toLowerCase()}`, dataset: {state: name}}, name);
}

const ENDED = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
export function isEnded(state) {
  return ENDED.has(stateName(state));
}

function pad(n) {
  return String(n).padStart(2, "0");
}

// An RFC 3339 timestamp as local "YYYY-MM-DD HH:MM:SS"; "" when unset.
export function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// Seconds as "3h 04m", "2m 05s", "4.2s".
export function fmtSeconds(s) {
  if (!Number.isFinite(s) || s < 0) return "";
  if (s < 10) return `${s.toFixed(1)}s`;
  s = Math.round(s);
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  return `${Math.floor(s / 86400)}d ${pad(Math.floor((s % 86400) / 3600))}h`;
}

// A proto3 JSON Duration ("12.5s").
export function fmtDuration(d) {
  return d ? fmtSeconds(parseFloat(d)) : "";
}

// A job's run time: start to end, or to now while it has not ended.
export function runTime(job) {
  if (!job.startTime) return "";
  const end = job.endTime ? Date.parse(job.endTime) : Date.now();
  return fmtSeconds((end - Date.parse(job.startTime)) / 1000);
}

// int64 fields arrive as strings (proto3 JSON).
export function fmtBytes(value) {
  const n = Number(value || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${x.toFixed(x < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtCount(value) {
  return Number(value || 0).toLocaleString("en-US");
}

// A JSON value, indented, for a <pre>.
export function pretty(value) {
  return JSON.stringify(value ?? {}, null, 2);
}

// Newest first: by create time, then by id (ids start with the submission time).
export function newestFirst(a, b) {
  const ta = Date.parse(a.createTime || 0);
  const tb = Date.parse(b.createTime || 0);
  if (ta !== tb) return tb - ta;
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

// The link to a run's page.
export function jobHref(id) {
  return `#/jobs/${encodeURIComponent(id)}`;
}
