"""Looking at a job without changing it: its processes now, and one step's output."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from baton.common.errors import invalid_field
from baton.common.layout import LOG_FILE
from baton.common.safeopen import UnsafePath, refusal
from baton.common.tailer import offset_of_last_lines, read_range
from baton.conductor.executors.base import ProcessHealth, Unsupported
from baton.conductor.lifecycle import Lifecycle, log_size, state_name
from baton.v1 import job_pb2

S = job_pb2


@dataclass(frozen=True)
class JobHealth:
    job: job_pb2.Job
    process: ProcessHealth | None
    detail: str
    last_output: float | None


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return None


class Inspector:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lc = lifecycle

    async def health(self, job_id: str) -> JobHealth:
        """The job's processes now, from its executor, and when it last wrote output."""
        job = await self._lc.get(job_id)
        handle, retry_pending = self._lc.launch_of(job_id)
        last_output = await asyncio.to_thread(_mtime, os.path.join(job.run_dir, LOG_FILE))
        if handle is None or not handle.external_id:
            detail = {
                S.JOB_STATE_QUEUED: "queued: not started yet",
                S.JOB_STATE_PAUSED: "paused with a checkpoint: no process until it is resumed",
                S.JOB_STATE_RUNNING: "between attempts: the next one starts soon"
                if retry_pending
                else "starting: its process is being launched",
            }.get(job.state, f"{state_name(job.state).lower()}: the job has no process")
            return JobHealth(job, None, detail, last_output)
        try:
            process = await self._lc.executor(handle.executor).health(handle)
        except Unsupported as exc:
            return JobHealth(job, None, str(exc), last_output)
        return JobHealth(job, process, "", last_output)

    async def job_step(self, job_id: str, step: int, tail_lines: int) -> tuple[job_pb2.StepStatus, bytes]:
        """One step's status and the last ``tail_lines`` lines of its own output."""
        job = await self._lc.get(job_id)
        if step < 1 or step > len(job.steps):
            raise invalid_field("step", f"must be between 1 and {len(job.steps)} (the step count)")
        if tail_lines < 0:
            raise invalid_field("tail_lines", "must not be negative")
        entry = job.steps[step - 1]
        tail = b""
        if tail_lines and entry.state not in (S.STEP_STATE_PENDING, S.STEP_STATE_SKIPPED):
            path = Path(job.run_dir) / LOG_FILE
            end = entry.log_end if entry.log_end else None
            size = await asyncio.to_thread(log_size, job.run_dir)
            root = self._lc.layout.status_dir
            try:
                start = await asyncio.to_thread(
                    offset_of_last_lines, path, root, tail_lines, entry.log_start, end
                )
                stop = end if end is not None else size
                tail = await asyncio.to_thread(read_range, path, root, start, stop)
            except UnsafePath as exc:
                raise refusal(exc) from None
        return entry, tail
