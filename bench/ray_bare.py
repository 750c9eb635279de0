"""The bare Ray Jobs API's own latency, the floor under a Baton Ray executor.

    python -m bench.ray_bare [--jobs N] [--poll-interval-ms MS]

Starts a Ray head (tools/testclusters/ray.py: 127.0.0.1, 2 CPUs, 2 fake GPUs)
and, one job at a time, measures over plain HTTP (urllib, as the conductor will):

- submit -> RUNNING: POST /api/jobs/ sent to the first GET /api/jobs/{id}
  showing RUNNING (Ray starts a fresh supervisor worker process for each job);
- stop -> STOPPED: POST /api/jobs/{id}/stop sent to the first GET showing
  STOPPED, for ``exec sleep 600``, which obeys SIGTERM.

GET is polled every ``--poll-interval-ms`` (default 5 ms). One warm-up job is
not counted. Prints one JSON document on stdout (progress on stderr); the
benchmark runs the same measurement as its ``ray_bare_ms`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.report import Json, distribution, figure, finite, log, section
from tools.testclusters.ray import RayHead, call

DEFAULT_POLL_S = 0.005
DEFAULT_JOBS = 20
# `exec`: the shell Ray starts becomes sleep, so a stop leaves no orphan. With a
# plain `sleep 600` the sleep is orphaned when the shell dies of SIGTERM, Ray waits
# until that orphan is reaped, and on this machine (a Firecracker VM whose PID 1
# reaps late) stop -> STOPPED then takes about 1.5 s instead of about 0.1 s.
ENTRYPOINT = "exec sleep 600"


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


class _Poller:
    """GET /api/jobs/{id} until a status holds, counting the calls and their round trips."""

    def __init__(self, address: str, interval: float) -> None:
        self.address = address
        self.interval = interval
        self.round_trips_ms: list[float] = []

    def until(self, sid: str, done: Callable[[str], bool], timeout: float = 120.0) -> tuple[str, int]:
        polls = 0
        deadline = time.monotonic() + timeout
        while True:
            t0 = time.perf_counter()
            status, body = call(self.address, "GET", f"/api/jobs/{sid}")
            self.round_trips_ms.append(_ms(t0))
            polls += 1
            if status != 200:
                raise RuntimeError(f"GET /api/jobs/{sid}: {status} {body}")
            if done(body["status"]):
                return str(body["status"]), polls
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {sid} still {body['status']} after {timeout} s")
            time.sleep(self.interval)


@dataclass
class Sample:
    """One bare job: submit -> RUNNING and stop -> STOPPED, with the POSTs' round trips."""

    submission_id: str
    submit_ack_ms: float
    to_running_ms: float
    stop_ack_ms: float
    to_stopped_ms: float
    polls_running: int
    polls_stopped: int


def one_job(
    address: str,
    poller: _Poller,
    entrypoint: str = ENTRYPOINT,
    before_stop: Callable[[str], None] | None = None,
) -> Sample:
    """Submit ``entrypoint``, poll until RUNNING, ``before_stop(submission_id)`` if given
    (e.g. wait until the entrypoint has started), stop it, poll until STOPPED."""
    sid = f"bench-{uuid.uuid4().hex[:12]}"
    t0 = time.perf_counter()
    request = {"entrypoint": entrypoint, "submission_id": sid}
    status, body = call(address, "POST", "/api/jobs/", request)
    ack = _ms(t0)
    if status != 200:
        raise RuntimeError(f"POST /api/jobs/: {status} {body}")
    state, n_run = poller.until(sid, lambda s: s != "PENDING")
    running = _ms(t0)
    if state != "RUNNING":
        raise RuntimeError(f"job {sid} went {state} instead of RUNNING")
    if before_stop is not None:
        before_stop(sid)
    t1 = time.perf_counter()
    status, body = call(address, "POST", f"/api/jobs/{sid}/stop")
    sack = _ms(t1)
    if (status, body) != (200, {"stopped": True}):
        raise RuntimeError(f"POST /api/jobs/{sid}/stop: {status} {body}")
    state, n_stop = poller.until(sid, lambda s: s in ("STOPPED", "FAILED", "SUCCEEDED"))
    stopped = _ms(t1)
    if state != "STOPPED":
        raise RuntimeError(f"job {sid} went {state} instead of STOPPED")
    return Sample(sid, ack, running, sack, stopped, n_run, n_stop)


def measure(
    head: RayHead,
    jobs: int = DEFAULT_JOBS,
    poll_interval: float = DEFAULT_POLL_S,
    entrypoint: str = ENTRYPOINT,
) -> Json:
    """Submit -> RUNNING and stop -> STOPPED latency of ``jobs`` jobs (plus one warm-up) on ``head``."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    poller = _Poller(head.address, poll_interval)
    submit_ack: list[float] = []
    to_running: list[float] = []
    stop_ack: list[float] = []
    to_stopped: list[float] = []
    polls_running: list[int] = []
    polls_stopped: list[int] = []
    warmup = 1
    for i in range(warmup + jobs):
        sample = one_job(head.address, poller, entrypoint)
        running, stopped = sample.to_running_ms, sample.to_stopped_ms
        if i >= warmup:
            submit_ack.append(sample.submit_ack_ms)
            to_running.append(running)
            stop_ack.append(sample.stop_ack_ms)
            to_stopped.append(stopped)
            polls_running.append(sample.polls_running)
            polls_stopped.append(sample.polls_stopped)
        log(f"ray_bare: job {i + 1 - warmup}/{jobs}: RUNNING {running:.0f} ms, STOPPED {stopped:.0f} ms")
    figures: dict[str, Json] = {}
    figures.update(distribution("submit_to_running_", to_running, "POST /api/jobs/ -> GET shows RUNNING"))
    figures.update(distribution("stop_to_stopped_", to_stopped, "POST .../stop sent -> GET shows STOPPED"))
    figures.update(distribution("submit_ack_", submit_ack, "POST /api/jobs/ round trip", brief=True))
    figures.update(distribution("stop_ack_", stop_ack, "POST /api/jobs/{id}/stop round trip", brief=True))
    figures.update(
        distribution("get_", poller.round_trips_ms, "GET /api/jobs/{id} round trip while polling", brief=True)
    )
    figures["head_start_s"] = figure(
        head.start_seconds, "s", 1, "RayHead.start(): `ray start` run -> Jobs API and job agent answer"
    )
    return section(
        "The bare Ray Jobs REST API over urllib, one job at a time: submit -> RUNNING and stop -> STOPPED",
        figures,
        {
            "ray_address": head.address,
            "entrypoint": entrypoint,
            "jobs": jobs,
            "warmup_jobs": warmup,
            "poll_interval_ms": poll_interval * 1000,
            "polls_to_running_mean": round(sum(polls_running) / len(polls_running), 2),
            "polls_to_stopped_mean": round(sum(polls_stopped) / len(polls_stopped), 2),
            "head": f"RayHead(num_cpus={head.num_cpus}, num_gpus={head.num_gpus}) on 127.0.0.1",
            "cpu_accounting": "the head's GCS, raylet, dashboard and workers are not reaped by this "
            "process, so their CPU counts under other_programs_cpu_cores",
        },
    )


def ray_bare(
    jobs: int = DEFAULT_JOBS, poll_interval: float = DEFAULT_POLL_S, entrypoint: str = ENTRYPOINT
) -> Json:
    """Start a head, measure, stop the head."""
    log("ray_bare: starting a Ray head")
    with RayHead() as head:
        log(f"ray_bare: head at {head.address} up in {head.start_seconds:.1f} s")
        return measure(head, jobs, poll_interval, entrypoint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ray_bare", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="measured jobs (default %(default)s)")
    p.add_argument(
        "--poll-interval-ms",
        type=float,
        default=DEFAULT_POLL_S * 1000,
        help="sleep between GET polls (default %(default)s)",
    )
    p.add_argument("--entrypoint", default=ENTRYPOINT, help="the job's command (default %(default)r)")
    args = p.parse_args(argv)
    doc: Any = ray_bare(max(1, args.jobs), max(0.0, args.poll_interval_ms / 1000), args.entrypoint)
    json.dump(finite(doc), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
