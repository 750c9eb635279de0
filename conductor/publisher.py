"""The publisher: writes each job's status.json, off the event loop.

The registry is the source of truth; status.json is its published copy for the
viewer and any other reader. The lifecycle hands a version here only once the
registry holds it. Writes for one job coalesce (only the newest version
matters), happen in order, and are atomic (temp file + rename). A write that
fails (a full disk) is tried again, with the newest version, until it succeeds.

The writing itself (the JSON, the file system calls, removing run
directories) is done by a child process, ``conductor.statuswriter``, a batch
at a time, so it never holds the GIL the event loop serves calls with; this
thread keeps the rules and does the work itself when that process is gone.

The publisher also says how far it has got: every version up to revision
``published`` is on disk (``on_published``). The registry keeps that mark, so
a restarted conductor writes again only the status files changed after it,
never every one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from baton.conductor.statuswriter import UNSAFE, StatusWriter
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)
RETRY_MAX_SECONDS = 2.0
# Writes handed to the status writer at a time.
WRITE_CHUNK = 512

# (directory, newest Job to write there, or None to remove the directory; its tree's root; revision)
_Item = tuple[str, job_pb2.Job | None, Path, int]


class Publisher:
    def __init__(
        self,
        status_root: Path,
        *,
        checkpoints_root: Path | None = None,
        on_published: Callable[[int], None] | None = None,
    ) -> None:
        # Run directories are removed only beneath this, through no link.
        self._status_root = status_root
        self._checkpoints_root = checkpoints_root
        self._on_published = on_published
        # key (job id, or "checkpoints:" + job id) -> what to do
        self._pending: dict[str, _Item] = {}
        self._cond = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        # The highest revision handed here, and what is being written now.
        self._handed = 0
        self._writing: list[int] = []
        self.published = 0
        # Does the writing and removing, in a child process (``conductor.statuswriter``).
        self._writer = StatusWriter()
        self._thread = threading.Thread(target=self._run, name="status-publisher", daemon=True)
        self._thread.start()

    def set_published(self, revision: int) -> None:
        """Where a restarted conductor found the mark: nothing before it needs writing."""
        with self._cond:
            self._handed = max(self._handed, revision)
            self.published = max(self.published, revision)

    def set_on_published(self, callback: Callable[[int], None]) -> None:
        self._on_published = callback

    def publish(self, job: job_pb2.Job) -> None:
        """Queue ``job`` to be written to <run_dir>/status.json."""
        self._put(job.id, (job.run_dir, job, self._status_root, job.revision))

    def remove(self, job_id: str, run_dir: str, revision: int = 0) -> None:
        """Queue the removal of a deleted job's run directory."""
        self._put(job_id, (run_dir, None, self._status_root, revision))

    def remove_checkpoints(self, job_id: str, checkpoint_dir: str, revision: int = 0) -> None:
        """Queue the removal of a deleted run's own checkpoint directory."""
        if self._checkpoints_root is None or not checkpoint_dir:
            return
        self._put("checkpoints:" + job_id, (checkpoint_dir, None, self._checkpoints_root, revision))

    def remove_records(self, job_id: str, path: str, revision: int = 0) -> None:
        """Queue the removal of an ended job's launch records (a directory under its run directory)."""
        self._put("records:" + job_id, (path, None, self._status_root, revision))

    def remove_runs(self, jobs: list[job_pb2.Job], *, checkpoints: bool = False) -> None:
        """``remove`` each deleted job's run directory (with ``checkpoints``, its
        own checkpoint directory too), all in one hand-over: a bulk deletion pays
        for the lock and the wake-up once, not once a job."""
        if not jobs:
            return
        ckpt_root = self._checkpoints_root if checkpoints else None
        with self._cond:
            for job in jobs:
                self._pending[job.id] = (job.run_dir, None, self._status_root, job.revision)
                if ckpt_root is not None and job.checkpoint_dir:
                    own = (job.checkpoint_dir, None, ckpt_root, job.revision)
                    self._pending["checkpoints:" + job.id] = own
            self._handed = max(self._handed, max(job.revision for job in jobs))
            self._idle.clear()
            self._cond.notify()

    def _put(self, key: str, item: _Item) -> None:
        with self._cond:
            self._pending[key] = item
            self._handed = max(self._handed, item[3])
            self._idle.clear()
            self._cond.notify()

    def _mark(self) -> int:
        """Every revision below the lowest still pending is written. Called with the lock held."""
        low = min((item[3] for item in self._pending.values()), default=None)
        if self._writing:
            first = min(self._writing)
            low = first if low is None else min(low, first)
        return self._handed if low is None else low - 1

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._cond:
                mark = self._mark()
                if mark > self.published:
                    self.published = mark
                    if self._on_published is not None:
                        self._on_published(mark)
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
                self._writing = [item[3] for item in batch.values()]
            failed = {}
            keys = list(batch)
            # In chunks: a restart may hand over many thousands at once, and each
            # chunk is held encoded, twice, while it crosses to the writer.
            for start in range(0, len(keys), WRITE_CHUNK):
                items = [
                    (key, path, None if job is None else job.SerializeToString(), str(root))
                    for key in keys[start : start + WRITE_CHUNK]
                    for path, job, root, _ in (batch[key],)
                ]
                for key, kind, what in self._writer.run(items):
                    path = batch[key][0]
                    if kind == UNSAFE:
                        log.warning("run_dir_not_removed", run_dir=path, why=what)
                        continue
                    if not backoff:
                        log.error("status_write_failed", run_dir=path, error=what)
                    failed[key] = batch[key]
            with self._cond:
                self._writing = []
                for key, item in failed.items():
                    # A newer version queued meanwhile replaces the one that failed.
                    self._pending.setdefault(key, item)
                if self._stopping and failed:
                    self._pending.clear()
            backoff = min(RETRY_MAX_SECONDS, max(0.05, backoff * 2)) if failed else 0.0

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written (for shutdown and tests)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        self._writer.close()
