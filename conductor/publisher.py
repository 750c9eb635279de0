"""The publisher: writes each job's status.json, off the event loop.

The registry is the source of truth; status.json is its published copy for the
viewer and any other reader. The lifecycle hands a version here only once the
registry holds it. Writes for one job coalesce (only the newest version
matters), happen in order, and are atomic (temp file + rename). A write that
fails (a full disk) is tried again, with the newest version, until it succeeds.
"""

from __future__ import annotations

import threading
from pathlib import Path

import structlog

from baton.common.jobfile import write_job
from baton.common.layout import STATUS_FILE
from baton.common.safeopen import UnsafePath, dir_without_links, remove_beneath
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)
RETRY_MAX_SECONDS = 2.0


class Publisher:
    def __init__(self, status_root: Path) -> None:
        # Run directories are removed only beneath this, through no link.
        self._status_root = status_root
        # job id -> (run dir, newest Job to write, or None to remove the run dir)
        self._pending: dict[str, tuple[Path, job_pb2.Job | None]] = {}
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="status-publisher", daemon=True)
        self._thread.start()

    def publish(self, job: job_pb2.Job) -> None:
        """Queue ``job`` to be written to <run_dir>/status.json."""
        self._put(job.id, Path(job.run_dir), job)

    def _remove(self, run_dir: Path) -> None:
        """Delete a run directory, never through a link: a project, group or
        name directory that is a link out of the tree deletes nothing."""
        try:
            with dir_without_links(self._status_root, run_dir.parent) as pfd:
                remove_beneath(pfd, run_dir.name)
        except FileNotFoundError:
            pass
        except UnsafePath as exc:
            log.warning("run_dir_not_removed", run_dir=str(run_dir), why=str(exc))

    def remove(self, job_id: str, run_dir: str) -> None:
        """Queue the removal of a deleted job's run directory."""
        self._put(job_id, Path(run_dir), None)

    def _put(self, job_id: str, run_dir: Path, job: job_pb2.Job | None) -> None:
        with self._cond:
            self._pending[job_id] = (run_dir, job)
            self._idle.clear()
            self._cond.notify()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                if backoff:
                    # Something failed: wait a little before writing it again.
                    self._cond.wait(backoff)
                while not self._pending and not self._stopping:
                    self._idle.set()
                    self._cond.wait()
                if not self._pending and self._stopping:
                    self._idle.set()
                    return
                batch, self._pending = self._pending, {}
            failed = {}
            for job_id, (run_dir, job) in batch.items():
                try:
                    if job is None:
                        self._remove(run_dir)
                    else:
                        write_job(run_dir / STATUS_FILE, job)
                except OSError as exc:
                    if not backoff:
                        log.error("status_write_failed", run_dir=str(run_dir), error=exc.strerror)
                    failed[job_id] = (run_dir, job)
            if not failed:
                backoff = 0.0
                continue
            with self._cond:
                for job_id, item in failed.items():
                    # A newer version queued meanwhile replaces the one that failed.
                    self._pending.setdefault(job_id, item)
                if self._stopping:
                    self._pending.clear()
            backoff = min(RETRY_MAX_SECONDS, max(0.05, backoff * 2))

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written (for shutdown and tests)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
