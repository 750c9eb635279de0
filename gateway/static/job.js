// A run's page: its state and controls, summary, steps, result, health,
// checkpoints (config and job.json), spec, and its log followed live. The job
// itself stays current through a WatchJobs of its name.

import {ApiError, api, query, seg} from "./api.js";
import {fill, fmtBytes, fmtDuration, fmtTime, h, isEnded, pretty, runTime, stateBadge, stateName}
  from "./dom.js";
import {logPanel} from "./log.js";
import {watchJobs} from "./watch.js";

const HEALTH_REFRESH_MS = 10000;
const TICK_MS = 5000;
const ACTIVE = new Set(["QUEUED", "RUNNING", "PAUSING", "PAUSED"]);

// What the caller may do to a job of `project` (GetConductorInfo's caller).
export function mayAct(caller, project) {
  if (!caller) return false;
  if (caller.role === "admin") return true;
  if (caller.role !== "operator") return false;
  return !(caller.projects && caller.projects.length) || caller.projects.includes(project);
}

// Render the run page for `jobId` into `root`. `info` is GetConductorInfo's
// answer. Returns a function that stops its streams and timers.
export function jobView(root, jobId, info) {
  let job = null;
  let stopWatch = () => {};
  let log = null;
  let busy = false;
  let lastCheckpoint = null;

  const titleEl = h("h1", {class: "job-title"});
  const stateEl = h("span", {id: "job-state"});
  const controlsEl = h("div", {class: "controls", id: "controls"});
  const messageEl = h("p", {class: "message", id: "job-message", role: "status"});
  const summaryEl = h("dl", {class: "summary"});
  const stepsEl = h("div", {class: "table-wrap"});
  const stepTailEl = h("pre", {class: "small-pre", hidden: true});
  const resultEl = h("pre", {class: "small-pre"});
  const healthEl = h("dl", {class: "summary"});
  const checkpointsEl = h("div", {class: "table-wrap"});
  const checkpointShowEl = h("pre", {class: "small-pre", id: "checkpoint-file", hidden: true});
  const specEl = h("pre", {class: "small-pre"});
  const logSlot = h("div");

  fill(root,
    h("p", {class: "crumbs"}, h("a", {href: "#/"}, "← runs")),
    h("section", {class: "panel job-head"},
      h("div", {class: "panel-head"}, titleEl, stateEl), controlsEl, messageEl),
    h("div", {class: "columns"},
      h("section", {class: "panel"}, h("h2", {}, "Summary"), summaryEl),
      h("section", {class: "panel"}, h("h2", {}, "Health"), healthEl)),
    logSlot,
    h("section", {class: "panel"}, h("h2", {}, "Steps"), stepsEl, stepTailEl),
    h("section", {class: "panel", id: "checkpoints"}, h("h2", {}, "Checkpoints"), checkpointsEl, checkpointShowEl),
    h("section", {class: "panel"}, h("h2", {}, "Result"), resultEl),
    h("section", {class: "panel"}, h("h2", {}, "Spec"), specEl));

  function say(text, kind = "") {
    messageEl.textContent = text;
    messageEl.className = `message ${kind}`;
  }

  // -- the job

  function render() {
    titleEl.replaceChildren(h("span", {class: "muted"}, `${job.project} / ${job.group} / `), job.name);
    fill(stateEl, stateBadge(job.state));
    renderControls();
    renderSummary();
    renderSteps();
    resultEl.textContent = job.result ? pretty(job.result) : "No result (a job writes one to $BATON_RUN_DIR/result.json).";
    specEl.textContent = pretty(job.spec);
  }

  function renderSummary() {
    const exit = job.exitCode !== undefined ? String(job.exitCode) : "";
    const rows = [
      ["id", job.id], ["run", job.runId], ["executor", job.executor], ["external id", job.externalId],
      ["step", job.stepCount ? `${job.step || 0} of ${job.stepCount}${job.stepName ? ` (${job.stepName})` : ""}` : ""],
      ["attempt", job.attempt], ["submitted by", job.submittedBy], ["created", fmtTime(job.createTime)],
      ["started", fmtTime(job.startTime)], ["ended", fmtTime(job.endTime)], ["run time", runTime(job)],
      ["exit code", exit], ["signal", job.signal], ["reason", job.reason],
      ["pause mode", job.pauseMode && /PAUS/.test(stateName(job.state))
        ? job.pauseMode.replace("PAUSE_MODE_", "").toLowerCase() : ""],
      ["resumed from", job.resumeFrom || job.resumeDir], ["last checkpoint", job.lastCheckpoint],
      ["run dir", job.runDir], ["checkpoint dir", job.checkpointDir],
    ];
    fill(summaryEl, rows.filter(([, v]) => v !== undefined && v !== "" && v !== 0)
      .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
  }

  function renderControls() {
    if (!mayAct(info.caller, job.project)) {
      controlsEl.replaceChildren();
      return;
    }
    const state = stateName(job.state);
    const executor = (info.executors || []).find((e) => e.name === job.executor);
    const modes = executor ? executor.pauseModes || [] : ["PAUSE_MODE_SUSPEND", "PAUSE_MODE_CHECKPOINT"];
    const button = (id, label, enabled, action) => h("button", {
      type: "button", id, disabled: busy || !enabled, on: {click: action},
    }, label);
    fill(controlsEl,
      button("pause-checkpoint", "Pause (checkpoint)",
        state === "RUNNING" && modes.includes("PAUSE_MODE_CHECKPOINT"),
        () => act("pause", {mode: "PAUSE_MODE_CHECKPOINT"})),
      button("pause-suspend", "Pause (suspend)",
        state === "RUNNING" && modes.includes("PAUSE_MODE_SUSPEND"),
        () => act("pause", {mode: "PAUSE_MODE_SUSPEND"})),
      button("resume", "Resume", state === "PAUSED", () => act("resume", {})),
      button("cancel", "Cancel", ACTIVE.has(state), () => {
        if (window.confirm(`Cancel ${job.name} (${job.id})?`)) act("cancel", {});
      }));
  }

  async function act(verb, body) {
    busy = true;
    renderControls();
    say(`${verb}…`);
    try {
      const answer = await api(`/v1/jobs/${seg(jobId)}:${verb}`, {method: "POST", body});
      update(answer);
      say("");
    } catch (err) {
      say(`${verb}: ${err.message}`, "error");
    } finally {
      busy = false;
      renderControls();
    }
  }

  // A newer copy of the job (from the watch or an action's answer).
  function update(next) {
    if (job && Number(next.revision || 0) < Number(job.revision || 0)) return;
    const first = job === null;
    job = next;
    render();
    if (first || job.lastCheckpoint !== lastCheckpoint) {
      lastCheckpoint = job.lastCheckpoint;
      loadCheckpoints();
    }
    loadHealth();
  }

  // -- steps

  function renderSteps() {
    const steps = job.steps || [];
    if (!steps.length) {
      fill(stepsEl, h("p", {class: "muted"}, "No steps recorded."));
      return;
    }
    fill(stepsEl, h("table", {class: "steps"},
      h("thead", {}, h("tr", {}, ["#", "Step", "State", "Attempts", "Exit", "Started", "Ended", ""]
        .map((t) => h("th", {}, t)))),
      h("tbody", {}, steps.map((s) => h("tr", {},
        h("td", {}, s.index), h("td", {}, s.name), h("td", {}, stateBadge(s.state)), h("td", {}, s.attempts || 0),
        h("td", {}, s.exitCode !== undefined ? s.exitCode : ""), h("td", {class: "nowrap"}, fmtTime(s.startTime)),
        h("td", {class: "nowrap"}, fmtTime(s.endTime)),
        h("td", {}, h("button", {type: "button", class: "link", on: {click: () => showStep(s.index)}}, "output")))))));
  }

  async function showStep(index) {
    stepTailEl.hidden = false;
    stepTailEl.textContent = "…";
    try {
      const answer = await api(`/v1/jobs/${seg(jobId)}/steps/${index}${query({tail_lines: 50})}`);
      const bytes = Uint8Array.from(atob(answer.tail || ""), (c) => c.charCodeAt(0));
      const text = new TextDecoder("utf-8").decode(bytes);
      stepTailEl.textContent = `step ${index}, last lines:\n${text || "(no output)"}`;
      if (answer.step && answer.step.reason) stepTailEl.textContent += `\nreason: ${answer.step.reason}`;
    } catch (err) {
      stepTailEl.textContent = `step ${index}: ${err.message}`;
    }
  }

  // -- health

  let healthTimer = null;
  async function loadHealth() {
    clearTimeout(healthTimer);
    try {
      const hl = await api(`/v1/jobs/${seg(jobId)}/health`);
      const rows = hl.hasProcess ? [
        ["pid", hl.pid], ["alive", hl.alive ? "yes" : "no"], ["stopped", hl.stopped ? "yes (suspended)" : "no"],
        ["processes", hl.processCount], ["cpu", `${(hl.cpuPercent || 0).toFixed(1)} %`],
        ["memory", fmtBytes(hl.rssBytes)], ["uptime", fmtDuration(hl.uptime)],
        ["heartbeat", fmtTime(hl.heartbeatTime)], ["last output", fmtTime(hl.lastOutputTime)],
      ] : [["process", hl.detail || "none"], ["last output", fmtTime(hl.lastOutputTime)]];
      fill(healthEl, rows.filter(([, v]) => v !== undefined && v !== "")
        .map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
    } catch (err) {
      fill(healthEl, h("p", {class: "error"}, err.message));
    }
    if (job && !isEnded(job.state)) healthTimer = setTimeout(loadHealth, HEALTH_REFRESH_MS);
  }

  // -- checkpoints

  function ckptPath(c, verb) {
    const ref = c.runId ? `${c.runId}/${c.suffix}` : c.suffix;
    const parts = [c.project, c.group, c.name, ...ref.split("/")].map(seg).join("/");
    return `/v1/viewer/checkpoints/${parts}:${verb}`;
  }

  async function showCheckpointFile(c, verb, label) {
    checkpointShowEl.hidden = false;
    checkpointShowEl.textContent = "…";
    try {
      const answer = await api(ckptPath(c, verb));
      const body = verb === "config" ? answer.config : answer.jobSpec;
      checkpointShowEl.textContent = `${c.suffix}: ${label}\n${pretty(body)}`;
    } catch (err) {
      checkpointShowEl.textContent = `${c.suffix}: ${label}: ${err.message}`;
    }
  }

  async function loadCheckpoints() {
    try {
      const {project, group, name, runId} = job;
      const answer = await api(`/v1/viewer/checkpoints${query({project, group, name, run_id: runId})}`);
      const list = answer.checkpoints || [];
      if (!list.length) {
        fill(checkpointsEl, h("p", {class: "muted"}, "No checkpoints (a job writes them under $BATON_CHECKPOINT_DIR)."));
        return;
      }
      fill(checkpointsEl, h("table", {class: "checkpoints"},
        h("thead", {}, h("tr", {}, ["Checkpoint", "Saved", "Size", "Files", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, list.map((c) => h("tr", {dataset: {suffix: c.suffix}},
          h("td", {}, c.suffix), h("td", {class: "nowrap"}, fmtTime(c.createTime)), h("td", {}, fmtBytes(c.sizeBytes)),
          h("td", {}, c.fileCount || 0),
          h("td", {class: "nowrap"},
            c.configFile ? h("button", {type: "button", class: "link config",
              on: {click: () => showCheckpointFile(c, "config", c.configFile)}}, c.configFile) : null,
            c.hasJobSpec ? h("button", {type: "button", class: "link jobspec",
              on: {click: () => showCheckpointFile(c, "jobSpec", "job.json")}}, "job.json") : null))))));
    } catch (err) {
      fill(checkpointsEl, h("p", {class: "error"}, err.message));
    }
  }

  // -- start

  (async () => {
    try {
      update(await api(`/v1/jobs/${seg(jobId)}`));
    } catch (err) {
      const text = err instanceof ApiError && err.status === 404 ? `No job ${jobId}.` : err.message;
      fill(root, h("p", {class: "crumbs"}, h("a", {href: "#/"}, "← runs")), h("p", {class: "error"}, text));
      return;
    }
    document.title = `${job.name} · Baton`;
    log = logPanel(jobId);
    logSlot.replaceWith(log.el);
    const {project, group, name} = job;
    stopWatch = watchJobs({project, group, name}, {
      onChange(jobs, changed) {
        if (changed && changed.id === jobId && changed.deleted) {
          say("This job was deleted.", "error");
          stopWatch();
          return;
        }
        const mine = jobs.get(jobId);
        if (mine) update(mine);
      },
    });
  })();

  // The run time of an unfinished run moves on between events.
  const tick = setInterval(() => {
    if (job && job.startTime && !job.endTime) renderSummary();
  }, TICK_MS);

  return () => {
    stopWatch();
    if (log) log.stop();
    clearTimeout(healthTimer);
    clearInterval(tick);
    document.title = "Baton";
  };
}
