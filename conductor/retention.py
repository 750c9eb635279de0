"""Retention: ended jobs deleted in the background once they are old or too many.

``--retain-ended DURATION`` deletes jobs that ended longer ago than that;
``--retain-max N`` keeps the N that ended last and deletes the others. Both
delete as DeleteJob does (the record, then the run directory in the
background), in bounded batches, never a live job; a run's checkpoints go too
only with ``--retain-checkpoints=false``. Each pass is logged, and the count
is kept for GetConductorInfo.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from baton.common.jobs import FINAL_STATES

if TYPE_CHECKING:
    from baton.conductor.lifecycle import Lifecycle

log = structlog.get_logger(__name__)

# Jobs deleted per registry write: small enough that one batch holds the event loop a few ms.
BATCH = 200


@dataclass(frozen=True)
class RetentionPolicy:
    # Seconds after its end that an ended job is deleted (None: never for its age).
    ended_seconds: float | None = None
    # How many ended jobs are kept at most (None: no bound).
    max_ended: int | None = None
    # Keep a deleted job's checkpoints (the default): they are the work, not the record.
    keep_checkpoints: bool = True
    # Seconds between passes.
    interval: float = 60.0

    @property
    def active(self) -> bool:
        return self.ended_seconds is not None or self.max_ended is not None


async def retain(lc: Lifecycle, policy: RetentionPolicy) -> int:
    """One pass: delete every ended job the policy no longer keeps; how many went."""
    deleted = 0
    if policy.ended_seconds is not None:
        cutoff = int((time.time() - policy.ended_seconds) * 1e9)
        while True:
            batch = await lc.oldest_ended(BATCH, ended_before_ns=cutoff)
            if not batch:
                break
            done = await lc.delete_ended(batch, forget=True, checkpoints=not policy.keep_checkpoints)
            deleted += len(done)
            if not done:
                break
    if policy.max_ended is not None:
        while True:
            excess = sum(n for s, n in lc.book.counts().items() if s in FINAL_STATES) - policy.max_ended
            if excess <= 0:
                break
            batch = await lc.oldest_ended(min(excess, BATCH))
            if not batch:
                break
            done = await lc.delete_ended(batch, forget=True, checkpoints=not policy.keep_checkpoints)
            deleted += len(done)
            if not done:
                break
    if deleted:
        log.info(
            "retention_deleted",
            count=deleted,
            retain_ended_seconds=policy.ended_seconds,
            retain_max=policy.max_ended,
            checkpoints_kept=policy.keep_checkpoints,
        )
    return deleted
