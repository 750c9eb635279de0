// Baton's dashboard: a small single-page app over the gateway's REST and
// server-sent event routes. Plain ES modules, no build step, nothing from
// another origin (the gateway's Content-Security-Policy is default-src 'self').
//
// Routes (the location hash): #/ the runs (filters in its query, e.g.
// #/?project=ml&state=RUNNING), #/jobs/ID a run's page. Any call answered 401
// shows the login form, which keeps the token in an HttpOnly session cookie.

import {api, onUnauthenticated} from "./api.js";
import {fill, h} from "./dom.js";
import {jobView} from "./job.js";
import {runsView} from "./runs.js";

const main = document.getElementById("view");
const whoEl = document.getElementById("who");
let info = null;
let leave = () => {};

function route() {
  leave();
  leave = () => {};
  if (info === null) return;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?", 2);
  const params = new URLSearchParams(search || "");
  const jobMatch = path.match(/^\/jobs\/([^/]+)$/);
  if (jobMatch) {
    leave = jobView(main, decodeURIComponent(jobMatch[1]), info);
  } else {
    leave = runsView(main, params, setRunsParams);
  }
}

// The runs view's filters go into the hash without re-routing.
function setRunsParams(filters) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  const s = q.toString();
  history.replaceState(null, "", `#/${s ? `?${s}` : ""}`);
}

function renderWho() {
  const caller = info && info.caller ? info.caller : null;
  if (!caller || !caller.name) {
    fill(whoEl);
    return;
  }
  fill(whoEl,
    h("span", {class: "caller", id: "caller"}, `${caller.name} (${caller.role})`),
    h("button", {type: "button", class: "link", id: "logout", on: {click: logout}}, "log out"));
}

async function logout() {
  try {
    await fetch("/logout", {method: "POST", credentials: "same-origin"});
  } finally {
    showLogin("Logged out.");
  }
}

function showLogin(note = "") {
  leave();
  leave = () => {};
  info = null;
  renderWho();
  const message = h("p", {class: "message", id: "login-message", role: "status"}, note);
  const token = h("input", {type: "password", name: "token", id: "token", autocomplete: "current-password",
    required: true, autofocus: true});
  const form = h("form", {class: "panel login", id: "login", on: {submit: async (e) => {
    e.preventDefault();
    message.textContent = "Checking…";
    message.className = "message";
    const response = await fetch("/login", {
      method: "POST", credentials: "same-origin", body: new URLSearchParams({token: token.value}),
    });
    if (response.ok) {
      token.value = "";
      await start();
      return;
    }
    let text = `HTTP ${response.status}`;
    try {
      text = (await response.json()).message || text;
    } catch {
      // not JSON: keep the status
    }
    message.textContent = response.status === 401 ? "That token was not accepted." : text;
    message.className = "message error";
  }}},
  h("h2", {}, "Log in"),
  h("p", {class: "muted"}, "This Baton asks for a token. It is kept in a session cookie that page scripts cannot read."),
  h("label", {}, "Token", token),
  h("button", {type: "submit"}, "Log in"),
  message);
  fill(main, form);
  token.focus();
}

async function start() {
  try {
    info = await api("/v1/conductor:info");
  } catch (err) {
    if (err.status === 401) return; // the login form is up
    fill(main, h("section", {class: "panel"}, h("h2", {}, "The conductor did not answer"),
      h("p", {class: "error"}, err.message), h("button", {type: "button", on: {click: start}}, "Try again")));
    return;
  }
  renderWho();
  route();
}

onUnauthenticated(() => {
  if (info !== null || !document.getElementById("login")) showLogin("Please log in.");
});
window.addEventListener("hashchange", route);
start();
