// A live map of jobs, kept by WatchJobs over server-sent events.
//
// From revision 0 the conductor sends a SNAPSHOT of every matching job, then
// SNAPSHOT_END (the first event with an id), then UPDATED and DELETED events.
// The snapshot is gathered aside and replaces the map at SNAPSHOT_END, so a
// second snapshot (after a reconnect that could not resume) never leaves
// deleted jobs behind. A dropped connection resumes by itself: EventSource
// sends the last revision as Last-Event-ID. A failure the stream reports
// (rpc-error: a revision no longer kept, a conductor gone) or a refused
// reconnect starts over from revision 0.

import {ApiError, api, follow, query} from "./api.js";

const RETRY_MS = 2000;

// filters: {project, group, name}. onChange(jobs, job) after each change (job
// is null after a snapshot); onState(text) with the connection's state.
// Returns a function that stops watching.
export function watchJobs(filters, {onChange, onState = () => {}}) {
  let jobs = new Map();
  let pending = null;
  let stop = () => {};
  let timer = null;
  let stopped = false;

  const retry = () => {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        await api("/v1/conductor:info"); // a 401 here shows the login form
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return;
      }
      start();
    }, RETRY_MS);
  };

  const apply = (event) => {
    switch (event.type) {
      case "JOB_EVENT_TYPE_SNAPSHOT":
        if (pending === null) pending = new Map();
        pending.set(event.job.id, event.job);
        return;
      case "JOB_EVENT_TYPE_SNAPSHOT_END":
        jobs = pending || new Map();
        pending = null;
        onChange(jobs, null);
        return;
      case "JOB_EVENT_TYPE_UPDATED":
        jobs.set(event.job.id, event.job);
        onChange(jobs, event.job);
        return;
      case "JOB_EVENT_TYPE_DELETED":
        jobs.delete(event.job.id);
        onChange(jobs, {...event.job, deleted: true});
        return;
      default:
        // HEARTBEATs arrive as SSE comments; a type this page does not know is skipped.
    }
  };

  const start = () => {
    if (stopped) return;
    pending = null;
    stop = follow(`/v1/jobs:watch${query({since_revision: 0, ...filters})}`, {
      open() {
        pending = null; // a snapshot cut short by a reconnect starts again
      },
      message: apply,
      rpcError(status) {
        onState(`error: ${status.message || "watch failed"}`);
        retry();
      },
      closed: retry,
      state: onState,
    });
  };

  start();
  return () => {
    stopped = true;
    clearTimeout(timer);
    stop();
  };
}
