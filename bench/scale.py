"""Issue 18's figures: a conductor and a viewer over a long history (``python -m bench --scale``).

A history of ended jobs (``--scale-jobs``, a million by default) is generated
straight into a fresh conductor home (bench/history.py); a conductor
subprocess is started on it and ``--scale-live`` jobs are submitted through
the API (long sleepers: ``--scale-running`` of them run, the rest wait
QUEUED). Then, one phase after the other:

1. the conductor's resident memory (from /proc), and the floor: the same
   GetJob callers against a bare grpc.aio server answering with a stored job;
2. ListJobs p95 for every filter ListJobs offers (one matching nothing among
   them), while ``--scale-clients`` processes call GetJob, and GetJob's p95
   meanwhile;
3. GetConductorInfo p95, quiet;
4. a WatchJobs snapshot from revision 0: first message, the whole snapshot
   (to SNAPSHOT_END), and GetJob p95 meanwhile, with the same callers;
5. a restart (SIGTERM, then a new process on the same home): process start to
   health SERVING and to the first answered call, and the CPU it then spends
   until it is quiet;
6. a viewer process on the same home: process start to serving, its
   resident memory, and its inotify watches (counted in /proc/PID/fdinfo);
7. ClearJobs of the oldest ``--scale-clear`` ended jobs (100,000 by default).

Every phase has a time limit (``--scale-phase-limit``): a server that misses
it is reported "timed out after X s" and the run goes on with what can still
be measured. The targets are the issue's, for a million jobs; at other sizes
they are shown as they are (ClearJobs' scales with the number cleared).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from bench.history import LIVE_PROJECT, RARE_KEY, History, generate, submit_live
from bench.loadclient import Call, read_calls
from bench.procs import REPO, Conductor, conductor_cpu_seconds, filesystem
from bench.report import Json, Target, figure, log, percentile, section
from bench.viewer import _Viewer

S = job_pb2
ISSUE = "issue 18"
# How much room a generated job takes on tmpfs (files are a page each): used to
# choose tmpfs only when the history fits it with plenty to spare.
BYTES_PER_JOB_ON_TMPFS = 24 * 1024
INODES_PER_JOB = 8


@dataclass(frozen=True)
class ScaleSizes:
    jobs: int = 1_000_000
    live: int = 1_000
    running: int = 20
    clients: int = 32
    clear: int = 100_000
    # Calls per ListJobs filter (fewer when the filter's share of the phase runs out).
    list_calls: int = 40
    info_calls: int = 200
    phase_limit: float = 300.0
    # 32 callers asking ten times a second each: 320 GetJob calls a second. At
    # 20 ms (1,600 asked) the callers' own processes take this machine's second
    # core and a bare grpc.aio server answers at p95 ≈ 14 ms, which leaves no
    # room to see what a ListJobs or a snapshot costs the others.
    getjob_interval_ms: float = 100.0
    directory: Path | None = None
    seed: int = 0


# ----------------------------------------------------------------------- helpers


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def helpers_rss_mb(pid: int) -> float:
    """The RSS of ``pid``'s child processes (the conductor's status writer and registry readers)."""
    total = 0.0
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return math.nan
    for child in children:
        value = rss_mb(child)
        if not math.isnan(value):
            total += value
    return total


def inotify_watches(pid: int) -> int:
    """Watches held by ``pid``: the ``inotify wd:`` lines of each inotify descriptor's fdinfo."""
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                total += sum(1 for line in f if line.startswith("inotify wd:"))
        except OSError:
            continue
    return total


def timed_out(limit: float, unit: str, what: str, target: Target | None, done: str = "") -> Json:
    """A figure the server did not produce in time: no value, failed, and why."""
    out = figure(math.nan, unit, 0, what, target)
    out["timed_out"] = f"timed out after {limit:.0f} s" + (f" ({done})" if done else "")
    return out


def p95_figure(values: list[float], what: str, target: Target | None, limit: float | None = None) -> Json:
    if not values:
        return timed_out(limit or 0.0, "ms", what, target, "no call answered")
    return figure(percentile(values, 95), "ms", len(values), f"95th percentile of {what}", target)


def _choose_directory(jobs: int, given: Path | None) -> Path:
    """Where the homes go: as given; else tmpfs when the history fits it with room to spare."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        free = st.f_bavail * st.f_frsize
        with open("/proc/meminfo") as f:
            avail = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), 0)
        fits = jobs * BYTES_PER_JOB_ON_TMPFS < 0.3 * min(free, avail)
        if fits and jobs * INODES_PER_JOB < 0.3 * st.f_favail:
            return shm
    return Path(tempfile.gettempdir())


# ----------------------------------------------------------------------- callers


class Callers:
    """``count`` GetJob callers in processes of their own (bench/loadclient.py)."""

    def __init__(self, root: Path, address: str, ids: list[str], count: int, interval_ms: float) -> None:
        self.root = root
        self.address = address
        self.count = count
        self.interval_ms = interval_ms
        self.ids_file = root / "getjob-ids.txt"
        self.ids_file.write_text("\n".join(ids) + "\n")
        self._round = 0

    @contextlib.contextmanager
    def calling(self, limit: float) -> Iterator[Callable[[float, float], list[Call]]]:
        """Start the callers (once each has been answered); yields a function giving
        the calls started within a time window, valid once the block is left."""
        self._round += 1
        stop = self.root / f"stop-{self._round}"
        outs = [self.root / f"calls-{self._round}-{i}.txt" for i in range(self.count)]
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadclient", self.address, str(self.ids_file), str(out),
                 str(stop), "--interval-ms", str(self.interval_ms), "--seed", str(i)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=REPO,
            )
            for i, out in enumerate(outs)
        ]  # fmt: skip
        calls: list[Call] = []
        try:
            deadline = time.monotonic() + limit
            for proc in procs:
                assert proc.stdout is not None
                # A caller's first answer may be slow on a busy server; readline blocks
                # until it comes, or the process ends.
                line = _readline(proc, max(1.0, deadline - time.monotonic()))
                if line.strip() != "ready":
                    raise RuntimeError(f"a GetJob caller did not get an answer within {limit:.0f} s")
            yield lambda t0, t1: [c for c in calls if t0 <= c.start <= t1]
        finally:
            stop.touch()
            for proc in procs:
                try:
                    proc.wait(CALLER_EXIT_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for out in outs:
                calls.extend(read_calls(out))
                out.unlink(missing_ok=True)
            stop.unlink(missing_ok=True)


# How long the GetJob callers run alone before ListJobs starts.
CALLERS_ALONE_SECONDS = 3.0
# A caller finishes its call in flight (its deadline is 30 s), then writes its file.
CALLER_EXIT_SECONDS = 45.0


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """One line of a child's stdout, or "" after ``timeout`` seconds."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return proc.stdout.readline().decode(errors="replace")


def getjob_figures(prefix: str, calls: list[Call], seconds: float, what: str, limit: float) -> Json:
    # Failed calls count too: one that ran out of its 30 s waited that long.
    ms = [c.ms for c in calls]
    errors = Counter(c.code for c in calls if c.code != "OK")
    out = {
        f"{prefix}_p95": p95_figure(ms, f"GetJob latency {what}", Target("<=", 20.0, "ms", ISSUE), limit),
        f"{prefix}_p50": figure(percentile(ms, 50), "ms", len(ms), f"median GetJob latency {what}"),
        f"{prefix}_rate": figure(
            len(calls) / seconds if seconds > 0 else math.nan,
            "calls/s",
            len(calls),
            f"GetJob calls a second {what}",
        ),
        f"{prefix}_errors": figure(
            sum(errors.values()), "calls", max(1, len(calls)), f"GetJob calls that failed {what}"
        ),
    }
    if errors:
        out[f"{prefix}_errors"]["codes"] = dict(errors)
    return out


# ----------------------------------------------------------------------- the run


@dataclass
class _Run:
    sizes: ScaleSizes
    root: Path
    conductor: Conductor
    history: History
    figures: Json = field(default_factory=dict)
    details: Json = field(default_factory=dict)
    live_ids: list[str] = field(default_factory=list)
    rss_readings: dict[str, float] = field(default_factory=dict)
    helpers_rss_readings: dict[str, float] = field(default_factory=dict)

    @property
    def limit(self) -> float:
        return self.sizes.phase_limit

    def read_rss(self, when: str) -> float:
        value = rss_mb(self.conductor.pid)
        self.rss_readings[when] = round(value, 1)
        self.helpers_rss_readings[when] = round(helpers_rss_mb(self.conductor.pid), 1)
        return value

    def phase(self, name: str, fn: Callable[[], None]) -> None:
        log(f"scale: {name}")
        t0 = time.monotonic()
        before = set(self.figures)
        try:
            fn()
        except Exception as err:  # one phase failing must not lose the others' figures
            log(f"scale: {name} failed: {err!r}")
            self.details.setdefault("phase_errors", {})[name] = f"{type(err).__name__}: {err}"[:500]
        self.details.setdefault("phase_seconds", {})[name] = round(time.monotonic() - t0, 1)
        # Said as they come: at a million jobs the run is long, and its cleanup too.
        for key in [k for k in self.figures if k not in before]:
            fig = self.figures[key]
            verdict = "" if "pass" not in fig else (" (met)" if fig["pass"] else " (MISSED)")
            log(f"scale:   {key} = {fig['value']} {fig['unit']}{verdict}")


def scale(sizes: ScaleSizes) -> Json:
    base = _choose_directory(sizes.jobs, sizes.directory)
    conductor = Conductor("scale", max_running=max(1, sizes.running), root_dir=base)
    conductor.remove_later = True
    try:
        root = conductor.root
        log(f"scale: generating {sizes.jobs} ended jobs under {conductor.home} ({filesystem(base)})")
        history = generate(conductor.home, sizes.jobs, seed=sizes.seed, progress=log)
        run = _Run(sizes, root, conductor, history)
        run.details.update(
            {
                "history": history.summary(),
                "directory": str(root),
                "filesystem": filesystem(root),
                "disk_per_job": _disk_per_job(history),
                "getjob_callers": sizes.clients,
                "getjob_interval_ms": sizes.getjob_interval_ms,
            }
        )
        run.figures["generate_s"] = figure(
            history.seconds, "s", 1, f"writing {history.jobs} ended jobs into the registry and the trees"
        )
        _measure(run)
        return section(
            f"A conductor over {history.jobs} generated ended jobs and {sizes.live} live ones "
            f"({sizes.running} running, the rest queued), a viewer over the same tree; each "
            f"phase limited to {sizes.phase_limit:.0f} s.",
            run.figures,
            run.details,
        )
    finally:
        log("scale: cleaning up (cancelling the live jobs; the home is removed after the report)")
        conductor.close()


def _disk_per_job(history: History, sample: int = 500) -> Json:
    """Bytes allocated and inodes used per job: the registry's share, and a sample of runs' directories."""
    registry = history.home / "state" / "registry.db"
    blocks = inodes = 0
    picked = random.Random(2).sample(range(len(history.ids)), min(sample, len(history.ids)))
    for i in picked:
        for tree in ("status", "checkpoints"):
            top = history.home.joinpath(tree, *history.keys[i], history.ids[i])
            for entry in [top, *top.rglob("*")] if top.exists() else []:
                blocks += entry.lstat().st_blocks
                inodes += 1
    return {
        "registry_bytes": round(registry.stat().st_size / max(1, history.jobs)),
        "run_bytes": round(blocks * 512 / max(1, len(picked))),
        "run_inodes": round(inodes / max(1, len(picked)), 2),
    }


def _measure(run: _Run) -> None:
    c = run.conductor
    started = _start(run, "first_start")
    if not started:
        return
    run.phase("live_jobs", lambda: _live_jobs(run))
    run.figures["conductor_rss_mb"] = figure(
        run.read_rss("with_live_jobs"),
        "MB",
        1,
        f"conductor RSS with {run.history.jobs} ended and {len(run.live_ids)} live jobs",
        Target("<=", 300.0, "MB", ISSUE),
    )
    sample = random.Random(1).sample(run.history.ids, min(20_000, len(run.history.ids)))
    callers = Callers(
        run.root, c.address, sample + run.live_ids, run.sizes.clients, run.sizes.getjob_interval_ms
    )
    run.phase("transport_floor", lambda: _transport_floor(run, callers))
    run.phase("list_jobs", lambda: _list_jobs(run, callers))
    run.read_rss("after_list_jobs")
    run.phase("conductor_info", lambda: _conductor_info(run))
    run.phase("watch_snapshot", lambda: _watch_snapshot(run, callers))
    run.read_rss("after_watch_snapshot")
    run.phase("restart", lambda: _restart(run))
    if c.proc is None or c.proc.poll() is not None:
        return
    run.phase("viewer", lambda: _viewer(run))
    run.phase("clear_jobs", lambda: _clear_jobs(run))
    run.details["conductor_rss_mb_at"] = run.rss_readings
    run.details["conductor_helpers_rss_mb_at"] = run.helpers_rss_readings
    if run.rss_readings and run.helpers_rss_readings:
        worst = max(run.rss_readings[k] + run.helpers_rss_readings.get(k, 0.0) for k in run.rss_readings)
        run.figures["conductor_rss_with_helpers_mb"] = figure(
            worst, "MB", len(run.rss_readings),
            "the most the conductor and its helper processes (status writer, registry readers) held together",
            Target("<=", 300.0, "MB", ISSUE),
        )  # fmt: skip


def _start(run: _Run, name: str) -> bool:
    """Start the conductor: process start to serving, to health SERVING, to a first answer."""
    c = run.conductor
    t0 = time.monotonic()
    try:
        c.start(timeout=run.limit)
    except RuntimeError as err:
        run.figures[f"{name}_ready_s"] = timed_out(
            run.limit, "s", "conductor process start to its first answered call", None, str(err)[:200]
        )
        return False
    serving = time.monotonic() - t0
    health, answered = _first_answers(c.address, t0, t0 + run.limit)
    run.figures[f"{name}_serving_s"] = figure(
        serving, "s", 1, "process start to listening (conductor.json written)"
    )
    run.figures[f"{name}_health_s"] = figure(health, "s", 1, "process start to health SERVING")
    target = Target("<=", 5.0, "s", ISSUE) if name == "restart" else None
    run.figures[f"{name}_ready_s"] = (
        figure(answered, "s", 1, "process start to its first answered GetConductorInfo", target)
        if not math.isnan(answered)
        else timed_out(run.limit, "s", "process start to its first answered GetConductorInfo", target)
    )
    return True


def _first_answers(address: str, t0: float, deadline: float) -> tuple[float, float]:
    health = answered = math.nan
    with grpc.insecure_channel(address) as channel:
        checker = health_pb2_grpc.HealthStub(channel)
        stub = _stub(channel)
        while time.monotonic() < deadline and math.isnan(health):
            with contextlib.suppress(grpc.RpcError):
                resp = checker.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=max(0.1, deadline - time.monotonic())
                )
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    health = time.monotonic() - t0
                    break
            time.sleep(0.005)
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.RpcError):
                stub.GetConductorInfo(
                    pb.GetConductorInfoRequest(), timeout=max(0.1, deadline - time.monotonic())
                )
                answered = time.monotonic() - t0
                break
            time.sleep(0.005)
    return health, answered


def _stub(channel: grpc.Channel) -> Any:
    from baton.v1 import conductor_pb2_grpc

    return conductor_pb2_grpc.ConductorStub(channel)


def _live_jobs(run: _Run) -> None:
    """Long sleepers through the API: ``running`` run, the others wait QUEUED behind them."""
    c = run.conductor
    t0 = time.monotonic()
    deadline = t0 + run.limit
    run.live_ids = submit_live(c.address, run.sizes.live, deadline=run.limit)
    submitted = time.monotonic() - t0
    want = min(run.sizes.running, run.sizes.live)
    running = 0
    while time.monotonic() < deadline:
        resp = c.stub.ListJobs(
            pb.ListJobsRequest(states=[S.JOB_STATE_RUNNING], page_size=1000),
            timeout=max(1.0, deadline - time.monotonic()),
        )
        running = len(resp.jobs)
        if running >= want:
            break
        time.sleep(0.2)
    run.figures["live_submit_s"] = figure(
        submitted, "s", run.sizes.live, f"submitting {run.sizes.live} live jobs through the API, 16 at a time"
    )
    run.details["live_running"] = running


def _filters(run: _Run) -> dict[str, pb.ListJobsRequest]:
    """Every filter ListJobs offers, alone and together, from the broad to one matching nothing."""
    h = run.history
    ((project, _),) = h.projects().most_common(1)
    keys = h.key_counts.most_common()
    big_key = keys[0][0]
    small_key = next((k for k, _ in reversed(keys) if k != RARE_KEY), big_key)
    groups: Counter[str] = Counter()
    names: Counter[str] = Counter()
    for (_, g, n), count in h.key_counts.items():
        groups[g] += count
        names[n] += count
    group, name = groups.most_common(1)[0][0], names.most_common(1)[0][0]
    R = pb.ListJobsRequest
    return {
        "all": R(),
        "project": R(project=project),
        "group": R(group=group),
        "name": R(name=name),
        "project_group_name": R(project=big_key[0], group=big_key[1], name=big_key[2]),
        "small_job": R(project=small_key[0], group=small_key[1], name=small_key[2]),
        "rare_old_job": R(project=RARE_KEY[0], group=RARE_KEY[1], name=RARE_KEY[2]),
        "failed": R(states=[S.JOB_STATE_FAILED]),
        "cancelled_in_project": R(project=project, states=[S.JOB_STATE_CANCELLED]),
        "running": R(states=[S.JOB_STATE_RUNNING]),
        "queued_live": R(project=LIVE_PROJECT, states=[S.JOB_STATE_QUEUED]),
        "paused_none": R(states=[S.JOB_STATE_PAUSED]),
        "no_such_project": R(project="no-such-project"),
        "no_such_name_in_project": R(project=project, name="no-such-name"),
    }


def _transport_floor(run: _Run, callers: Callers) -> None:
    """The same callers against a bare server answering GetJob with a stored job (bench/bare_server.py)."""
    job_file = callers.root / "floor-job.bin"
    ids = run.live_ids or run.history.ids
    job = run.conductor.stub.GetJob(pb.GetJobRequest(job_id=ids[0]), timeout=30)
    job_file.write_bytes(job.SerializeToString())
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", str(job_file)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        port = int(_readline(server, run.limit) or "0")
        if not port:
            raise RuntimeError("the bare server did not start")
        own = callers.root / "floor"
        own.mkdir(exist_ok=True)
        floor = Callers(own, f"127.0.0.1:{port}", ["floor"], callers.count, callers.interval_ms)
        with floor.calling(run.limit) as window:
            t0 = time.monotonic()
            time.sleep(FLOOR_SECONDS)
            t1 = time.monotonic()
        figures = getjob_figures(
            "getjob_floor", window(t0, t1), t1 - t0, "from a bare grpc.aio server (no Baton)", run.limit
        )
        del figures["getjob_floor_p95"]["target"], figures["getjob_floor_p95"]["pass"]
        run.figures.update(figures)
    finally:
        server.kill()
        server.wait()
        job_file.unlink(missing_ok=True)


# How long the callers ask the bare server.
FLOOR_SECONDS = 5.0


def _list_jobs(run: _Run, callers: Callers) -> None:
    c = run.conductor
    filters = _filters(run)
    share = run.limit / (len(filters) + 1)
    lat: dict[str, list[float]] = {}
    matched: dict[str, int] = {}
    late: dict[str, str] = {}
    with callers.calling(run.limit) as window:
        # The callers alone first: what GetJob costs here with nothing else asked of the
        # conductor, so the figures beside ListJobs can be told from a busy machine.
        alone = time.monotonic()
        time.sleep(CALLERS_ALONE_SECONDS)
        t0 = time.monotonic()
        for name, request in filters.items():
            until = time.monotonic() + share
            lat[name] = []
            for _ in range(run.sizes.list_calls):
                left = until - time.monotonic()
                if left <= 0:
                    late[name] = f"{len(lat[name])} of {run.sizes.list_calls} calls in {share:.0f} s"
                    break
                s = time.monotonic()
                try:
                    resp = c.stub.ListJobs(request, timeout=max(0.5, left))
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                        late[name] = f"a call took more than {left:.0f} s"
                        break
                    raise
                lat[name].append((time.monotonic() - s) * 1000)
                matched[name] = len(resp.jobs)
        t1 = time.monotonic()
    target = Target("<=", 20.0, "ms", ISSUE)
    worst = 0.0
    for name, values in lat.items():
        what = f"ListJobs ({name}: {_describe(filters[name])}; first page) while GetJob callers run"
        if name in late or not values:
            fig = timed_out(share, "ms", what, target, late.get(name, "no call answered"))
            fig["samples"] = len(values)
            worst = math.inf
        else:
            fig = p95_figure(values, what, target)
            worst = max(worst, fig["value"])
        fig["matched"] = matched.get(name, 0)
        run.figures[f"list_jobs_{name}_p95"] = fig
    run.figures["list_jobs_worst_p95"] = figure(
        worst if math.isfinite(worst) else math.nan,
        "ms",
        sum(len(v) for v in lat.values()),
        "the worst ListJobs p95 of all the filters above",
        target,
    )
    run.figures.update(
        getjob_figures("getjob_during_list", window(t0, t1), t1 - t0, "while ListJobs runs", run.limit)
    )
    calm = getjob_figures("getjob_alone", window(alone, t0), t0 - alone, "with only the callers", run.limit)
    del calm["getjob_alone_p95"]["target"], calm["getjob_alone_p95"]["pass"]
    run.figures.update(calm)


def _describe(request: pb.ListJobsRequest) -> str:
    parts = [f"{f}={getattr(request, f)}" for f in ("project", "group", "name") if getattr(request, f)]
    if request.states:
        parts.append(
            "states=" + ",".join(S.JobState.Name(s).removeprefix("JOB_STATE_") for s in request.states)
        )
    return " ".join(parts) or "no filter"


def _conductor_info(run: _Run) -> None:
    c = run.conductor
    values: list[float] = []
    deadline = time.monotonic() + run.limit
    for _ in range(run.sizes.info_calls):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s = time.monotonic()
        c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=max(0.5, left))
        values.append((time.monotonic() - s) * 1000)
    target = Target("<=", 5.0, "ms", ISSUE)
    what = "GetConductorInfo latency, one caller, nothing else running"
    if len(values) < run.sizes.info_calls:
        fig = timed_out(run.limit, "ms", what, target, f"{len(values)} of {run.sizes.info_calls} calls")
    else:
        fig = p95_figure(values, what, target)
    run.figures["conductor_info_p95"] = fig


@dataclass
class _Snapshot:
    first: float = math.nan
    total: float = math.nan
    jobs: int = 0
    messages: int = 0
    outcome: str = "complete"


def _one_snapshot(stub: Any, limit: float, expected: int) -> _Snapshot:
    """One WatchJobs from revision 0, read to its SNAPSHOT_END (or the limit)."""
    out = _Snapshot()
    t0 = time.monotonic()
    call = stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=limit)
    try:
        for resp in call:
            if out.messages == 0:
                out.first = time.monotonic() - t0
            out.messages += 1
            done = False
            for ev in resp.events:
                if ev.type == S.JOB_EVENT_TYPE_SNAPSHOT:
                    out.jobs += 1
                elif ev.type == S.JOB_EVENT_TYPE_SNAPSHOT_END:
                    done = True
            if done:
                out.total = time.monotonic() - t0
                return out
        out.outcome = "the stream ended before SNAPSHOT_END"
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise
        out.outcome = f"{out.jobs} of {expected} jobs received"
    finally:
        call.cancel()
    return out


# A snapshot shorter than this is taken again, so GetJob calls overlap enough of them.
SNAPSHOT_WINDOW = 2.0


def _watch_snapshot(run: _Run, callers: Callers) -> None:
    c = run.conductor
    expected = run.history.jobs + len(run.live_ids)
    rounds: list[_Snapshot] = []
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with callers.calling(run.limit) as window, grpc.insecure_channel(c.address, options=options) as channel:
        stub = _stub(channel)
        t0 = time.monotonic()
        while True:
            snap = _one_snapshot(stub, max(1.0, t0 + run.limit - time.monotonic()), expected)
            rounds.append(snap)
            if math.isnan(snap.total) or time.monotonic() - t0 >= SNAPSHOT_WINDOW or len(rounds) >= 50:
                break
        t1 = time.monotonic()
    # The worst round: a snapshot that was slow once was slow.
    worst = max(rounds, key=lambda r: (math.isnan(r.total), r.total))
    first = max(r.first for r in rounds)
    what = f"WatchJobs from revision 0 over {expected} jobs"
    target = Target("<=", 100.0, "ms", ISSUE)
    run.figures["watch_first_event_ms"] = (
        figure(first * 1000, "ms", len(rounds), f"{what}: the request to its first message", target)
        if not math.isnan(first)
        else timed_out(run.limit, "ms", f"{what}: first message", target)
    )
    target = Target("<=", 30.0, "s", ISSUE)
    run.figures["watch_snapshot_s"] = (
        figure(worst.total, "s", len(rounds), f"{what}: the request to SNAPSHOT_END", target)
        if not math.isnan(worst.total)
        else timed_out(run.limit, "s", f"{what}: to SNAPSHOT_END", target, worst.outcome)
    )
    run.details["watch_snapshot"] = {
        "rounds": len(rounds),
        "jobs": worst.jobs,
        "expected": expected,
        "messages": worst.messages,
        "outcome": worst.outcome,
    }
    run.figures.update(
        getjob_figures(
            "getjob_during_watch", window(t0, t1), t1 - t0, "while the snapshot streams", run.limit
        )
    )


def _restart(run: _Run) -> None:
    c = run.conductor
    c.stop()
    if not _start(run, "restart"):
        return
    pid = c.pid
    # The CPU it spends once answering (rewriting status files, re-attaching), until quiet.
    t0 = time.monotonic()
    cpu0 = conductor_cpu_seconds(pid)
    last = cpu0
    quiet_since = time.monotonic()
    while time.monotonic() - t0 < run.limit:
        time.sleep(1.0)
        now = conductor_cpu_seconds(pid)
        if now - last > 0.1:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 3.0:
            break
        last = now
    busy = max(0.0, quiet_since - t0)
    run.figures["restart_cpu_after_ready_s"] = figure(
        conductor_cpu_seconds(pid) - cpu0,
        "s",
        1,
        "CPU the restarted conductor (and its status writer) spends after its first answer, until quiet",
    )
    run.figures["restart_busy_after_ready_s"] = figure(
        busy, "s", 1, "wall time from its first answer until it is quiet (under 0.1 CPU s a second for 3 s)"
    )
    resp = c.stub.ListJobs(
        pb.ListJobsRequest(states=[S.JOB_STATE_RUNNING], page_size=1000), timeout=run.limit
    )
    run.details["running_after_restart"] = len(resp.jobs)
    run.figures["conductor_rss_after_restart_mb"] = figure(
        run.read_rss("after_restart"), "MB", 1, "conductor RSS once the restarted conductor is quiet",
        Target("<=", 300.0, "MB", ISSUE),
    )  # fmt: skip


def _viewer(run: _Run) -> None:
    """A cold start (no snapshot: the scan), then a restart from the snapshot it wrote."""
    cache = run.root / "viewer-index.json"
    _viewer_start(run, cache)
    if cache.exists():
        _viewer_restart(run, cache)


def _started_viewer(run: _Run, cache: Path, log_name: str, name: str, what: str) -> _Viewer | None:
    """A viewer serving over the run's home; None (the figure ``name`` timed out) when it did not."""
    try:
        return _Viewer(run.conductor.home, run.root / log_name, run.limit, "--index-cache", str(cache))
    except RuntimeError as err:
        target = Target("<=", 30.0, "s", ISSUE)
        run.figures[name] = timed_out(run.limit, "s", what, target, str(err)[:200])
        return None


def _reconciled(run: _Run, v: _Viewer, t0: float, name: str, what: str) -> bool:
    """Wait for the viewer's first reconciliation; the figure ``name`` says when, from ``t0``."""
    if v.wait_event("index_reconciled", run.limit) is None:
        run.figures[name] = timed_out(run.limit, "s", what, None)
        return False
    run.figures[name] = figure(time.monotonic() - t0, "s", 1, what)
    return True


def _viewer_restart(run: _Run, cache: Path) -> None:
    runs = run.history.jobs + len(run.live_ids)
    t0 = time.monotonic()
    what = f"viewer restart from its index snapshot to serving over {runs} runs"
    v = _started_viewer(run, cache, "viewer-restart.log", "viewer_restart_s", what)
    if v is None:
        return
    try:
        run.figures["viewer_restart_s"] = figure(
            time.monotonic() - t0, "s", 1,
            f"viewer restart from its index snapshot to serving over {runs} runs (lists as of the snapshot "
            "until reconciled)", Target("<=", 30.0, "s", ISSUE),
        )  # fmt: skip
        what = "viewer restart to its index reconciled with the tree"
        if not _reconciled(run, v, t0, "viewer_reconciled_s", what):
            return
        run.figures["viewer_restart_rss_mb"] = figure(
            rss_mb(v.proc.pid), "MB", 1, "viewer RSS once reconciled", Target("<=", 1024.0, "MB", ISSUE)
        )
        run.figures["viewer_restart_inotify_watches"] = figure(
            inotify_watches(v.proc.pid), "watches", 1, "inotify watches once reconciled",
            Target("<=", 50_000.0, "watches", ISSUE),
        )  # fmt: skip
    finally:
        v.stop()


def _viewer_start(run: _Run, cache: Path) -> None:
    runs = run.history.jobs + len(run.live_ids)
    t0 = time.monotonic()
    what = f"viewer process start to serving over {runs} runs"
    v = _started_viewer(run, cache, "viewer.log", "viewer_cold_start_s", what)
    if v is None:
        return
    try:
        ready = time.monotonic() - t0
        time.sleep(3.0)  # what it holds once settled, not only at the moment it answers
        rss = rss_mb(v.proc.pid)
        watches = inotify_watches(v.proc.pid)
        run.figures["viewer_cold_start_s"] = figure(
            ready, "s", 1,
            f"viewer process start to serving over {runs} runs, with no index snapshot of its own (ended "
            "runs and their checkpoints from their job directories' summaries in both trees, as the history "
            "generator leaves them)",
            Target("<=", 30.0, "s", ISSUE),
        )  # fmt: skip
        run.figures["viewer_index_s"] = figure(v.index_seconds, "s", 1, "the viewer's own index_ready time")
        run.figures["viewer_rss_mb"] = figure(
            rss, "MB", 1, "viewer RSS, serving", Target("<=", 1024.0, "MB", ISSUE)
        )
        run.figures["viewer_inotify_watches"] = figure(
            watches, "watches", 1, "inotify watches the viewer holds (/proc/PID/fdinfo)",
            Target("<=", 50_000.0, "watches", ISSUE),
        )  # fmt: skip
        with open("/proc/sys/fs/inotify/max_user_watches") as f:
            run.details["max_user_watches"] = int(f.read())
        # What the viewer says of its own index: runs, and directories it could not
        # watch (the per-user limit is shared with every other program of this user).
        for line in v.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "index_ready":
                    skip = ("event", "timestamp", "level", "logger")
                    run.details["viewer_index_ready"] = {k: x for k, x in event.items() if k not in skip}
        ready_event = run.details.get("viewer_index_ready", {})
        if ready_event.get("from_summaries") or ready_event.get("checkpoints_from_summaries"):
            # Served from the job directories' summaries: every run taken from one is then
            # checked against the trees, in the background.
            _reconciled(
                run, v, t0, "viewer_cold_confirmed_s",
                "viewer process start until every run taken from a summary is checked against the trees",
            )  # fmt: skip
        written = v.wait_event("index_snapshot_written", run.limit)
        if written is not None:
            run.details["viewer_snapshot"] = {k: written.get(k) for k in ("runs", "bytes", "seconds")}
    finally:
        v.stop()


def _clear_jobs(run: _Run) -> None:
    c = run.conductor
    h = run.history
    count = min(run.sizes.clear, h.jobs // 2)
    if count <= 0:
        return
    cut = h.cut_for_oldest(count)
    # 20 s for 100,000, in proportion (but never under 2 s: a small clear is all overhead).
    limit_s = 20.0 * max(count, 10_000) / 100_000
    target = Target("<=", round(limit_s, 3), "s", f"{ISSUE}: 20 s for 100,000, in proportion, 2 s at least")
    what = f"ClearJobs of the {count} oldest ended jobs (older_than), the call's round trip"
    older = duration_pb2.Duration()
    t0 = time.monotonic()
    older.FromNanoseconds(int((time.time() - cut) * 1e9))
    try:
        resp = c.stub.ClearJobs(pb.ClearJobsRequest(older_than=older), timeout=run.limit)
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise
        run.figures["clear_jobs_s"] = timed_out(run.limit, "s", what, target)
        return
    took = time.monotonic() - t0
    run.figures["clear_jobs_s"] = figure(took, "s", 1, what, target)
    doomed = [job_id for job_id, end in zip(h.ids, h.ends, strict=True) if end <= cut]
    gone = doomed[:: max(1, len(doomed) // 20)]
    still = 0
    for job_id in gone:
        try:
            c.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=30)
            still += 1
        except grpc.RpcError:
            pass
    run.details["clear_jobs"] = {
        "asked": count,
        "deleted": resp.deleted_count,
        "sampled_still_answered": still,
    }
