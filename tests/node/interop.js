// Drives Baton from Node.js with nothing but protos/: @grpc/proto-loader reads
// the .proto files at run time, @grpc/grpc-js makes the calls.
//
//   node interop.js CONDUCTOR_ADDR VIEWER_ADDR PROTOS_DIR WORKDIR [GOOGLEAPIS_DIR]
//
// GOOGLEAPIS_DIR holds google/api/annotations.proto and http.proto, which the
// protos import for their HTTP routes (any copy of googleapis will do).
//
// It takes a snapshot of the project's jobs (a watch from revision 0, read up
// to its SNAPSHOT_END), watches the conductor from its current revision,
// submits a job, follows the job's log to its `complete` message, waits for
// the watch to report the job SUCCEEDED, then lists it in the viewer, and
// prints one JSON document of what it saw on stdout (tests/test_node_interop.py
// checks it).
"use strict";

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [conductorAddr, viewerAddr, protosDir, workdir, googleapisDir] = process.argv.slice(2);

const definition = protoLoader.loadSync(["baton/v1/conductor.proto", "baton/v1/viewer.proto"], {
  includeDirs: googleapisDir ? [protosDir, googleapisDir] : [protosDir],
  keepCase: true, // field names as the protos spell them
  longs: String, // int64 as strings, as in the proto3 JSON mapping
  enums: String,
  defaults: true,
  oneofs: true,
});
const baton = grpc.loadPackageDefinition(definition).baton.v1;
const insecure = grpc.credentials.createInsecure();
const conductor = new baton.Conductor(conductorAddr, insecure);
const viewer = new baton.Viewer(viewerAddr, insecure);

function call(client, method, request, seconds = 10) {
  const deadline = new Date(Date.now() + seconds * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

function within(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A watch answers with WatchJobsResponse messages, each carrying one or more
// events in order; what an event is, its `type` alone says.
function eachEvent(stream, onEvent) {
  stream.on("data", (response) => response.events.forEach(onEvent));
}

// Every change after `since` until `job` (once known) is SUCCEEDED; the kinds of
// job-less events (heartbeats) are counted by type.
function watchUntilSucceeded(since, jobId) {
  const events = [];
  const others = {};
  const stream = conductor.WatchJobs({ since_revision: since });
  let finish;
  const done = new Promise((resolve, reject) => {
    finish = resolve;
    stream.on("error", (err) => (err.code === grpc.status.CANCELLED ? resolve({ events, others }) : reject(err)));
    stream.on("end", () => reject(new Error("the watch ended")));
  });
  const check = () => {
    const id = jobId();
    if (id && events.some((e) => e.id === id && e.state === "JOB_STATE_SUCCEEDED")) {
      stream.cancel();
      finish({ events, others });
    }
  };
  eachEvent(stream, (event) => {
    if (event.type !== "JOB_EVENT_TYPE_UPDATED" && event.type !== "JOB_EVENT_TYPE_DELETED") {
      others[event.type] = (others[event.type] || 0) + 1;
      return;
    }
    events.push({ revision: event.revision, type: event.type, id: event.job.id, state: event.job.state });
    check();
  });
  return { done, check };
}

// A watch from revision 0 of one project, up to its SNAPSHOT_END: the events' types and jobs.
function snapshotOf(project) {
  return new Promise((resolve, reject) => {
    const seen = [];
    const stream = conductor.WatchJobs({ since_revision: 0, project });
    eachEvent(stream, (event) => {
      seen.push({ type: event.type, revision: event.revision, id: event.job ? event.job.id : null });
      if (event.type === "JOB_EVENT_TYPE_SNAPSHOT_END") {
        stream.cancel();
        resolve(seen);
      }
    });
    stream.on("error", (err) => (err.code === grpc.status.CANCELLED ? null : reject(err)));
    stream.on("end", () => reject(new Error("the snapshot ended without SNAPSHOT_END")));
  });
}

function followLog(jobId) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let complete = null;
    let heartbeats = 0;
    const stream = conductor.StreamLogs({ job_id: jobId, follow: true });
    stream.on("data", (chunk) => {
      if (chunk.complete) complete = chunk;
      else if (chunk.data.length) chunks.push(chunk.data);
      else heartbeats += 1;
    });
    stream.on("end", () => resolve({ text: Buffer.concat(chunks).toString(), complete, heartbeats }));
    stream.on("error", reject);
  });
}

async function inViewer(jobId) {
  const until = Date.now() + 15000;
  for (;;) {
    const listed = await call(viewer, "ListJobs", { project: "interop", page_size: 10 });
    const found = listed.jobs.find((j) => j.id === jobId);
    if (found && found.state === "JOB_STATE_SUCCEEDED") return listed;
    if (Date.now() > until) throw new Error("the viewer never listed the job as SUCCEEDED");
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main() {
  const info = await call(conductor, "GetConductorInfo", {});
  const snapshot = await within(snapshotOf("interop"), 30, "the snapshot");
  let jobId = null;
  const watch = watchUntilSucceeded(info.revision, () => jobId);
  const job = await call(conductor, "SubmitJob", {
    spec_yaml: [
      "name: from-node",
      "project: interop",
      `workdir: ${JSON.stringify(workdir)}`,
      "command: echo hello from node; echo line two",
    ].join("\n"),
    request_id: `node-${process.pid}-${Date.now()}`,
  });
  jobId = job.id;
  watch.check();
  const log = await within(followLog(job.id), 30, "the log");
  const { events, others } = await within(watch.done, 30, "the watch");
  const listed = await within(inViewer(job.id), 30, "the viewer");
  const fromViewer = await call(viewer, "GetJob", { job_id: job.id });
  let notFound = null;
  try {
    await call(conductor, "GetJob", { job_id: "no-such-job" });
  } catch (err) {
    notFound = { code: err.code, details: err.details };
  }
  const result = {
    since: info.revision,
    submitted: { id: job.id, state: job.state, request_id: job.request_id },
    log: { text: log.text, complete: log.complete && { state: log.complete.state, exit_code: log.complete.exit_code } },
    snapshot,
    events,
    others,
    viewer: {
      total_size: listed.total_size,
      jobs: listed.jobs.map((j) => ({ id: j.id, state: j.state, name: j.name })),
      get_job: { id: fromViewer.id, state: fromViewer.state, run_dir: fromViewer.run_dir },
    },
    not_found: notFound,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
  conductor.close();
  viewer.close();
}

main().catch((err) => {
  process.stderr.write(`interop failed: ${err.stack || err}\n`);
  process.exit(1);
});
