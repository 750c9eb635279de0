"""Per-step bookkeeping on a Job: one StepStatus per step of its spec.

Pure functions on the Job message; the lifecycle decides when to call them.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from baton.conductor.executors.base import ExitStatus
from baton.v1 import job_pb2

S = job_pb2


def init_steps(job: job_pb2.Job, names: list[str], start_step: int) -> None:
    """One PENDING entry per step; steps before ``start_step`` are SKIPPED."""
    del job.steps[:]
    for i, name in enumerate(names, start=1):
        state = S.STEP_STATE_SKIPPED if i < start_step else S.STEP_STATE_PENDING
        job.steps.add(index=i, name=name, state=state)


def step_started(
    job: job_pb2.Job, step: int, attempt: int, log_size: int, now: timestamp_pb2.Timestamp
) -> None:
    entry = job.steps[step - 1]
    if entry.state in (S.STEP_STATE_PENDING, S.STEP_STATE_SKIPPED) or not entry.HasField("start_time"):
        entry.start_time.CopyFrom(now)
        entry.log_start = log_size
    entry.state = S.STEP_STATE_RUNNING
    entry.attempts = max(entry.attempts, attempt)
    entry.log_end = 0
    entry.reason = ""
    entry.ClearField("end_time")
    entry.ClearField("exit_code")
    entry.ClearField("signal")


def step_ended(
    job: job_pb2.Job,
    step: int,
    state: int,
    status: ExitStatus | None,
    log_size: int,
    now: timestamp_pb2.Timestamp,
    reason: str = "",
) -> None:
    entry = job.steps[step - 1]
    entry.state = state  # type: ignore[assignment]
    entry.end_time.CopyFrom(now)
    entry.log_end = max(log_size, entry.log_start)
    entry.reason = reason
    if status is not None and status.exit_code is not None:
        entry.exit_code = status.exit_code
    if status is not None and status.signal is not None:
        entry.signal = status.signal
