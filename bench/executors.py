"""Baton on an engine beside the bare engine: submit -> RUNNING and cancel, per executor.

    python -m bench --only executors_ms

For each engine (Slurm, Ray), on one cluster or head that this section starts
itself, and in the same run, jobs go one at a time alternately to the bare
engine and to a Baton conductor subprocess that drives the same engine
(``--slurm`` / ``--ray-address``). Every job is ``touch MARK; exec sleep 300``:
the mark file (watched with inotify by this process) dates the moment the
job's own command started, on either side, and ``exec`` makes the job obey
SIGTERM.

Bare side (the measure of bench/slurm_bare.py and bench/ray_bare.py, one job
at a time): sbatch started -> ``squeue`` shows RUNNING, and scancel -> gone;
or POST /api/jobs/ -> GET shows RUNNING, and stop -> STOPPED; squeue and GET
polled every 5 ms.

Baton side: SubmitJob sent -> the job seen RUNNING with an empty ``reason``
(its wrapper has started on a node), and CancelJob sent -> CANCELLED, both
seen on a WatchJobs stream that this process reads from a thread (no GetJob
polling, so no poll interval is added). Also: SubmitJob -> the first RUNNING
event (committed just before the launch is handed to the engine, ``reason``
"waiting in the ... queue"), -> the event that carries the engine's id (the
engine has accepted the launch), and -> the engine itself shows Baton's job
RUNNING (squeue / GET polled every 5 ms, as on the bare side, so the engine
sees the same polling load on both sides).

Fairness, and what the section decides:

- Bare and Baton jobs alternate (bare first in even pairs, Baton first in
  odd ones), so a busy machine slows both sides alike; the machine's load is
  reported by the runner as for every section.
- Slurm starts pending batch jobs from a loop that wakes once a second, at a
  fixed phase of the wall clock: sbatch -> RUNNING is the wait for the next
  tick, anywhere in 0-1 s. Unpaired, 10 samples of that give medians that
  differ by ~100 ms by chance alone. So both jobs of a pair are submitted at
  the same phase of the wall-clock second, and the pairs' phases are spread
  evenly over the second (stratified, shuffled). Baton's time before its
  sbatch is then mostly absorbed by the tick (a launch that misses the tick
  waits a whole second more), so it is reported on its own:
  ``baton_submit_to_handed`` beside the bare ``submit_call`` (sbatch's own run).
- The bare RUNNING (squeue / Ray's status) is when the engine allocated or
  started the job, before the job's script runs; Baton's RUNNING with an empty
  reason is when its wrapper has started on the node, a later moment. So two
  overheads are given, each with the target of issue 14 (at most 10% of the
  bare p50 or 20 ms, whichever is larger): ``submit_overhead`` against the bare
  RUNNING (the issue's wording) and ``submit_overhead_started`` against the
  bare job's command started (the mark file), the like-for-like comparison.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from inotify_simple import INotify
from inotify_simple import flags as F

from baton.conductor.executors.nodes import LAUNCHES
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from bench import ray_bare, slurm_bare
from bench.jobs import S, submit_request
from bench.procs import Conductor
from bench.report import Json, Target, distribution, figure, log, percentile, section
from tools.testclusters.ray import RayHead, RayHeadError, call
from tools.testclusters.ray import _ray_executable as ray_executable
from tools.testclusters.slurm import SBIN_DIRS, SlurmCluster

ENGINES = ("slurm", "ray")
# squeue / GET between polls, on both sides: the bare benchmarks' own interval.
POLL_INTERVAL = 0.005
WARMUP_PAIRS = 1
SETTLE_S = 0.01  # from the job's command started to its cancel, on both sides
JOB = "touch {mark}; exec sleep 300"
SOURCE = "issue 14"
ENDED = frozenset({S.JOB_STATE_FAILED, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_CANCELLED})


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


# ---------------------------------------------------------------------- observers


class Marks:
    """Dates each file created in a directory (inotify, read from a thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._inotify = INotify()
        self._inotify.add_watch(str(directory), F.CREATE | F.MOVED_TO)
        self._times: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="marks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            events = self._inotify.read(timeout=200)
            now = time.perf_counter()
            if events:
                with self._cond:
                    for ev in events:
                        self._times.setdefault(ev.name, now)
                    self._cond.notify_all()

    def wait(self, name: str, timeout: float = 60.0) -> float:
        """When ``name`` was created (perf_counter), waiting for it if need be."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while name not in self._times:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.directory / name} was not created within {timeout} s")
                self._cond.wait(left)
            return self._times[name]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._inotify.close()


class Events:
    """A WatchJobs stream read by a thread: every job event, dated on receipt."""

    def __init__(self, stub: conductor_pb2_grpc.ConductorStub) -> None:
        revision = stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10).revision
        self._call = stub.WatchJobs(pb.WatchJobsRequest(since_revision=revision))
        self._seen: dict[str, list[tuple[float, job_pb2.Job]]] = {}
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="watchjobs", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for response in self._call:
                now = time.perf_counter()
                with self._cond:
                    for ev in response.events:
                        if ev.HasField("job"):
                            self._seen.setdefault(ev.job.id, []).append((now, ev.job))
                    self._cond.notify_all()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self._error = err
        finally:
            with self._cond:
                self._cond.notify_all()

    def first(
        self, job_id: str, pred: Callable[[job_pb2.Job], bool], what: str, timeout: float = 90.0
    ) -> tuple[float, job_pb2.Job]:
        """The first event of ``job_id`` whose job satisfies ``pred``: (receipt time, job)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, job in self._seen.get(job_id, []):
                    if pred(job):
                        return at, job
                    if job.state in ENDED:
                        raise RuntimeError(
                            f"job {job_id} ended {S.JobState.Name(job.state)} ({job.reason!r}) "
                            f"while waiting for {what}"
                        )
                if self._error is not None:
                    raise RuntimeError(f"WatchJobs failed: {self._error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"job {job_id}: no event with {what} within {timeout} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


class EngineWatch(threading.Thread):
    """Polls the engine about one of Baton's launches, as the bare side polls its own."""

    def __init__(self, running: Callable[[], bool], interval: float = POLL_INTERVAL) -> None:
        super().__init__(name="engine-watch", daemon=True)
        self._running = running
        self._interval = interval
        self._halt = threading.Event()
        self.at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 90
        try:
            while not self._halt.is_set() and time.monotonic() < deadline:
                if self._running():
                    self.at = time.perf_counter()
                    return
                self._halt.wait(self._interval)
        except Exception as err:  # reported by result()
            self.error = err

    def stop(self) -> None:
        self._halt.set()

    def result(self, timeout: float = 90.0) -> float:
        self.join(timeout)
        self.stop()
        if self.at is None:
            raise RuntimeError(f"the engine never showed Baton's job RUNNING ({self.error!r})")
        return self.at


# ---------------------------------------------------------------------- engines


@dataclass
class BareSample:
    t0: float
    to_running_ms: float
    cancel_ms: float
    submit_call_ms: float
    cancel_call_ms: float


@dataclass
class Engine:
    """One engine, started: how to run a bare job on it and how to ask it about Baton's."""

    name: str
    conductor_args: tuple[str, ...]
    conductor_env: dict[str, str]
    # (engine job name, command, before_cancel) -> one bare job, measured.
    bare: Callable[[str, str, Callable[[], None]], BareSample]
    # Baton's engine name of a launch -> the engine shows it RUNNING now.
    running: Callable[[str], bool]
    # Submit at a given phase of the wall-clock second (Slurm's scheduling tick).
    phase_locked: bool
    words: dict[str, str]
    details: Json = field(default_factory=dict)


def slurm_missing() -> str:
    """Why a Slurm cluster cannot be started here ("" when it can)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    needed = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
    missing = [c for c in needed if shutil.which(c, path=path) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run tools/engines.sh as root (make test does)"
    if os.geteuid() != 0:
        return "a SlurmCluster runs its daemons as root"
    return ""


def ray_missing() -> str:
    try:
        ray_executable()
    except RayHeadError as err:
        return str(err)
    return ""


def slurm_on(cluster: SlurmCluster) -> Engine:
    """The Slurm engine of a started cluster."""
    env = cluster.env

    def bare(name: str, command: str, before_cancel: Callable[[], None]) -> BareSample:
        t0 = time.perf_counter()
        s = slurm_bare.one_job(env, name, POLL_INTERVAL, command, lambda job: before_cancel())
        return BareSample(t0, s.to_running_ms, s.to_gone_ms, s.sbatch_ms, s.scancel_ms)

    def running(name: str) -> bool:
        argv = ["squeue", "-h", f"--name={name}", "-o", "%T"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        return out.stdout.strip() == "RUNNING"

    return Engine(
        name="slurm",
        conductor_args=("--slurm",),
        conductor_env=env,
        bare=bare,
        running=running,
        phase_locked=True,
        words={
            "bare_running": "sbatch started -> `squeue` shows RUNNING (allocated)",
            "bare_cancel": "scancel started -> `squeue` shows CANCELLED or no longer lists the job",
            "submit_call": "the sbatch command (start to exit)",
            "cancel_call": "the scancel command (start to exit)",
            "engine_running": "`squeue --name` shows Baton's batch job RUNNING",
        },
        details={
            "cluster_startup_ms": round(cluster.startup_seconds * 1000, 1),
            "slurm_conf": cluster.settings(),
        },
    )


def ray_on(head: RayHead) -> Engine:
    """The Ray engine of a started head."""
    poller = ray_bare._Poller(head.address, POLL_INTERVAL)

    def bare(name: str, command: str, before_cancel: Callable[[], None]) -> BareSample:
        t0 = time.perf_counter()
        s = ray_bare.one_job(head.address, poller, command, lambda sid: before_cancel())
        return BareSample(t0, s.to_running_ms, s.to_stopped_ms, s.submit_ack_ms, s.stop_ack_ms)

    def running(name: str) -> bool:
        status, body = call(head.address, "GET", f"/api/jobs/{name}")
        return status == 200 and isinstance(body, dict) and body.get("status") == "RUNNING"

    return Engine(
        name="ray",
        conductor_args=("--ray-address", head.address),
        conductor_env={},
        bare=bare,
        running=running,
        phase_locked=False,
        words={
            "bare_running": "POST /api/jobs/ sent -> GET /api/jobs/{id} shows RUNNING",
            "bare_cancel": "POST /api/jobs/{id}/stop sent -> GET shows STOPPED",
            "submit_call": "the POST /api/jobs/ round trip",
            "cancel_call": "the POST /api/jobs/{id}/stop round trip",
            "engine_running": "GET /api/jobs/baton-... shows Baton's Ray job RUNNING",
        },
        details={
            "head": f"RayHead(num_cpus={head.num_cpus}, num_gpus={head.num_gpus}) on 127.0.0.1",
            "head_start_s": round(head.start_seconds, 2),
        },
    )


@contextlib.contextmanager
def slurm_engine() -> Iterator[Engine]:
    with SlurmCluster(gpus=0) as cluster:
        yield slurm_on(cluster)


@contextlib.contextmanager
def ray_engine() -> Iterator[Engine]:
    log("executors_ms: starting a Ray head")
    with RayHead() as head:
        log(f"executors_ms: Ray head at {head.address} up in {head.start_seconds:.1f} s")
        yield ray_on(head)


STARTERS = {"slurm": (slurm_missing, slurm_engine), "ray": (ray_missing, ray_engine)}


# ---------------------------------------------------------------------- measuring


@dataclass
class Samples:
    bare_running: list[float] = field(default_factory=list)
    bare_started: list[float] = field(default_factory=list)
    bare_cancel: list[float] = field(default_factory=list)
    bare_submit_call: list[float] = field(default_factory=list)
    bare_cancel_call: list[float] = field(default_factory=list)
    baton_ack: list[float] = field(default_factory=list)
    baton_first_running: list[float] = field(default_factory=list)
    baton_handed: list[float] = field(default_factory=list)
    baton_engine_running: list[float] = field(default_factory=list)
    baton_started: list[float] = field(default_factory=list)
    baton_running: list[float] = field(default_factory=list)
    baton_cancel_ack: list[float] = field(default_factory=list)
    baton_cancel: list[float] = field(default_factory=list)
    # Baton's path, dated by the launch directory's records (their mtimes), in ms:
    # see ``_path_gaps``.
    path: dict[str, list[float]] = field(default_factory=dict)
    signals: dict[str, int] = field(default_factory=dict)


def _at_phase(phase: float | None) -> None:
    """Sleep until the wall clock's fraction of a second is ``phase`` (None: at once)."""
    if phase is None:
        return
    time.sleep((phase - time.time() % 1.0) % 1.0)


def _bare(engine: Engine, marks: Marks, label: str, keep: Samples | None) -> None:
    mark = f"{label}"
    command = JOB.format(mark=shlex.quote(str(marks.directory / mark)))
    started: list[float] = []

    def before_cancel() -> None:
        started.append(marks.wait(mark))
        time.sleep(SETTLE_S)

    s = engine.bare(label, command, before_cancel)
    if keep is not None:
        keep.bare_running.append(s.to_running_ms)
        keep.bare_started.append(_ms(s.t0, started[0]))
        keep.bare_cancel.append(s.cancel_ms)
        keep.bare_submit_call.append(s.submit_call_ms)
        keep.bare_cancel_call.append(s.cancel_call_ms)


def _baton(
    engine: Engine, c: Conductor, events: Events, marks: Marks, label: str, keep: Samples | None
) -> None:
    stub = c.stub
    command = JOB.format(mark=shlex.quote(str(marks.directory / label)))
    request = submit_request(label, command, executor=engine.name)
    t0 = time.perf_counter()
    job = stub.SubmitJob(request, timeout=30)
    acked = time.perf_counter()
    watch = EngineWatch(lambda: engine.running(f"baton-{job.id}-1"))
    watch.start()
    try:
        running = S.JOB_STATE_RUNNING
        first, _ = events.first(job.id, lambda j: j.state == running, "RUNNING")
        handed, _ = events.first(
            job.id, lambda j: j.state == running and bool(j.external_id), "an external_id"
        )
        ran, running_job = events.first(
            job.id,
            lambda j: j.state == running and bool(j.external_id) and not j.reason,
            "RUNNING, no reason",
        )
        started = marks.wait(label)
        on_engine = watch.result()
    finally:
        watch.stop()
    time.sleep(SETTLE_S)
    # The conductor removes the launch directory once the job's end is durable,
    # so its records are dated as they appear: `started` now, the rest by inotify.
    launch_dir = Path(running_job.run_dir) / LAUNCHES / "1"
    wall = time.time() - time.perf_counter()  # perf_counter -> wall clock, as the mtimes are
    started_record = _mtime(launch_dir / "started") - wall
    records = Marks(launch_dir)
    try:
        t1 = time.perf_counter()
        stub.CancelJob(pb.CancelJobRequest(job_id=job.id, reason="benchmark"), timeout=30)
        cancel_acked = time.perf_counter()
        done, ended = events.first(job.id, lambda j: j.state == S.JOB_STATE_CANCELLED, "CANCELLED")
        control_record, exit_record = records.wait("control"), records.wait("exit")
    finally:
        records.close()
    if keep is not None:
        times = (on_engine, started_record, ran, t1, control_record, exit_record, done)
        gaps = _path_gaps(*times)
        for key, value in gaps.items():
            keep.path.setdefault(key, []).append(value)
        keep.baton_ack.append(_ms(t0, acked))
        keep.baton_first_running.append(_ms(t0, first))
        keep.baton_handed.append(_ms(t0, handed))
        keep.baton_running.append(_ms(t0, ran))
        keep.baton_started.append(_ms(t0, started))
        keep.baton_engine_running.append(_ms(t0, on_engine))
        keep.baton_cancel_ack.append(_ms(t1, cancel_acked))
        keep.baton_cancel.append(_ms(t1, done))
        sig = str(ended.signal) if ended.HasField("signal") else f"exit {ended.exit_code}"
        keep.signals[sig] = keep.signals.get(sig, 0) + 1


def _overhead(figures: dict[str, Json], key: str, baton: list[float], bare: list[float], what: str) -> Json:
    """Baton p50 - bare p50 (ms, and % of the bare p50) against max(10% of bare p50, 20 ms)."""
    baton_p50, bare_p50 = percentile(baton, 50), percentile(bare, 50)
    over = baton_p50 - bare_p50
    limit = max(0.10 * bare_p50, 20.0)
    n = min(len(baton), len(bare))
    figures[key] = figure(
        over,
        "ms",
        n,
        f"Baton's overhead: p50 of {what}; the target is at most max(10% of the bare p50, 20 ms)",
        Target("<=", round(limit, 1), "ms", SOURCE),
    )
    pct = 100.0 * over / bare_p50 if bare_p50 else float("nan")
    figures[f"{key}_pct"] = figure(
        pct, "%", n, f"the same overhead, in % of the bare p50 ({bare_p50:.1f} ms)"
    )
    return {
        "baton_p50_ms": round(baton_p50, 1),
        "bare_p50_ms": round(bare_p50, 1),
        "target_ms": round(limit, 1),
    }


def _paired(baton: list[float], bare: list[float]) -> Json:
    diffs = [a - b for a, b in zip(baton, bare, strict=True)]
    return {
        "p50": round(percentile(diffs, 50), 1),
        "min": round(min(diffs), 1),
        "max": round(max(diffs), 1),
        "samples_ms": [round(d, 1) for d in diffs],
    }


def _mtime(path: Path) -> float:
    return path.stat().st_mtime_ns / 1e9


def _path_gaps(
    on_engine: float, started: float, ran: float, cancel_sent: float, control: float, exited: float,
    cancelled: float,
) -> dict[str, float]:
    """Where one Baton job's time went, from the wrapper's and conductor's records
    (all perf_counter times of this process)."""
    return {
        # The engine shows it RUNNING (squeue/GET poll) -> the wrapper's `started` written.
        "engine_running_to_started_record": (started - on_engine) * 1000,
        # `started` written -> the RUNNING-with-no-reason event here (inotify, the
        # conductor's check and commit, the event's delivery).
        "started_record_to_running_event": (ran - started) * 1000,
        # CancelJob sent -> the conductor wrote the control file.
        "cancel_sent_to_control_record": (control - cancel_sent) * 1000,
        # control written -> the wrapper's exit record: its poll (every 50 ms), the
        # SIGTERM, the job's death and the wrapper's own end.
        "control_record_to_exit_record": (exited - control) * 1000,
        # exit written -> the CANCELLED event here.
        "exit_record_to_cancelled_event": (cancelled - exited) * 1000,
    }


def _progress(engine: str, n: int, jobs: int, s: Samples) -> None:
    log(
        f"executors_ms: {engine} pair {n}/{jobs}: submit -> RUNNING bare {s.bare_running[-1]:.0f} ms "
        f"(started {s.bare_started[-1]:.0f}), Baton {s.baton_running[-1]:.0f} ms; "
        f"cancel bare {s.bare_cancel[-1]:.0f} ms, Baton {s.baton_cancel[-1]:.0f} ms"
    )


def measure_engine(engine: Engine, jobs: int) -> tuple[dict[str, Json], Json]:
    """``jobs`` pairs (after one unmeasured), bare and Baton alternately; figures and details."""
    e = engine.name
    samples = Samples()
    marks_dir = Path(tempfile.mkdtemp(prefix=f"baton-bench-marks-{e}-"))
    marks = Marks(marks_dir)
    rng = random.Random(14)
    phases: list[float | None] = [None] * (WARMUP_PAIRS + jobs)
    if engine.phase_locked:
        spread = [(k + 0.5) / jobs for k in range(jobs)]
        rng.shuffle(spread)
        phases = [rng.random() for _ in range(WARMUP_PAIRS)] + list(spread)  # type: ignore[assignment]
    try:
        with Conductor(
            f"executors-{e}", max_running=8, extra_args=engine.conductor_args, env=engine.conductor_env
        ) as c:
            events = Events(c.stub)
            try:
                for k in range(WARMUP_PAIRS + jobs):
                    keep = samples if k >= WARMUP_PAIRS else None
                    sides = ["bare", "baton"] if k % 2 == 0 else ["baton", "bare"]
                    for side in sides:
                        _at_phase(phases[k])
                        if side == "bare":
                            _bare(engine, marks, f"bare-{k}", keep)
                        else:
                            _baton(engine, c, events, marks, f"baton-{k}", keep)
                    if keep is not None:
                        _progress(e, k + 1 - WARMUP_PAIRS, jobs, samples)
            finally:
                events.close()
    finally:
        marks.close()
        shutil.rmtree(marks_dir, ignore_errors=True)
    return _figures(engine, samples, jobs)


def _figures(engine: Engine, s: Samples, jobs: int) -> tuple[dict[str, Json], Json]:
    e, w = engine.name, engine.words
    f: dict[str, Json] = {}
    f.update(
        distribution(
            f"{e}_bare_submit_to_running_", s.bare_running, f"bare {e}: {w['bare_running']}", brief=True
        )
    )
    f.update(
        distribution(
            f"{e}_bare_submit_to_started_",
            s.bare_started,
            f"bare {e}: submit -> the job's command has started (its mark file created, inotify)",
            brief=True,
        )
    )
    f.update(
        distribution(
            f"{e}_baton_submit_to_running_",
            s.baton_running,
            f"Baton on {e}: SubmitJob sent -> WatchJobs event RUNNING with an empty reason (wrapper started)",
            brief=True,
        )
    )
    f.update(
        distribution(
            f"{e}_baton_submit_to_first_running_",
            s.baton_first_running,
            f"Baton on {e}: SubmitJob sent -> the first RUNNING event (reason 'waiting in the {e} queue', "
            "committed just before the launch is handed to the engine)",
            brief=True,
        )
    )
    f.update(
        distribution(
            f"{e}_baton_submit_to_handed_",
            s.baton_handed,
            f"Baton on {e}: SubmitJob sent -> the event carrying the engine's id (the engine has the launch)",
            brief=True,
        )
    )
    f.update(
        distribution(
            f"{e}_baton_submit_to_engine_running_",
            s.baton_engine_running,
            f"Baton on {e}: SubmitJob sent -> {w['engine_running']} (polled every 5 ms)",
            brief=True,
        )
    )
    f.update(
        distribution(
            f"{e}_baton_submit_to_started_",
            s.baton_started,
            f"Baton on {e}: SubmitJob sent -> the job's command has started (its mark file created)",
            brief=True,
        )
    )
    f.update(distribution(f"{e}_bare_cancel_", s.bare_cancel, f"bare {e}: {w['bare_cancel']}", brief=True))
    f.update(
        distribution(
            f"{e}_baton_cancel_",
            s.baton_cancel,
            f"Baton on {e}: CancelJob sent -> WatchJobs event CANCELLED",
            brief=True,
        )
    )
    f.update(
        distribution(
            f"{e}_bare_submit_call_", s.bare_submit_call, f"bare {e}: {w['submit_call']}", brief=True
        )
    )
    f.update(
        distribution(f"{e}_baton_ack_", s.baton_ack, f"Baton on {e}: the SubmitJob round trip", brief=True)
    )
    overheads = {
        "submit": _overhead(
            f,
            f"{e}_submit_overhead",
            s.baton_running,
            s.bare_running,
            "Baton's SubmitJob -> RUNNING with an empty reason minus the bare engine's own RUNNING",
        ),
        "submit_started": _overhead(
            f,
            f"{e}_submit_overhead_started",
            s.baton_running,
            s.bare_started,
            "Baton's SubmitJob -> RUNNING with an empty reason minus bare submit -> the job's command "
            "started (like for like: both are 'the job runs on the node')",
        ),
        "cancel": _overhead(
            f,
            f"{e}_cancel_overhead",
            s.baton_cancel,
            s.bare_cancel,
            "Baton's CancelJob -> CANCELLED minus the bare cancel",
        ),
    }

    def median_gap(later: list[float], earlier: list[float]) -> float:
        return round(percentile([a - b for a, b in zip(later, earlier, strict=True)], 50), 1)

    details: Json = {
        "pairs": jobs,
        # Per-job gaps between the moments above (medians of per-job differences):
        # where Baton's time goes, and which part the engine's own wait hides.
        "where_the_time_goes_p50_ms": {
            "baton_submit_to_first_running_event": round(percentile(s.baton_first_running, 50), 1),
            "baton_first_running_to_handed_event": median_gap(s.baton_handed, s.baton_first_running),
            "baton_handed_to_engine_running": median_gap(s.baton_engine_running, s.baton_handed),
            "baton_engine_running_to_command_started": median_gap(s.baton_started, s.baton_engine_running),
            "baton_engine_running_to_running_event": median_gap(s.baton_running, s.baton_engine_running),
            **{f"baton_{k}": round(percentile(v, 50), 1) for k, v in s.path.items()},
            "bare_submit_call": round(percentile(s.bare_submit_call, 50), 1),
            "bare_running_to_command_started": median_gap(s.bare_started, s.bare_running),
        },
        "warmup_pairs": WARMUP_PAIRS,
        "overheads": overheads,
        "paired_differences_ms": {
            "submit_to_running": _paired(s.baton_running, s.bare_running),
            "submit_to_running_vs_bare_started": _paired(s.baton_running, s.bare_started),
            "cancel": _paired(s.baton_cancel, s.bare_cancel),
        },
        "samples_ms": {
            "bare_submit_to_running": [round(x, 1) for x in s.bare_running],
            "bare_submit_to_started": [round(x, 1) for x in s.bare_started],
            "baton_submit_to_running": [round(x, 1) for x in s.baton_running],
            "baton_submit_to_started": [round(x, 1) for x in s.baton_started],
            "bare_cancel": [round(x, 1) for x in s.bare_cancel],
            "baton_cancel": [round(x, 1) for x in s.baton_cancel],
        },
        # Pairs whose Baton job started a whole engine cycle (Slurm's 1 s tick) after
        # the bare one: each such pair moves Baton's p50 up by about 1000/pairs ms.
        "pairs_where_baton_missed_the_bare_jobs_tick": sum(
            1 for a, b in zip(s.baton_running, s.bare_running, strict=True) if a - b > 500
        )
        if engine.phase_locked
        else None,
        "baton_cancel_ack_p50_ms": round(percentile(s.baton_cancel_ack, 50), 1),
        "bare_cancel_call_p50_ms": round(percentile(s.bare_cancel_call, 50), 1),
        "baton_cancelled_by": s.signals,
        "submitted_at_a_fixed_phase_of_the_second": engine.phase_locked,
        **engine.details,
    }
    return f, details


def executors(jobs: int, engines: tuple[str, ...] = ENGINES) -> Json:
    """The benchmark section: each engine started here, measured, stopped."""
    prev_switch = sys.getswitchinterval()
    # Several threads date events here (WatchJobs, inotify, engine polls): hand
    # the GIL over quickly so that no timestamp waits 5 ms for it.
    sys.setswitchinterval(0.0005)
    figures: dict[str, Json] = {}
    details: Json = {
        "pairs_per_engine": jobs,
        "job": JOB.format(mark="MARK"),
        "poll_interval_ms": POLL_INTERVAL * 1000,
        "observed_by": "bare: squeue / GET polled every 5 ms by the main thread (bench/slurm_bare.py, "
        "bench/ray_bare.py); Baton: a WatchJobs stream read by a thread, each event dated on receipt "
        "(no GetJob polling); job command started: inotify on the mark files' directory",
        "order": "one job at a time; bare and Baton alternate (bare first in even pairs, Baton first in odd)",
        "engines": {},
    }
    errors: list[str] = []
    try:
        for name in engines:
            missing, starter = STARTERS[name]
            why = missing()
            if why:
                log(f"executors_ms: {name} skipped: {why}")
                details["engines"][name] = {"measured": False, "why": why}
                continue
            try:
                with starter() as engine:
                    got, engine_details = measure_engine(engine, jobs)
                figures.update(got)
                details["engines"][name] = {"measured": True, **engine_details}
            except Exception as err:
                traceback.print_exc(file=sys.stderr)
                errors.append(f"{name}: {type(err).__name__}: {err}")
                details["engines"][name] = {"measured": False, "error": errors[-1]}
    finally:
        sys.setswitchinterval(prev_switch)
    details["notes"] = NOTES
    result = section(
        "Submit -> RUNNING and cancel latency of Baton's engine executors (Slurm, Ray) beside the bare "
        "engine's own, in the same run on one cluster / head started here; jobs one at a time, bare and "
        "Baton alternating.",
        figures,
        details,
    )
    if errors:
        result["error"] = "; ".join(errors)
    return result


NOTES = [
    "Slurm: slurmctld starts pending batch jobs from a loop that wakes once a second, so sbatch -> "
    "RUNNING is mostly the wait for that tick. Both jobs of a pair are submitted at the same phase of "
    "the wall-clock second, the pairs' phases spread over the second; Baton's time before sbatch is then "
    "hidden by the tick unless it makes the launch miss one (a whole second more): see "
    "slurm_baton_submit_to_handed beside slurm_bare_submit_call for that time on its own. With the phases "
    "spread evenly, a launch later by d ms misses the tick in about d/1000 of the pairs, and each miss "
    "moves Baton's p50 up by about 1000/pairs ms: in expectation the p50 overhead is Baton's time before "
    "the engine plus its time after the allocation, but with 10-20 pairs one or two misses more or less "
    "move it by 50-100 ms (pairs_where_baton_missed_the_bare_jobs_tick says how many there were). "
    "paired_differences_ms (Baton minus bare, pair by pair) is the steadier view.",
    "The bare RUNNING is the engine's allocation (Slurm) or its supervisor's start (Ray), before the "
    "job's script runs; Baton's RUNNING with an empty reason is its wrapper started on the node, a later "
    "moment. *_submit_overhead compares against the bare RUNNING (the issue's wording), "
    "*_submit_overhead_started against the bare job's command started (like for like).",
    "Baton cancels through its wrapper (a control file polled every 50 ms on the node, then SIGTERM to "
    "the job's group, the exit recorded and seen by inotify); the bare cancel is the engine's own "
    "(scancel, or Ray's stop).",
    "where_the_time_goes_p50_ms dates Baton's path by the launch directory's records (the mtimes of "
    "`started`, `control` and `exit`, written on this same machine) beside the client's own moments.",
]
