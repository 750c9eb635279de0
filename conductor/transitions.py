"""The one table of allowed state changes, checked on every change to a job.

A change that keeps the state (a new step, a heartbeat, an external id) is
always allowed; a change of state must be in ``ALLOWED``. Every non-final
state may end FAILED, because an internal error fails the job it hit.
"""

from __future__ import annotations

from baton.v1 import job_pb2

S = job_pb2

QUEUED = S.JOB_STATE_QUEUED
RUNNING = S.JOB_STATE_RUNNING
PAUSING = S.JOB_STATE_PAUSING
PAUSED = S.JOB_STATE_PAUSED
CANCELLING = S.JOB_STATE_CANCELLING
SUCCEEDED = S.JOB_STATE_SUCCEEDED
FAILED = S.JOB_STATE_FAILED
CANCELLED = S.JOB_STATE_CANCELLED
NEW = S.JOB_STATE_UNSPECIFIED  # a job not yet in the registry

ALLOWED: dict[int, frozenset[int]] = {
    # Submitted.
    NEW: frozenset({QUEUED}),
    # A slot is free; cancelled before it started; could not be started.
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset(
        {
            PAUSING,  # a checkpoint pause asked the job to save and exit
            PAUSED,  # suspended in place; or paused between attempts; or restarted between them
            CANCELLING,  # cancel signalled a live process
            CANCELLED,  # cancelled between attempts: nothing to signal
            SUCCEEDED,
            FAILED,
            QUEUED,  # could not start for want of storage: it waits for space
        }
    ),
    # The job saved and exited (with any code), or was killed at the grace.
    PAUSING: frozenset({PAUSED, CANCELLING, FAILED}),
    PAUSED: frozenset(
        {
            RUNNING,  # thawed, or started again from its checkpoint
            QUEUED,  # resumed with no free slot
            CANCELLING,  # cancelled while suspended: thawed and signalled
            CANCELLED,  # cancelled with nothing running
            SUCCEEDED,  # resumed after its last step had already finished
            FAILED,
        }
    ),
    CANCELLING: frozenset({CANCELLED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def allowed(before: int, after: int) -> bool:
    """Whether a job may go from ``before`` to ``after`` (the same state always may)."""
    if before == after:
        return bool(ALLOWED.get(before)) and before != NEW
    return after in ALLOWED.get(before, frozenset())


def table() -> list[tuple[str, str]]:
    """Every allowed change, by state name (for documentation and tests)."""
    return [
        (S.JobState.Name(a).removeprefix("JOB_STATE_"), S.JobState.Name(b).removeprefix("JOB_STATE_"))
        for a, targets in ALLOWED.items()
        for b in sorted(targets)
    ]
