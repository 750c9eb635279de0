"""Job specs the benchmark submits, and waiting on a job's state by polling GetJob.

A state change is observed by polling GetJob with the sync client, every
``interval`` seconds (0 means back to back), so the figures do not depend on
the WatchJobs feed. The poll adds its own granularity to every latency: about
one GetJob round trip plus the interval; the polls per sample are reported
beside the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2

S = job_pb2
DEFAULT_POLL_INTERVAL = 0.0002


def spec_yaml(name: str, command: str, **fields: Any) -> str:
    return yaml.safe_dump({"name": name, "project": "bench", "command": command, **fields}, sort_keys=False)


def submit_request(name: str, command: str, **fields: Any) -> pb.SubmitJobRequest:
    return pb.SubmitJobRequest(spec_yaml=spec_yaml(name, command, **fields))


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def state_is(*states: int) -> Callable[[job_pb2.Job], bool]:
    wanted = frozenset(states)
    return lambda job: job.state in wanted


def running_with_process(job: job_pb2.Job) -> bool:
    """RUNNING and the executor has reported the launched process (its pid)."""
    return job.state == S.JOB_STATE_RUNNING and bool(job.external_id)


class Unexpected(RuntimeError):
    """A job reached a state the measurement did not expect (e.g. FAILED)."""


@dataclass
class Seen:
    """When a condition was first observed, counted from the call that caused it."""

    ms: float
    job: job_pb2.Job
    polls: int


def wait_for(
    stub: conductor_pb2_grpc.ConductorStub,
    job_id: str,
    pred: Callable[[job_pb2.Job], bool],
    t0: float,
    *,
    first: job_pb2.Job | None = None,
    interval: float = DEFAULT_POLL_INTERVAL,
    timeout: float = 30.0,
    fail_on: frozenset[int] = frozenset({S.JOB_STATE_FAILED, S.JOB_STATE_SUCCEEDED}),
) -> Seen:
    """Poll GetJob until ``pred`` holds; ``first`` (e.g. the RPC's answer) counts as a poll."""
    req = pb.GetJobRequest(job_id=job_id)
    polls = 0
    job = first
    while True:
        if job is not None:
            if pred(job):
                return Seen(ms_since(t0), job, polls)
            if job.state in fail_on:
                raise Unexpected(
                    f"job {job_id} is {S.JobState.Name(job.state)} ({job.reason!r}) while waiting"
                )
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"job {job_id} did not reach the awaited state within {timeout} s: {job}")
        if interval > 0 and job is not None:
            time.sleep(interval)
        job = stub.GetJob(req, timeout=10)
        polls += 1


def timestamp_ms(ts: Any) -> float:
    return float(ts.seconds) * 1000.0 + ts.nanos / 1e6
