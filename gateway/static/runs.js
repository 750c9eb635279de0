// The front page: dashboard stats, projects with counts by state, and the runs
// table, live from WatchJobs. Project, group and name filter the watch itself
// (they are WatchJobs' own filters, exact matches); state filters the table.

import {api, query} from "./api.js";
import {fill, fmtBytes, fmtCount, fmtTime, h, jobHref, newestFirst, runTime, stateBadge, stateName}
  from "./dom.js";
import {watchJobs} from "./watch.js";

const STATES = ["QUEUED", "RUNNING", "PAUSING", "PAUSED", "CANCELLING", "SUCCEEDED", "FAILED", "CANCELLED"];
// Rows drawn at most: the newest; the count says how many match.
const MAX_ROWS = 500;
// Stats and projects come from the viewer's index: re-read at most this often
// while jobs change, and now and then when nothing does.
const REFRESH_MS = 2000;
const IDLE_REFRESH_MS = 15000;
const TICK_MS = 5000;

// Render the runs view into `root`; `params` are the hash's query parameters.
// Returns a function that stops its streams and timers.
export function runsView(root, params, setParams) {
  const filters = {
    project: params.get("project") || "",
    group: params.get("group") || "",
    name: params.get("name") || "",
    state: params.get("state") || "",
  };
  let jobs = new Map();
  let frame = 0;
  let stopWatch = () => {};

  const statsEl = h("section", {class: "stats", "aria-label": "stats"});
  const projectsEl = h("div", {class: "projects"});
  const failuresEl = h("section", {class: "panel", id: "recent-failures", hidden: true});
  const liveEl = h("span", {class: "live", id: "runs-live"}, "connecting");
  const countEl = h("span", {class: "count", id: "runs-count"});
  const tbody = h("tbody", {id: "runs-body"});

  const input = (key, label) => h("label", {}, label, h("input", {
    name: key, value: filters[key], placeholder: "any", autocomplete: "off", spellcheck: "false",
    on: {change: (e) => setFilter(key, e.target.value.trim())},
  }));
  const projectSelect = h("select", {name: "project", on: {change: (e) => setFilter("project", e.target.value)}},
    h("option", {value: ""}, "all"));
  const stateSelect = h("select", {name: "state", on: {change: (e) => setFilter("state", e.target.value)}},
    h("option", {value: ""}, "any"),
    STATES.map((s) => h("option", {value: s, selected: filters.state === s}, s)));
  const form = h("form", {class: "filters", on: {submit: (e) => e.preventDefault()}},
    h("label", {}, "Project", projectSelect), input("group", "Group"), input("name", "Name"),
    h("label", {}, "State", stateSelect));

  fill(root,
    statsEl,
    failuresEl,
    h("section", {class: "panel"}, h("h2", {}, "Projects"), projectsEl),
    h("section", {class: "panel"},
      h("div", {class: "panel-head"}, h("h2", {}, "Runs"), countEl, liveEl),
      form,
      h("div", {class: "table-wrap"}, h("table", {class: "runs"},
        h("thead", {}, h("tr", {},
          h("th", {}, "Name"), h("th", {}, "Project"), h("th", {class: "wide"}, "Group"), h("th", {}, "State"),
          h("th", {class: "wide"}, "Step"), h("th", {class: "wide"}, "Created"), h("th", {}, "Time"),
          h("th", {class: "wide"}, "Exit"))),
        tbody))));

  function setFilter(key, value) {
    if (filters[key] === value) return;
    filters[key] = value;
    setParams(filters);
    if (key === "state") schedule();
    else openWatch();
    if (key === "project") refresh();
  }

  function row(job) {
    const exit = job.exitCode !== undefined ? String(job.exitCode) : job.signal ? `signal ${job.signal}` : "";
    const step = job.stepCount > 1 ? `${job.step || 0}/${job.stepCount} ${job.stepName || ""}` : job.stepName || "";
    return h("tr", {dataset: {jobId: job.id}},
      h("td", {class: "name"}, h("a", {href: jobHref(job.id)}, job.name)),
      h("td", {}, job.project),
      h("td", {class: "wide"}, job.group),
      h("td", {class: "state-cell"}, stateBadge(job.state)),
      h("td", {class: "wide"}, step),
      h("td", {class: "wide nowrap"}, fmtTime(job.createTime)),
      h("td", {class: "nowrap"}, runTime(job)),
      h("td", {class: "wide"}, exit));
  }

  function render() {
    frame = 0;
    const shown = [...jobs.values()]
      .filter((j) => !filters.state || stateName(j.state) === filters.state)
      .sort(newestFirst);
    const rows = shown.slice(0, MAX_ROWS).map(row);
    if (!rows.length) {
      rows.push(h("tr", {class: "empty"}, h("td", {colspan: 8}, jobs.size ? "No run in this state." : "No runs yet.")));
    }
    tbody.replaceChildren(...rows);
    countEl.textContent = shown.length > MAX_ROWS
      ? `newest ${MAX_ROWS} of ${fmtCount(shown.length)}` : `${fmtCount(shown.length)} shown`;
  }

  // Many events in one frame draw once.
  function schedule() {
    if (!frame) frame = requestAnimationFrame(render);
  }

  function openWatch() {
    stopWatch();
    jobs = new Map();
    liveEl.textContent = "connecting";
    const {project, group, name} = filters;
    stopWatch = watchJobs({project, group, name}, {
      onChange(all) {
        jobs = all;
        schedule();
        refreshSoon();
      },
      onState(text) {
        liveEl.textContent = text;
        liveEl.dataset.state = text.split(":")[0];
      },
    });
  }

  // -- stats and projects (the viewer's index)

  let lastRefresh = 0;
  let refreshTimer = null;
  function refreshSoon() {
    if (refreshTimer) return;
    const wait = Math.max(0, lastRefresh + REFRESH_MS - Date.now());
    refreshTimer = setTimeout(refresh, wait);
  }

  async function refresh() {
    clearTimeout(refreshTimer);
    refreshTimer = null;
    lastRefresh = Date.now();
    const [stats, projects] = await Promise.allSettled([
      api(`/v1/viewer/stats${query({project: filters.project})}`),
      api("/v1/viewer/projects?page_size=1000"),
    ]);
    if (stats.status === "fulfilled") renderStats(stats.value);
    else fill(statsEl, h("p", {class: "error"}, `stats: ${stats.reason.message}`));
    if (projects.status === "fulfilled") renderProjects(projects.value.projects || []);
    else fill(projectsEl, h("p", {class: "error"}, `projects: ${projects.reason.message}`));
  }

  function renderStats(s) {
    const alert = (n) => (Number(n || 0) > 0 ? " alert" : "");
    const card = (key, label, value, note, extra = "") => h("div", {class: `stat stat-${key}${extra}`, dataset: {stat: key}},
      h("div", {class: "stat-value"}, value), h("div", {class: "stat-label"}, label),
      note ? h("div", {class: "stat-note"}, note) : null);
    fill(statsEl,
      card("running", "running", fmtCount(s.running)),
      card("stale", "stale", fmtCount(s.stale), "no heartbeat", alert(s.stale)),
      card("failures", "recent failures", fmtCount(s.recentFailureCount), "last 24 h", alert(s.recentFailureCount)),
      card("checkpoints", "checkpoints", fmtBytes(s.checkpointBytes), `${fmtCount(s.checkpointCount)} saved`),
      card("runs", "runs", fmtCount(s.totalRuns), filters.project ? `in ${filters.project}` : "indexed"));
    const failures = (s.recentFailures || []).slice(0, 5);
    failuresEl.hidden = !failures.length;
    fill(failuresEl, h("h2", {}, "Recent failures"), h("ul", {class: "failures"}, failures.map((j) => h("li", {},
      h("a", {href: jobHref(j.id)}, j.name), " ", h("span", {class: "muted"}, `${j.project} · ${fmtTime(j.endTime)}`),
      j.reason ? h("span", {class: "reason"}, ` — ${j.reason}`) : null))));
  }

  function renderProjects(projects) {
    const chosen = projectSelect.value || filters.project;
    fill(projectSelect, h("option", {value: ""}, "all"),
      projects.map((p) => h("option", {value: p.project, selected: p.project === chosen}, p.project)));
    if (chosen && !projects.some((p) => p.project === chosen)) {
      projectSelect.append(h("option", {value: chosen, selected: true}, chosen));
    }
    if (!projects.length) {
      fill(projectsEl, h("p", {class: "muted"}, "No projects yet."));
      return;
    }
    fill(projectsEl, projects.map((p) => h("button", {
      type: "button", class: `project${p.project === filters.project ? " chosen" : ""}`,
      dataset: {project: p.project},
      on: {click: () => {
        const next = filters.project === p.project ? "" : p.project;
        projectSelect.value = next;
        setFilter("project", next);
      }},
    },
    h("span", {class: "project-name"}, p.project),
    h("span", {class: "project-runs"}, `${fmtCount(p.runCount)} run${Number(p.runCount) === 1 ? "" : "s"}`),
    h("span", {class: "project-states"}, (p.stateCounts || []).map((c) =>
      h("span", {class: `count-badge state-${stateName(c.state).toLowerCase()}`},
        `${stateName(c.state).toLowerCase()} ${fmtCount(c.count)}`))))));
  }

  openWatch();
  refresh();
  const idle = setInterval(refresh, IDLE_REFRESH_MS);
  // Run times of unfinished runs move on between events.
  const tick = setInterval(() => {
    if ([...jobs.values()].some((j) => j.startTime && !j.endTime)) schedule();
  }, TICK_MS);
  return () => {
    stopWatch();
    clearInterval(idle);
    clearInterval(tick);
    clearTimeout(refreshTimer);
    cancelAnimationFrame(frame);
  };
}
