// Talking to the gateway: JSON calls (proto3 JSON, errors as google.rpc.Status
// with an HTTP status) and server-sent event streams.

// A failed call: the HTTP status and the google.rpc.Status body's message.
export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

let unauthenticated = () => {};

// Called with the error whenever the API answers 401: the app shows its login form.
export function onUnauthenticated(fn) {
  unauthenticated = fn;
}

// GET (or POST/DELETE with a JSON body) one route; resolves to the answer's JSON.
export async function api(path, {method = "GET", body} = {}) {
  const init = {method, headers: {Accept: "application/json"}, credentials: "same-origin"};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = {message: text.slice(0, 200)};
  }
  if (!response.ok) {
    const err = new ApiError(response.status, data);
    if (response.status === 401) unauthenticated(err);
    throw err;
  }
  return data;
}

// A query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (Array.isArray(value)) value.forEach((v) => q.append(key, v));
    else if (value !== undefined && value !== null && value !== "") q.append(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

// One path segment, percent-encoded.
export function seg(value) {
  return encodeURIComponent(value);
}

// Follow an SSE route. The browser's EventSource reconnects by itself and
// sends Last-Event-ID, which the gateway resumes from (a log's byte offset, a
// watch's revision). Handlers: message(data), end(data), rpcError(status),
// open(), state(text) with "live", "reconnecting" or "closed".
// Returns a function that stops following.
export function follow(url, handlers) {
  const es = new EventSource(url);
  const state = handlers.state || (() => {});
  es.onopen = () => {
    state("live");
    if (handlers.open) handlers.open();
  };
  es.onmessage = (e) => handlers.message(JSON.parse(e.data));
  // The stream's last event: close now, or EventSource would reconnect.
  es.addEventListener("end", (e) => {
    es.close();
    state("closed");
    if (handlers.end) handlers.end(JSON.parse(e.data));
  });
  // A failure after the stream started: the gateway closes it next.
  es.addEventListener("rpc-error", (e) => {
    es.close();
    state("closed");
    if (handlers.rpcError) handlers.rpcError(JSON.parse(e.data));
  });
  es.onerror = () => {
    // CONNECTING: the browser retries by itself. CLOSED: the server refused
    // the stream (an HTTP error status): it will not retry.
    if (es.readyState === EventSource.CLOSED) {
      state("closed");
      if (handlers.closed) handlers.closed();
    } else {
      state("reconnecting");
    }
  };
  return () => es.close();
}
