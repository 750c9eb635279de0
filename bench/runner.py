"""Runs the sections and prints the JSON document."""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import grpc
from google import protobuf

from baton.common.version import VERSION
from bench import (
    executors,
    feeds,
    latency,
    memory,
    procs,
    ray_bare,
    scale,
    slurm_bare,
    throughput,
    viewer,
    web,
)
from bench.jobs import DEFAULT_POLL_INTERVAL
from bench.procs import CLK_TCK, REPO
from bench.report import Json, finite, log, percentile, target_summary


@dataclass(frozen=True)
class Sizes:
    submit_jobs: int
    cancel_jobs: int
    bulk_cancel_jobs: int
    submit_rate_seconds: float
    submit_rate_concurrency: int
    memory_jobs: int
    getjob_seconds: float
    getjob_rounds: int
    getjob_concurrency: int
    pause_cycles: int
    log_lines: int
    log_megabytes: int
    log_rounds: int
    events: int
    snapshot_jobs: int
    snapshot_rounds: int
    subscribers: int
    subscriber_lines: int
    viewer_runs: int
    viewer_checkpoints: int
    viewer_queries: int
    viewer_rewrites: int
    ray_jobs: int
    slurm_jobs: int
    executor_jobs: int
    web_lines: int
    web_changes: int


FULL = Sizes(
    submit_jobs=200,
    cancel_jobs=100,
    bulk_cancel_jobs=100,
    submit_rate_seconds=5.0,
    submit_rate_concurrency=64,
    memory_jobs=50,
    getjob_seconds=1.5,
    getjob_rounds=6,
    getjob_concurrency=32,
    pause_cycles=30,
    log_lines=300,
    log_megabytes=100,
    log_rounds=3,
    events=200,
    snapshot_jobs=100_000,
    snapshot_rounds=3,
    subscribers=200,
    subscriber_lines=50,
    viewer_runs=100_000,
    viewer_checkpoints=20_000,
    viewer_queries=300,
    viewer_rewrites=60,
    ray_jobs=30,
    slurm_jobs=20,
    executor_jobs=20,
    web_lines=300,
    web_changes=20,
)
QUICK = Sizes(
    submit_jobs=25,
    cancel_jobs=15,
    bulk_cancel_jobs=20,
    submit_rate_seconds=1.5,
    submit_rate_concurrency=32,
    memory_jobs=10,
    getjob_seconds=0.75,
    getjob_rounds=2,
    getjob_concurrency=32,
    pause_cycles=6,
    log_lines=60,
    log_megabytes=8,
    log_rounds=1,
    events=30,
    snapshot_jobs=2_000,
    snapshot_rounds=1,
    subscribers=20,
    subscriber_lines=10,
    viewer_runs=2_000,
    viewer_checkpoints=300,
    viewer_queries=40,
    viewer_rewrites=8,
    ray_jobs=10,
    slurm_jobs=10,
    # Issue 14's must-show asks for at least 10 jobs per engine, quick or not.
    executor_jobs=10,
    web_lines=100,
    web_changes=6,
)

Runner = Callable[[Sizes, float], Json]
# Above this much CPU used by other programs during a section, the document warns.
BUSY_CORES = 0.2

SECTIONS: dict[str, Runner] = {
    "submit_to_running_ms": lambda s, poll: latency.submit_to_running(s.submit_jobs, poll),
    "cancel_ms": lambda s, poll: latency.cancel(s.cancel_jobs, s.bulk_cancel_jobs, poll),
    "submissions_per_second": lambda s, poll: throughput.submissions_per_second(
        s.submit_rate_seconds, s.submit_rate_concurrency, poll
    ),
    "memory_per_running_job_mb": lambda s, poll: memory.memory_per_running_job(s.memory_jobs, poll),
    "memory_maximal_jobs_mb": lambda s, poll: memory.memory_with_maximal_jobs(poll),
    "getjob_ratio": lambda s, poll: throughput.getjob_ratio(
        s.getjob_seconds, s.getjob_rounds, s.getjob_concurrency, poll
    ),
    "pause_resume_ms": lambda s, poll: latency.pause_resume(s.pause_cycles, poll),
    "log_latency_ms": lambda s, poll: feeds.log_latency(s.log_lines),
    "log_throughput": lambda s, poll: feeds.log_throughput(s.log_megabytes, s.log_rounds),
    "status_event_latency_ms": lambda s, poll: feeds.event_latency(s.events),
    "watch_snapshot": lambda s, poll: feeds.snapshot_time(s.snapshot_jobs, s.snapshot_rounds),
    "log_fanout_ms": lambda s, poll: feeds.fanout(s.subscribers, s.subscriber_lines),
    "viewer": lambda s, poll: viewer.viewer(
        s.viewer_runs, s.viewer_checkpoints, s.viewer_queries, s.viewer_rewrites
    ),
    # Through the gateway: log lines as SSE, and state changes into the dashboard's DOM (Chromium).
    "web": lambda s, poll: web.web(s.web_lines, s.web_changes),
    # HTTP polls, not GetJob: its own 5 ms interval rather than the gRPC poll interval.
    "ray_bare_ms": lambda s, poll: ray_bare.ray_bare(s.ray_jobs),
    # squeue is a process per poll: its own 5 ms interval, not --poll-interval-ms.
    "slurm_bare": lambda s, poll: slurm_bare.slurm_bare(s.slurm_jobs),
    # Its own cluster and head; squeue/GET at 5 ms and WatchJobs events, not GetJob polls.
    "executors_ms": lambda s, poll: executors.executors(s.executor_jobs),
}
# Run only when named in --only: they need an engine installed (tools/engines.sh).
OPT_IN = {"slurm_bare"}


def _parse_only(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SECTIONS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Baton's benchmark: one JSON document on stdout, progress on stderr.",
    )
    p.add_argument("--quick", action="store_true", help="small counts, for a smoke test (under a minute)")
    p.add_argument(
        "--only",
        type=_parse_only,
        metavar="NAME[,NAME]",
        help=f"run only these sections: {', '.join(SECTIONS)} ({', '.join(sorted(OPT_IN))} only when named)",
    )
    p.add_argument(
        "--skip",
        type=_parse_only,
        default=[],
        metavar="NAME[,NAME]",
        help="leave these sections out (of the default run, or of --only)",
    )
    big = p.add_argument_group(
        "history at scale (issue 18)",
        "--scale runs one section, history_scale, instead of the others: a conductor over a "
        "generated history of ended jobs plus live ones, and a viewer over its tree (bench/scale.py)",
    )
    big.add_argument(
        "--scale", action="store_true", help="measure issue 18's figures (takes long: see --scale-jobs)"
    )
    big.add_argument(
        "--scale-jobs", type=_count, default=scale.ScaleSizes.jobs, help="ended jobs (default %(default)s)"
    )
    big.add_argument(
        "--scale-live",
        type=_count,
        default=scale.ScaleSizes.live,
        help="live jobs made through the API (default %(default)s)",
    )
    big.add_argument(
        "--scale-running",
        type=_count,
        default=scale.ScaleSizes.running,
        help="of the live jobs, how many run (--max-running); the rest wait QUEUED (default %(default)s)",
    )
    big.add_argument(
        "--scale-clients",
        type=_count,
        default=scale.ScaleSizes.clients,
        help="GetJob caller processes (default %(default)s)",
    )
    big.add_argument(
        "--scale-clear",
        type=_count,
        default=scale.ScaleSizes.clear,
        help="jobs ClearJobs deletes (default %(default)s; at most half)",
    )
    big.add_argument(
        "--scale-getjob-interval-ms",
        type=float,
        default=scale.ScaleSizes.getjob_interval_ms,
        help="each GetJob caller's pause between calls (default %(default)s)",
    )
    big.add_argument(
        "--scale-phase-limit",
        type=float,
        default=scale.ScaleSizes.phase_limit,
        help="seconds each phase may take before it is reported timed out (default %(default)s)",
    )
    big.add_argument(
        "--scale-dir",
        type=Path,
        help="where the conductor home goes (default: tmpfs when the history fits easily, else the temp dir)",
    )
    p.add_argument(
        "--poll-interval-ms",
        type=float,
        default=DEFAULT_POLL_INTERVAL * 1000,
        help="sleep between GetJob polls while waiting for a state (default %(default)s; 0: back to back)",
    )
    p.add_argument(
        "--conductor-flags",
        type=shlex.split,
        default=[],
        metavar="FLAGS",
        help="more flags for every `baton conductor` started, e.g. '--metrics-listen 127.0.0.1:0' "
        "(to measure what an option costs)",
    )
    return p


def _count(value: str) -> int:
    try:
        n = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return n


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _fsync_probe(samples: int = 20) -> Json:
    """How long a small write + fsync takes where the homes live: the floor under
    every durable acknowledgement (SQLite commits with synchronous=FULL)."""
    times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="baton-bench-fsync-") as d:
        path = os.path.join(d, "probe")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for i in range(samples):
                t0 = time.perf_counter()
                os.pwrite(fd, os.urandom(4096), i * 4096)
                os.fsync(fd)
                times.append((time.perf_counter() - t0) * 1000)
        finally:
            os.close(fd)
    return {
        "p50": round(percentile(times, 50), 3),
        "p95": round(percentile(times, 95), 3),
        "unit": "ms",
        "samples": samples,
    }


def environment(conductor_flags: list[str]) -> Json:
    tmp = tempfile.gettempdir()
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "baton_version": VERSION,
        "git": _git_commit(),
        "temp_dir": tmp,
        "temp_filesystem": procs.filesystem(tmp),
        "fsync_4k_ms": _fsync_probe(),
        "conductor": "`python -m baton.client.cli conductor --listen 127.0.0.1:0` subprocess, "
        "a fresh temporary home for each section",
        "conductor_flags": shlex.join(conductor_flags),
        "client": "this process: sync grpc client for latencies, grpc.aio client for throughput",
    }


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / CLK_TCK


def _our_cpu_seconds() -> float:
    """This process and every descendant it has reaped (conductors, bare servers, their jobs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _process_count() -> int:
    return sum(1 for entry in os.listdir("/proc") if entry.isdigit())


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwinds through every section's cleanup (``finally`` / context managers).
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    # Also when a section is interrupted: no home is left on the disk.
    atexit.register(procs.remove_left_behind)
    procs.CONDUCTOR_FLAGS[:] = args.conductor_flags
    sizes = QUICK if args.quick else FULL
    poll = max(0.0, args.poll_interval_ms / 1000)
    runs: dict[str, Callable[[], Json]]
    if args.scale:
        big = scale.ScaleSizes(
            jobs=args.scale_jobs,
            live=args.scale_live,
            running=args.scale_running,
            clients=args.scale_clients,
            clear=args.scale_clear,
            phase_limit=args.scale_phase_limit,
            getjob_interval_ms=args.scale_getjob_interval_ms,
            directory=args.scale_dir,
        )
        runs = {"history_scale": lambda: scale.scale(big)}
        mode, size_doc = "scale", {k: str(v) if isinstance(v, Path) else v for k, v in big.__dict__.items()}
    else:
        names = [n for n in args.only or [n for n in SECTIONS if n not in OPT_IN] if n not in args.skip]
        runs = {name: functools.partial(SECTIONS[name], sizes, poll) for name in names}
        mode, size_doc = "quick" if args.quick else "full", sizes.__dict__
    started = time.monotonic()
    doc: Json = {
        "benchmark": "baton",
        "mode": mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": environment(args.conductor_flags),
        "sizes": size_doc,
        "results": {},
    }
    errors = 0
    for name, run in runs.items():
        log(f"{name}: starting")
        t0 = time.monotonic()
        load0 = os.getloadavg()[0]
        procs0 = _process_count()
        busy0, ours0 = _busy_cpu_seconds(), _our_cpu_seconds()
        try:
            result = run()
        except Exception as err:
            errors += 1
            traceback.print_exc(file=sys.stderr)
            result = {"error": f"{type(err).__name__}: {err}"}
        else:
            # A section may keep the figures it got and still report a failure.
            errors += "error" in result
        elapsed = time.monotonic() - t0
        foreign = (_busy_cpu_seconds() - busy0) - (_our_cpu_seconds() - ours0)
        result["elapsed_s"] = round(elapsed, 2)
        result["machine"] = {
            "load_average_1m_at_start": round(load0, 2),
            "processes_at_start": procs0,
            # CPU that other programs on this machine used meanwhile: the figures
            # above are only as quiet as this is small.
            "other_programs_cpu_cores": round(max(0.0, foreign) / elapsed, 2),
        }
        doc["results"][name] = result
        log(f"{name}: done in {result['elapsed_s']} s")
    doc["targets"] = target_summary(doc["results"])
    busy = {
        name: r["machine"]["other_programs_cpu_cores"]
        for name, r in doc["results"].items()
        if r["machine"]["other_programs_cpu_cores"] > BUSY_CORES
    }
    doc["warnings"] = (
        [
            "other programs used CPU during these sections (cores, averaged over the section): "
            + ", ".join(f"{n} {c}" for n, c in busy.items())
            + f"; on this {os.cpu_count()}-core machine their figures are pessimistic"
        ]
        if busy
        else []
    )
    doc["elapsed_s"] = round(time.monotonic() - started, 2)
    json.dump(finite(doc), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    sys.stdout.flush()
    procs.remove_left_behind()
    return 1 if errors else 0
