"""Administration: removing checkpoints and deleting ended jobs in bulk.

Both go through the lifecycle's rules (a checkpoint stays while a run of its
job is active; a job is deleted as DeleteJob deletes it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from baton.common.checkpoint_refs import one_checkpoint
from baton.common.errors import FailedPrecondition, invalid_field
from baton.common.jobs import FINAL_STATES, JobFilter
from baton.common.layout import checkpoint_ref_problem
from baton.common.names import name_problem
from baton.common.safeopen import UnsafePath, refusal
from baton.conductor import checkpoints as ckpt
from baton.conductor.lifecycle import Lifecycle, state_name
from baton.conductor.registry import end_ns
from baton.v1 import job_pb2

# Jobs deleted per registry write by ClearJobs: what one page holds the event loop for.
CLEAR_BATCH = 100


class Admin:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lc = lifecycle

    async def delete_checkpoints(
        self, project: str, group: str, name: str, refs: list[str]
    ) -> tuple[int, int]:
        """Remove checkpoints of one job name, named by refs; all of them (every run's) when none."""
        for field_name, value in (("project", project), ("group", group), ("name", name)):
            problem = name_problem(value)
            if problem:
                raise invalid_field(field_name, problem)
        for i, ref in enumerate(refs):
            problem = checkpoint_ref_problem(ref)
            if problem:
                raise invalid_field(f"suffixes[{i}]", problem)
        key = (project, group, name)
        async with self._lc.name_lock(key):
            active = self._lc.active_runs(key)
            if active:
                raise FailedPrecondition(
                    f"{project}/{group}/{name} has a run that is {state_name(active[0].state)} "
                    f"({active[0].id}); its checkpoints stay until it ends or is cancelled",
                    reason="JOB_ACTIVE",
                    metadata={"job_id": active[0].id},
                )
            layout = self._lc.layout
            root = layout.checkpoints_dir
            base = layout.checkpoint_dir(project, group, name)
            try:
                # Refused before anything is looked up when the job's directory is
                # reached through a link: deletion never goes through one.
                await asyncio.to_thread(ckpt.existing, root, base)
                if not refs:
                    return await asyncio.to_thread(ckpt.delete_all, root, base)
                targets = []
                for i, ref in enumerate(refs):
                    found = await asyncio.to_thread(layout.find_checkpoints, project, group, name, ref)
                    job = f"{project}/{group}/{name}"
                    targets.append(one_checkpoint(found, ref, job, f"suffixes[{i}]", lambda f: f.ref).path)
                return await asyncio.to_thread(ckpt.delete_some, root, base, targets)
            except UnsafePath as exc:
                raise refusal(exc) from None

    async def clear_jobs(
        self,
        states: list[int],
        project: str,
        group: str,
        name: str,
        older_than: float,
        *,
        clear_all: bool = False,
        dry_run: bool = False,
    ) -> list[str]:
        """Delete ended jobs matching the filters, as DeleteJob does; returns their ids.

        With no filter at all, only when ``clear_all`` says so. With ``dry_run``,
        the ids that would be deleted, deleting nothing.
        """
        for i, st in enumerate(states):
            if st not in FINAL_STATES:
                raise invalid_field(
                    f"states[{i}]", f"{state_name(st)} is not an ended state (SUCCEEDED, FAILED, CANCELLED)"
                )
        if older_than < 0:
            raise invalid_field("older_than", "must not be negative")
        # An empty request is what a script with an unset variable sends: it must
        # not wipe every ended job unless it says it means to.
        if not (states or project or group or name or older_than > 0 or clear_all):
            raise invalid_field(
                "all",
                "no filter given: set states, project, group, name or older_than, "
                "or set all to clear every ended job",
                reason="CLEAR_FILTER_REQUIRED",
            )
        wanted = set(states) or set(FINAL_STATES)
        cutoff = int((time.time() - older_than) * 1e9)
        flt = JobFilter(project, group, name, tuple(sorted(wanted)))
        # Page by page through the indexes: O(k) for k jobs. By age, in the
        # order they ended (the end index), so the jobs too young are never read.
        pages = (
            self._lc.book.ended_through(flt, cutoff, CLEAR_BATCH)
            if older_than > 0
            else self._lc.book.all_pages(flt, batch=CLEAR_BATCH)
        )

        async def doomed() -> AsyncIterator[list[job_pb2.Job]]:
            async for page in pages:
                yield [
                    j
                    for j in page
                    if j.state in FINAL_STATES and (not j.HasField("end_time") or end_ns(j) <= cutoff)
                ]

        if dry_run:
            return [j.id async for page in doomed() for j in page]
        return await self._lc.delete_pages(doomed())
