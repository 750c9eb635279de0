"""Run directories that the registry does not know, found at start-up.

A status.json is written only once the registry holds its job, but one can
still outlive its record: an older conductor published before writing, or the
registry was restored from a backup. Such a run would show as QUEUED or
RUNNING forever, though no conductor will ever move it. At start the conductor
looks through its status tree, in the background, for runs it wrote (their id,
run id and directory name agree, and they carry a revision) that name a state
that is not final and an id the registry does not hold, and marks each one
FAILED, saying why. The run's directory and log stay where they are, for
whoever wants to know what happened; runs written by other programs, and
runs already ended, are left alone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Container
from pathlib import Path

import structlog

from baton.common.jobfile import MAX_STATUS_BYTES, job_from_json, write_job
from baton.common.jobs import FINAL_STATES
from baton.common.layout import STATUS_FILE
from baton.common.safeopen import UnsafePath, read_beneath
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)

ORPHAN_REASON = (
    "orphaned: the conductor has no record of this run (it was never durably accepted, "
    "or its record was lost); nothing runs it"
)


def _dirs(path: Path) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def mark_orphans(
    status_dir: Path,
    known: Container[str],
    known_under: Callable[[str, str, str], Container[str]],
    before: float,
) -> list[Path]:
    """Mark unknown live runs made before ``before`` as FAILED; returns their directories (blocking).

    ``known_under(project, group, name)`` gives the ids recorded for one job
    directory in one registry read, so a run is looked up alone only when
    that read did not name it (a run made since, or one that is not ours).
    ``known`` is asked for each of those, so a job submitted while this runs
    is never taken for an orphan; neither is any run made since ``before``.
    """
    marked = []
    for project in _dirs(status_dir):
        for group in _dirs(status_dir / project):
            for name in _dirs(status_dir / project / group):
                job_dir = status_dir / project / group / name
                runs = _dirs(job_dir)
                if not runs:
                    continue
                recorded = known_under(project, group, name)
                for run in runs:
                    if run in recorded or run in known:
                        continue  # the common case: no file read
                    if _mark(status_dir, job_dir / run, known, before):
                        marked.append(job_dir / run)
    return marked


def _mark(status_dir: Path, run: Path, known: Container[str], before: float) -> bool:
    path = run / STATUS_FILE
    try:
        # Bounded, and never through a link out of the tree or into a FIFO
        # (which would hold this thread for good): any program may write here.
        job = job_from_json(read_beneath(status_dir, path, MAX_STATUS_BYTES))
    except (OSError, ValueError, UnsafePath):
        return False
    ours = job.id == job.run_id == run.name and job.revision > 0
    live = job.state not in FINAL_STATES and job.state != job_pb2.JOB_STATE_UNSPECIFIED
    if not ours or not live or job.id in known or job.create_time.ToNanoseconds() >= before * 1e9:
        return False
    was = job_pb2.JobState.Name(job.state)
    job.state = job_pb2.JOB_STATE_FAILED
    job.reason = ORPHAN_REASON
    job.end_time.FromNanoseconds(time.time_ns())
    job.update_time.CopyFrom(job.end_time)
    try:
        write_job(path, job)
    except OSError as exc:
        log.error("orphan_mark_failed", run_dir=str(run), error=exc.strerror)
        return False
    log.warning("orphaned_run_marked", run_dir=str(run), job_id=job.id, was=was)
    return True
