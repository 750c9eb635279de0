"""A history generator: a season of ended jobs written straight into a conductor's home.

``generate(home, jobs=N)`` writes N ended jobs (SUCCEEDED, FAILED, CANCELLED;
one step or several; some cancelled before they started) into the registry
at ``<home>/state/registry.db`` and into the status and checkpoint trees,
as a conductor that had run them would have left them, without running
anything: where the API would take hours, a million take about 210 µs of CPU
each in this process (the trees are written by worker processes), under four
minutes on a quiet machine with tmpfs; a disk adds its own time (this
machine's ext4 about 0.8 ms a job). A conductor started on the home
afterwards serves them as its own history.

What is written, per job (tests/test_historygen.py checks each against jobs
made through the API, so the two cannot drift apart):

- a ``jobs`` row (the Job, its order, its runtime notes) and, for the last
  ``DEFAULT_EVENT_HISTORY`` revisions, its ``events`` rows;
- ``<status>/<project>/<group>/<name>/<run_id>/status.json`` and ``output.log``;
- for a job that was launched, its run's checkpoint directory with the
  ``.baton-run`` marker.

Launch directories (``<home>/state/launches``) are not written: they are the
local executor's scratch, which an ended job no longer needs (issue 18).

Jobs come in sweeps, as people submit them: one job name, from one to a few
thousand runs submitted within seconds, at times spread over the season
before ``now``. Names, groups and projects are skewed (a few get most runs);
one job key (``RARE_KEY``) has only a handful of runs, all among the oldest,
for "a filter that matches few". Everything follows from ``seed`` and ``now``.

``submit_live`` then makes live jobs through the API of a conductor serving
the home (the benchmark's ``--scale-live``).

Also runnable: ``python -m bench.history HOME --jobs N [--seed S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import json
import math
import multiprocessing
import os
import random
import sqlite3
import sys
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor, json_format, timestamp_pb2

from baton.common import checkpointdirs, runsummary
from baton.common import spec as specs
from baton.common.layout import LOG_FILE, RUN_MARKER, STATUS_FILE, Layout
from baton.common.modes import DIR_MODE, RUN_FILE_MODE, STATE_DIR_MODE, UMASK
from baton.conductor import steps as steps_mod
from baton.conductor.executors.base import ExitStatus
from baton.conductor.lifecycle import describe_exit
from baton.conductor.registry import DEFAULT_EVENT_HISTORY, INSERT_JOB, SqliteRegistry, row_values
from baton.conductor.runtime import Run
from baton.v1 import job_pb2

S = job_pb2
ENDED = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
STATE_WEIGHTS = (75, 17, 8)
# Of the cancelled jobs, the share cancelled while still queued (a sweep called off).
CANCELLED_QUEUED_SHARE = 0.35
SEASON_DAYS = 90.0
# A job key with a handful of runs, all among the oldest: "a filter that matches few".
RARE_KEY = ("archive", "legacy", "one-off")
RARE_RUNS = 5
PROJECTS = (
    "vision", "nlp", "speech", "rl", "infra", "robotics", "genomics", "search",
    "ads.ranking", "weather", "chem", "audio-gen", "recsys", "forecast", "ocr", "maps",
)  # fmt: skip
GROUPS = (
    "baseline", "sweep-lr", "ablation", "prod", "nightly", "dev.alice", "exp_42", "v2",
    "hparam-3", "bob", "release-1.4", "scratch",
)  # fmt: skip
NAMES = (
    "train", "eval", "preprocess", "export", "finetune", "distill", "bench", "sample",
    "tokenize", "index-build", "score_v2", "pack.shards",
)  # fmt: skip
_LOG_LINE = "epoch {e} step {s} loss={l:.4f} lr={lr}\n"


@dataclass
class History:
    """What was written: counts and samples the benchmark and tests pick from."""

    home: Path
    jobs: int = 0
    seconds: float = 0.0
    state_counts: Counter[int] = field(default_factory=Counter)
    # Runs per job key (project, group, name).
    key_counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    # Every job id, in submission order (the registry's seq order), and its key.
    ids: list[str] = field(default_factory=list)
    keys: list[tuple[str, str, str]] = field(default_factory=list)
    # Each job's end time (epoch seconds), as ``ids``; and all of them ascending,
    # for ClearJobs to pick a cut from.
    ends: array[float] = field(default_factory=lambda: array("d"))
    end_times: array[float] = field(default_factory=lambda: array("d"))
    max_revision: int = 0
    max_seq: int = 0
    events: int = 0

    def projects(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for (project, _, _), n in self.key_counts.items():
            out[project] += n
        return out

    def cut_for_oldest(self, count: int) -> float:
        """An end time with exactly ``count`` jobs ended at or before it (midway to the next)."""
        count = max(0, min(count, len(self.end_times)))
        if count == 0:
            return self.end_times[0] - 1.0 if self.end_times else 0.0
        if count == len(self.end_times):
            return self.end_times[-1]
        return (self.end_times[count - 1] + self.end_times[count]) / 2

    def ended_at_or_before(self, cut: float) -> int:
        return bisect.bisect_right(self.end_times, cut)

    def summary(self) -> dict[str, Any]:
        return {
            "home": str(self.home),
            "jobs": self.jobs,
            "seconds": round(self.seconds, 2),
            "state_counts": {S.JobState.Name(s): n for s, n in sorted(self.state_counts.items())},
            "job_keys": len(self.key_counts),
            "projects": len(self.projects()),
            "events": self.events,
            "max_revision": self.max_revision,
        }


# ------------------------------------------------------------------ what jobs look like


@dataclass(frozen=True)
class _Kind:
    """One job key's spec: its steps and the proto the conductor would have made of it."""

    key: tuple[str, str, str]
    spec: job_pb2.JobSpec
    step_names: tuple[str, ...]
    # The spec in status.json's mapping, made once: it is the same in every run of the key.
    spec_json: dict[str, Any]
    # Where its runs' directories and checkpoint directories go (checked by Layout once).
    run_parent: str
    checkpoint_parent: str


# Steps of the spec of each job key, by its place in the (sorted) list of keys.
_STEP_COUNTS = (1, 2, 1, 3, 1)


def _spec_yaml(rng: random.Random, key: tuple[str, str, str], steps: int) -> str:
    project, group, name = key
    lines = [f"name: {name}", f"project: {project}", f"group: {group}"]
    if steps > 1:
        lines.append("steps:")
        for i, step in enumerate(("prepare", "train", "report")[:steps]):
            lines += [f"  - name: {step}", f"    command: python {name}.py --stage {i + 1}"]
    else:
        lines.append(f"command: python {name}.py --lr {rng.choice(('1e-3', '3e-4', '1e-4'))}")
    if rng.random() < 0.4:
        lines += ["resources:", f"  cpus: {rng.choice((1, 2, 4))}", f"  memory: {rng.choice((1, 4, 16))}G"]
    if rng.random() < 0.3:
        lines += ["env:", f"  SEED: '{rng.randrange(1000)}'", "  WANDB_MODE: offline"]
    if rng.random() < 0.2:
        lines.append(f"max_duration: {rng.choice(('2h', '1d'))}")
    if rng.random() < 0.2:
        lines += ["pause:", "  signal: SIGUSR1", "  grace: 60s"]
    return "\n".join(lines) + "\n"


def _kind(rng: random.Random, key: tuple[str, str, str], steps: int, layout: Layout) -> _Kind:
    """Parsed and converted by the conductor's own spec code, as SubmitJob does."""
    model = specs.from_yaml(_spec_yaml(rng, key, steps))
    spec = specs.to_proto(model)
    return _Kind(
        key,
        spec,
        tuple(s.name for s in model.effective_steps()),
        json_format.MessageToDict(spec),
        str(layout.run_dir(*key, "x").parent),
        str(layout.checkpoint_dir(*key)),
    )


def _keys(rng: random.Random, jobs: int) -> list[tuple[str, str, str]]:
    n_projects = max(3, min(len(PROJECTS), round(jobs**0.25)))
    keys: list[tuple[str, str, str]] = []
    for project in PROJECTS[:n_projects]:
        for group in sorted(rng.sample(GROUPS, rng.randint(2, min(len(GROUPS), max(2, round(jobs**0.18)))))):
            names = rng.sample(NAMES, rng.randint(1, min(len(NAMES), max(2, round(jobs**0.18)))))
            keys.extend((project, group, name) for name in sorted(names))
    return keys


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    """A time as the conductor takes it (``Timestamp.GetCurrentTime``): microseconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(int(seconds * 1e6))
    return ts


def _exit_ts(seconds: float) -> timestamp_pb2.Timestamp:
    """An exit's time as an executor records it (``ExitStatus.time``): float seconds to nanoseconds."""
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


@dataclass
class _Planned:
    create: float
    key: tuple[str, str, str]


def _plan(
    rng: random.Random, keys: list[tuple[str, str, str]], jobs: int, now: float, season: float
) -> list[_Planned]:
    """Submission times and job keys of ``jobs`` runs, in sweeps, oldest first."""
    keys = list(keys)
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(keys))]
    rng.shuffle(keys)
    start = now - season
    rare = min(RARE_RUNS, max(0, jobs // 100))
    out = [_Planned(start + 60.0 * (i + 1), RARE_KEY) for i in range(rare)]
    # The newest sweeps are submitted up to two hours before ``now`` (their jobs
    # are cut short to end before it: the last hour has its share of endings).
    span = season - 3 * 3600.0
    while len(out) < jobs:
        key = rng.choices(keys, weights)[0]
        # Up to 3,000 runs, and never more than a fiftieth of the history, so
        # even a small one has many sweeps of many keys.
        size = min(jobs - len(out), max(1, jobs // 50), max(1, int(math.exp(rng.uniform(0, math.log(3000))))))
        t = start + 3600.0 + rng.random() * span
        for _ in range(size):
            out.append(_Planned(t, key))
            t += rng.uniform(0.002, 0.4)
    out.sort(key=lambda p: p.create)
    return out


_LOG_POOL = "".join(
    _LOG_LINE.format(e=i // 50, s=i, l=(i * 7919 % 1000) / 1000, lr="3e-4") for i in range(80)
).encode()
_LOG_ENDS = [0, *(i + 1 for i, b in enumerate(_LOG_POOL) if b == ord("\n"))]


def _log(rng: random.Random, lines: int) -> bytes:
    """The first ``lines`` lines of a training log."""
    return _LOG_POOL[: _LOG_ENDS[min(lines, len(_LOG_ENDS) - 1)]]


@dataclass
class _Made:
    """One generated job: its final record, the versions its events carry, its files."""

    job: job_pb2.Job
    runtime: str
    versions: list[job_pb2.Job]
    log: bytes
    launched: bool


def make_job(
    rng: random.Random,
    kind: _Kind,
    create: float,
    state: int,
    first_revision: int,
    *,
    keep_versions: bool = True,
    ends_before: float = math.inf,
) -> _Made:
    """One ended job as the lifecycle leaves it, built with its own step helpers.

    Revisions are consecutive from ``first_revision``: one per change that
    the conductor logs (created; per launch, RUNNING and then its process id;
    each step's end; the cancel asked for; the end). With ``keep_versions``, the Job at each of
    them (what the events log carries). The job ends before ``ends_before``.
    """
    project, group, name = kind.key
    job_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime(create)) + "-" + rng.randbytes(3).hex()
    job = job_pb2.Job(
        id=job_id,
        run_id=job_id,
        project=project,
        group=group,
        name=name,
        state=S.JOB_STATE_QUEUED,
        executor=kind.spec.executor,
        step_count=len(kind.step_names),
        start_step=1,
        run_dir=f"{kind.run_parent}/{job_id}",
        checkpoint_dir=f"{kind.checkpoint_parent}/{job_id}",
    )
    job.spec.CopyFrom(kind.spec)
    job.create_time.CopyFrom(_ts(create))
    steps_mod.init_steps(job, list(kind.step_names), 1)
    revision = first_revision
    versions: list[job_pb2.Job] = []

    def change(at: float) -> None:
        nonlocal revision
        job.revision = revision
        job.update_time.CopyFrom(_ts(at))
        revision += 1
        if keep_versions:
            copy = job_pb2.Job()
            copy.CopyFrom(job)
            versions.append(copy)

    change(create)
    cancelled = state == S.JOB_STATE_CANCELLED
    if cancelled and rng.random() < CANCELLED_QUEUED_SHARE:
        # Cancelled before it ever started: no process, no log, no checkpoint directory.
        at = min(create + rng.uniform(1.0, 3 * 3600.0), (create + ends_before) / 2)
        job.state = S.JOB_STATE_CANCELLED
        job.reason = "cancelled by request"
        job.end_time.CopyFrom(_ts(at))
        change(at + rng.uniform(0.0005, 0.005))
        return _Made(job, _runtime_json(0, "cancelled by request"), versions, b"", launched=False)

    # Which step it ends in, and how.
    n = len(kind.step_names)
    last = n if state == S.JOB_STATE_SUCCEEDED else rng.randint(1, n)
    t = create + min(rng.uniform(0.005, 900.0), (ends_before - create) / 4)
    log = b""
    for step in range(1, last + 1):
        # A launch: RUNNING with no process yet (durable before it starts), then its process id.
        job.state = S.JOB_STATE_RUNNING
        job.step, job.attempt = step, 1
        job.step_name = kind.step_names[step - 1]
        job.external_id = ""
        if step == 1:
            job.start_time.CopyFrom(_ts(t))
            job.heartbeat_time.CopyFrom(_ts(t))
        steps_mod.step_started(job, step, 1, len(log), _ts(t))
        change(t)
        job.external_id = str(rng.randint(1000, 4_000_000))
        change(t + rng.uniform(0.002, 0.02))
        duration = math.exp(rng.uniform(math.log(2.0), math.log(6 * 3600.0))) / n
        # What is left before ``ends_before``, shared among this step and the ones after it.
        duration = min(duration, (ends_before - t) / (2 * (last - step + 1)))
        end = t + duration
        # Heartbeats refresh every 30 s while it runs (no event, no revision).
        beats = math.floor(duration / 30.0)
        if beats:
            job.heartbeat_time.CopyFrom(_ts(t + 30.0 * beats))
        log += _log(rng, rng.choice((0, 3, 12, 40)))
        final = step == last
        if final and cancelled:
            job.state = S.JOB_STATE_CANCELLING
            job.reason = "cancelled by request"
            asked = t + duration * rng.random()
            change(asked)
            end = asked + rng.uniform(0.02, 2.0)
            status = ExitStatus(143, 15) if rng.random() < 0.9 else ExitStatus(137, 9)
            steps_mod.step_ended(job, step, S.STEP_STATE_CANCELLED, status, len(log), _exit_ts(end))
        elif final and state == S.JOB_STATE_FAILED:
            status = ExitStatus(*rng.choice(((1, None), (1, None), (2, None), (3, None), (137, 9))))
            steps_mod.step_ended(job, step, S.STEP_STATE_FAILED, status, len(log), _exit_ts(end))
            where = f"step {job.step_name!r} " if n > 1 else ""
            job.reason = f"{where}failed: {describe_exit(status)}"
        else:
            status = ExitStatus(0)
            steps_mod.step_ended(job, step, S.STEP_STATE_SUCCEEDED, status, len(log), _exit_ts(end))
        if final:
            job.state = state  # type: ignore[assignment]
            job.end_time.CopyFrom(_exit_ts(end))
            if status.exit_code is not None:
                job.exit_code = status.exit_code
            if status.signal is not None:
                job.signal = status.signal
            change(end + rng.uniform(0.001, 0.06))
        else:
            change(end + rng.uniform(0.0005, 0.005))
            t = end + rng.uniform(0.001, 0.05)
    return _Made(job, _runtime_json(last, job.reason if cancelled else ""), versions, log, launched=True)


@functools.lru_cache(maxsize=64)
def _runtime_json(launches: int, cancel_reason: str) -> str:
    """The runtime notes of an ended job: nothing left to do, its launch count and any cancel."""
    return Run(seq=0, launch_seq=launches, cancel_reason=cancel_reason).to_json()


# ------------------------------------------------------------------ writing

_FD = descriptor.FieldDescriptor
_INT64 = frozenset({_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64})
_TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


def _timestamp_json(ts: timestamp_pb2.Timestamp) -> str:
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts.seconds))
    nanos = ts.nanos
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1000 == 0:
        return f"{text}.{nanos // 1000:06d}Z"
    return f"{text}.{nanos:09d}Z"


def _json_value(fd: descriptor.FieldDescriptor, value: Any) -> Any:
    if fd.type == _FD.TYPE_MESSAGE:
        name = value.DESCRIPTOR.full_name
        if name == _TIMESTAMP:
            return _timestamp_json(value)
        if name.startswith("google.protobuf."):
            return json_format.MessageToDict(value)
        return _json_object(value)
    if fd.type == _FD.TYPE_ENUM:
        found = fd.enum_type.values_by_number.get(value) if fd.enum_type is not None else None
        return found.name if found is not None else value
    if fd.type in _INT64:
        return str(value)
    return value


def _json_object(msg: Any, spec_json: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``json_format.MessageToDict`` makes of ``msg``, several times faster.

    Driven by the descriptors, so it follows the protos. Only well-known
    types other than Timestamp go through json_format. ``spec_json`` stands
    in for a Job's spec (the same in every run of a key, so made once).
    """
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if spec_json is not None and fd.name == "spec":
            out[fd.json_name] = spec_json
        elif fd.is_repeated:
            out[fd.json_name] = [_json_value(fd, v) for v in value]
        else:
            out[fd.json_name] = _json_value(fd, value)
    return out


def status_json(job: job_pb2.Job, spec_json: dict[str, Any] | None = None) -> bytes:
    """status.json of ``job``: the bytes ``jobfile.job_to_json`` writes (the test compares them)."""
    return json.dumps(_json_object(job, spec_json), indent=None, sort_keys=True).encode()


# A jobs row: seq, id, state, revision, the Job's bytes, runtime notes.
_Row = tuple[Any, ...]
# An events row: revision, job id, type, the Job's bytes.
_Event = tuple[int, str, int, bytes]


def write_registry(path: Path, jobs: list[_Row], events: list[_Event]) -> None:
    """Add rows to the registry at ``path`` in one transaction (blocking).

    The only place that knows the registry's tables: ``jobs`` (seq, Job,
    runtime notes) and ``events`` (revision, job id, type, Job). The schema
    itself comes from the registry (opened and closed once here), so its
    indexes are made as the conductor makes them.
    """
    if not path.exists():

        async def create() -> None:
            registry = SqliteRegistry(path)
            await registry.open()
            await registry.close()

        asyncio.run(create())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a generator: durable once closed is enough
        conn.execute("BEGIN IMMEDIATE")
        # The conductor's own statement and row, so the indexed columns are filled as it fills them.
        conn.executemany(INSERT_JOB, jobs)
        conn.executemany("INSERT INTO events (revision, job_id, type, job) VALUES (?, ?, ?, ?)", events)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _write_file(path: str, data: bytes) -> os.stat_result:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, RUN_FILE_MODE)
    try:
        if data:
            os.write(fd, data)
        return os.fstat(fd)
    finally:
        os.close(fd)


# Directories made so far by this process (each tree writer process has its own).
_MADE_DIRS: set[str] = set()
# One job's files: its record, its key (for the spec's JSON), its log (None when never launched).
_TreeItem = tuple[bytes, tuple[str, str, str], bytes | None]


def _parent(path: str) -> None:
    parent = os.path.dirname(path)
    if parent not in _MADE_DIRS:
        os.makedirs(parent, DIR_MODE, exist_ok=True)
        _MADE_DIRS.add(parent)


def write_trees(items: list[_TreeItem], spec_json: dict[tuple[str, str, str], dict[str, Any]]) -> int:
    """Each job's run directory (status.json, output.log) and its run's checkpoint
    directory with the marker, as the conductor and a launch leave them (blocking)."""
    for blob, key, log in items:
        job = job_pb2.Job.FromString(blob)
        _parent(job.run_dir)
        os.mkdir(job.run_dir, DIR_MODE)
        st = _write_file(os.path.join(job.run_dir, STATUS_FILE), status_json(job, spec_json[key]))
        # As the conductor's status writer leaves an ended run: a line in its job's summary.
        line = runsummary.summary_line(job, st)
        if line is not None:
            runsummary.append(os.path.dirname(job.run_dir), line)
        if log is None:
            continue
        _write_file(os.path.join(job.run_dir, LOG_FILE), log)
        _parent(job.checkpoint_dir)
        os.mkdir(job.checkpoint_dir, DIR_MODE)
        # What layout.make_run_checkpoint_dir writes; ids are names, with nothing to escape.
        marker = f'{{"job_id": "{job.id}", "run_id": "{job.run_id}"}}\n'.encode()
        _write_file(os.path.join(job.checkpoint_dir, RUN_MARKER), marker)
        if line is not None:
            # And a line in its job's checkpoint summary, measured as the status writer does.
            checkpoints = checkpointdirs.run_checkpoints(job.checkpoint_dir)
            if checkpoints is not None:
                ck_line = runsummary.checkpoint_line(job.checkpoint_dir, checkpoints)
                runsummary.append(os.path.dirname(job.checkpoint_dir), ck_line)
    return len(items)


class _TreeWriters:
    """Writes the trees in worker processes (JSON and file system calls are most of
    the generator's time), a bounded number of chunks ahead; inline with no workers."""

    def __init__(self, workers: int) -> None:
        self._pool = (
            ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_umask
            )
            if workers > 1
            else None
        )
        self._ahead = 2 * workers
        self._pending: deque[Future[int]] = deque()

    def write(self, items: list[_TreeItem], kinds: dict[tuple[str, str, str], _Kind]) -> None:
        spec_json = {key: kinds[key].spec_json for key in {key for _, key, _ in items}}
        if self._pool is None:
            write_trees(items, spec_json)
            return
        while len(self._pending) >= self._ahead:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(write_trees, items, spec_json))

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)


def _worker_umask() -> None:
    os.umask(UMASK)


def _batches(items: list[_Planned], size: int) -> Iterator[list[_Planned]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def generate(
    home: Path,
    jobs: int,
    *,
    seed: int = 0,
    now: float | None = None,
    season_days: float = SEASON_DAYS,
    event_history: int = DEFAULT_EVENT_HISTORY,
    workers: int = 0,
    progress: Any = None,
) -> History:
    """Write ``jobs`` ended jobs into a conductor home that has no jobs yet (blocking).

    The home may be new, or one a conductor has used; its registry must
    hold no job (the generated jobs take the first seqs and revisions).
    ``workers`` processes write the trees (0: one per CPU; 1: none, all inline).
    ``progress``, when given, is called with a line of text now and then.
    """
    # What the conductor and its jobs make gets its modes from this umask (0750, 0640).
    old_umask = os.umask(UMASK)
    try:
        workers = workers or min(4, os.cpu_count() or 1)
        return _generate(home, jobs, seed, now, season_days, event_history, workers, progress)
    finally:
        os.umask(old_umask)


def _generate(
    home: Path,
    jobs: int,
    seed: int,
    now: float | None,
    season_days: float,
    event_history: int,
    workers: int,
    progress: Any,
) -> History:
    t0 = time.perf_counter()
    home = home.expanduser().resolve()
    layout = Layout.under(home / "status", home / "checkpoints")
    for root in (home, layout.status_dir, layout.checkpoints_dir):
        root.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(root, DIR_MODE)
    state_dir = home / "state"
    state_dir.mkdir(mode=STATE_DIR_MODE, exist_ok=True)
    registry = state_dir / "registry.db"
    if registry.exists():
        with contextlib.closing(sqlite3.connect(registry)) as conn:
            if conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]:
                raise ValueError(f"{registry} already holds jobs; the generator writes into an empty history")
    rng = random.Random(seed)
    now = time.time() if now is None else now
    keys = _keys(rng, jobs)
    steps_of = {key: _STEP_COUNTS[i % len(_STEP_COUNTS)] for i, key in enumerate(keys)}
    steps_of[RARE_KEY] = 1
    plan = _plan(rng, keys, jobs, now, season_days * 86400.0)
    kinds: dict[tuple[str, str, str], _Kind] = {}
    history = History(home)
    ids: set[str] = set()
    revision = 1
    # The registry keeps the changes of the last ``event_history`` revisions.
    # Every job has at least two, so they are all among the last this many jobs'.
    keep_from = len(plan) - event_history // 2
    kept: deque[job_pb2.Job] = deque(maxlen=event_history)
    writers = _TreeWriters(workers)
    try:
        for batch in _batches(plan, 20_000):
            rows: list[_Row] = []
            tree: list[_TreeItem] = []
            for planned in batch:
                kind = kinds.get(planned.key)
                if kind is None:
                    kind = kinds[planned.key] = _kind(rng, planned.key, steps_of[planned.key], layout)
                state = (
                    S.JOB_STATE_FAILED if planned.key == RARE_KEY else rng.choices(ENDED, STATE_WEIGHTS)[0]
                )
                keep = history.jobs + len(rows) >= keep_from
                args = (rng, kind, planned.create, state, revision)
                made = make_job(*args, keep_versions=keep, ends_before=now)
                while made.job.id in ids:  # the same second and the same 24 random bits: draw again
                    made = make_job(*args, keep_versions=keep, ends_before=now)
                job = made.job
                ids.add(job.id)
                revision = job.revision + 1
                kept.extend(made.versions)
                blob = job.SerializeToString()
                rows.append(row_values(history.jobs + len(rows) + 1, job, made.runtime, blob))
                tree.append((blob, planned.key, made.log if made.launched else None))
                if len(tree) >= 2000:
                    writers.write(tree, kinds)
                    tree = []
                history.ids.append(job.id)
                history.keys.append(planned.key)
                history.state_counts[job.state] += 1
                history.key_counts[planned.key] += 1
                history.ends.append(job.end_time.seconds + job.end_time.nanos / 1e9)
            if tree:
                writers.write(tree, kinds)
            write_registry(registry, rows, [])
            history.jobs += len(rows)
            if progress is not None:
                progress(f"history: {history.jobs} of {jobs} jobs made ({time.perf_counter() - t0:.0f} s)")
    finally:
        writers.close()
    updated = int(S.JOB_EVENT_TYPE_UPDATED)
    events = [(v.revision, v.id, updated, v.SerializeToString()) for v in kept]
    write_registry(registry, [], events)
    history.max_seq = history.jobs
    history.events = len(events)
    history.max_revision = revision - 1
    history.end_times = array("d", sorted(history.ends))
    history.seconds = time.perf_counter() - t0
    return history


# ------------------------------------------------------------------ live jobs

LIVE_PROJECT = "live"


def submit_live(
    address: str, count: int, *, seconds: float = 100_000, short: int = 0, deadline: float = 300.0
) -> list[str]:
    """``count`` live jobs made through the API of the conductor at ``address``; their ids.

    Real jobs, 16 submissions at a time: ``short`` of them sleep a few seconds
    and end (history made while one watches), the others sleep ``seconds``
    (they run as many as the conductor's --max-running lets, and wait QUEUED).
    """
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from baton.v1 import conductor_pb2 as pb
    from baton.v1 import conductor_pb2_grpc

    until = time.monotonic() + deadline
    with grpc.insecure_channel(address) as channel:
        stub = conductor_pb2_grpc.ConductorStub(channel)

        def submit(i: int) -> str:
            sleep = 1 + i % 5 if i < short else seconds
            where = f"name: sleeper-{i % 10}\nproject: {LIVE_PROJECT}\ngroup: g{i % 3}\n"
            spec = f"{where}command: sleep {sleep:g}\n"
            left = max(1.0, until - time.monotonic())
            return str(stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec), timeout=left).id)

        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(submit, range(count)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n")[0])
    p.add_argument("home", type=Path, help="a conductor home with no jobs yet (made when missing)")
    p.add_argument("--jobs", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--now", type=float, help="seconds since the epoch the season ends at (default: now)")
    p.add_argument(
        "--live",
        type=int,
        default=0,
        metavar="M",
        help="then submit M live jobs (long sleepers) to the conductor at --address, serving HOME",
    )
    p.add_argument("--address", help="HOST:PORT of a conductor started on HOME after the history was written")
    args = p.parse_args(argv)
    if args.live and not args.address:
        p.error("--live needs --address: start a conductor on HOME, then submit")
    try:
        history = generate(
            args.home, args.jobs, seed=args.seed, now=args.now, progress=lambda m: print(m, file=sys.stderr)
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = history.summary()
    if args.live:
        out["live"] = len(submit_live(args.address, args.live))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
