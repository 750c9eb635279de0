"""Issue 5's figures: the viewer's cold index, memory, list latency and freshness.

A generated tree (``tests.treegen``) is written to tmpfs when there is one, so
the figures are about the viewer and not the disk; the viewer runs as its own
process (``baton viewer``) and its resident memory is read from /proc.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from baton.common.jobfile import job_from_json, job_to_json, write_atomic
from baton.v1 import job_pb2, viewer_pb2_grpc
from baton.v1 import viewer_pb2 as vpb
from bench.procs import REPO
from bench.report import Json, Target, distribution, figure, log, section


def _tree_root() -> Path:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="baton-bench-viewer-", dir=base))


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class _Viewer:
    def __init__(self, home: Path, log_path: Path, timeout: float = 300.0, *args: str) -> None:
        self.log_path = log_path
        self.t0 = time.perf_counter()
        # Without a snapshot named, a cold scan every time (and none written under ~/.cache).
        args = args or ("--index-cache", "off")
        with open(log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "baton.client.cli", "viewer",
                 "--listen", "127.0.0.1:0", "--home", str(home), *args],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=REPO,
            )  # fmt: skip
        self.address = ""
        self.index_seconds = float("nan")
        deadline = time.monotonic() + timeout
        while not self.address:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"viewer did not start within {timeout:.0f} s: {log_path.read_text()[-2000:]}"
                )
            for line in log_path.read_text(errors="replace").splitlines():
                event = _json(line)
                if event.get("event") == "index_ready":
                    self.index_seconds = float(event["seconds"])
                if event.get("event") == "viewer_serving":
                    self.address = str(event["address"])
            time.sleep(0.01)
        self.ready_seconds = time.perf_counter() - self.t0
        self.channel = grpc.insecure_channel(self.address)
        self.stub = viewer_pb2_grpc.ViewerStub(self.channel)

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """The first log event named ``name``, waited for up to ``timeout`` seconds; None if none came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self.log_path.read_text(errors="replace").splitlines():
                event = _json(line)
                if event.get("event") == name:
                    return event
            time.sleep(0.2)
        return None

    def stop(self) -> None:
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _json(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def viewer(runs: int, checkpoints: int, queries: int, rewrites: int) -> Json:
    from tests.treegen import generate

    root = _tree_root()
    try:
        t0 = time.perf_counter()
        manifest = generate(root / "home", runs=runs, checkpoints=checkpoints, seed=7)
        log(f"viewer: wrote {runs} runs and {checkpoints} checkpoints in {time.perf_counter() - t0:.1f} s")
        v = _Viewer(root / "home", root / "viewer.log")
        try:
            rss = _rss_mb(v.proc.pid)
            figures = {
                "cold_index_s": figure(
                    v.index_seconds,
                    "s",
                    1,
                    f"full scan to a ready index of {runs} runs and "
                    f"{checkpoints} checkpoints (the viewer's own index_ready time)",
                    Target("<", 5.0, "s", "issue 5"),
                ),
                "start_to_serving_s": figure(
                    v.ready_seconds, "s", 1, "process start to serving, interpreter start-up included"
                ),
                "resident_memory_mb": figure(
                    rss, "MB", 1, "viewer RSS once serving", Target("<", 300.0, "MB", "issue 5")
                ),
            }
            stats = v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=60)
            figures["inotify_watches"] = figure(
                stats.watched_directories,
                "watches",
                1,
                "directories the viewer watches once serving: down to the job directories, and live runs'",
                Target("<=", 50_000.0, "watches", "issue 18 (at a million runs)"),
            )
            figures.update(_list_latency(v, queries))
            figures.update(_freshness(v, manifest.status_dir, rewrites))
        finally:
            v.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return section(
        f"A viewer process over a generated tree of {runs} runs and {checkpoints} checkpoints on "
        "tmpfs, inotify mode.",
        figures,
        {"tree": str(root)},
    )


def _list_latency(v: _Viewer, queries: int) -> Json:
    projects = [p.project for p in v.stub.ListProjects(vpb.ListProjectsRequest(page_size=1000)).projects]
    states = [[6], [7], [2], [6, 7, 8], []]
    rng = random.Random(5)
    latencies = []
    for _ in range(queries):
        request = vpb.ViewerListJobsRequest(
            project=rng.choice(projects),
            states=rng.choice(states),  # type: ignore[arg-type]
            page_size=100,
        )
        t0 = time.perf_counter()
        v.stub.ListJobs(request)
        latencies.append((time.perf_counter() - t0) * 1000)
    log(f"viewer: {queries} filtered ListJobs calls")
    return distribution(
        "list_jobs_",
        latencies,
        "ListJobs (filtered by project and states, page of 100) round trip",
        p50_target=Target("<", 5.0, "ms", "issue 5"),
    )


def _freshness(v: _Viewer, status_dir: Path, rewrites: int) -> Json:
    runs = sorted(status_dir.glob("*/*/*/*/status.json"))
    rng = random.Random(9)
    delays = []
    # Runs that have not ended, each ended once: the viewer watches live runs'
    # directories only (an ended run's rewrite shows at the reconciliation scan).
    ended = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
    live = [path for path in runs if json.loads(path.read_bytes()).get("state") not in ended]
    for i, path in enumerate(rng.sample(live, min(rewrites, len(live)))):
        job = job_from_json(path.read_bytes())
        job.reason = f"bench rewrite {i}"
        failed, succeeded = job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_SUCCEEDED
        job.state = failed if job.state != failed else succeeded
        project, group, name, run_id = path.parts[-5:-1]
        request = vpb.ViewerListJobsRequest(
            project=project, group=group, name=name, states=[job.state], page_size=1000
        )
        t0 = time.perf_counter()
        write_atomic(path, job_to_json(job).encode())
        deadline = t0 + 10
        while not any(j.run_id == run_id and j.reason == job.reason for j in v.stub.ListJobs(request).jobs):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"a rewritten status.json did not show within 10 s: {path}")
            time.sleep(0.001)
        delays.append((time.perf_counter() - t0) * 1000)
    log(f"viewer: {rewrites} rewrites seen")
    return distribution(
        "freshness_",
        delays,
        "a live run's status.json rewritten (atomic rename) to the change visible in ListJobs",
        p95_target=Target("<", 100.0, "ms", "issue 5"),
    )
