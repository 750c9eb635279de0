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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from baton.common.jobs import FINAL_STATES, JobFilter
from baton.v1 import job_pb2

if TYPE_CHECKING:
    from baton.conductor.lifecycle import Lifecycle

log = structlog.get_logger(__name__)

# Jobs deleted per registry write: small enough that one batch holds the event loop a few ms.
BATCH = 100
# Later than any job ended.
_LAST_NS = 2**63 - 1


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
    checkpoints = not policy.keep_checkpoints
    everything = JobFilter()
    if policy.ended_seconds is not None:
        cutoff = int((time.time() - policy.ended_seconds) * 1e9)
        # Those that ended before the cutoff (at it: not yet), oldest first.
        pages = lc.book.ended_through(everything, cutoff - 1, BATCH)
        deleted += len(await lc.delete_pages(pages, checkpoints=checkpoints))
    if policy.max_ended is not None:
        excess = sum(n for s, n in lc.book.counts().items() if s in FINAL_STATES) - policy.max_ended
        if excess > 0:
            pages = lc.book.ended_through(everything, _LAST_NS, BATCH)
            deleted += len(await lc.delete_pages(_first(pages, excess), checkpoints=checkpoints))
    if deleted:
        log.info(
            "retention_deleted",
            count=deleted,
            retain_ended_seconds=policy.ended_seconds,
            retain_max=policy.max_ended,
            checkpoints_kept=policy.keep_checkpoints,
        )
    return deleted


async def _first(pages: AsyncIterator[list[job_pb2.Job]], count: int) -> AsyncIterator[list[job_pb2.Job]]:
    """The first ``count`` jobs of ``pages``, in pages still."""
    async for page in pages:
        if count <= 0:
            return
        yield page[:count]
        count -= len(page)
