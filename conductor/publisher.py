"""The publisher: writes each job's status.json, off the event loop.

The registry is the source of truth; status.json is its published copy for the
viewer and any other reader. The lifecycle hands a version here only once the
registry holds it. Writes for one job coalesce (only the newest version
matters), happen in order, and are atomic (temp file + rename). A write that
fails (a full disk) is tried again, with the newest version, until it succeeds.

Run directories of deleted jobs are removed here too, in two steps: each is
set aside at once (renamed to a hidden name, so no reader finds it), and the
ones set aside are gathered and removed by a child process at a low CPU
priority (``conductor.sweeper``), so a bulk deletion's file system work never
competes with the event loop for the interpreter.

The publisher also says how far it has got: every version up to revision
``published`` is on disk (``on_published``). The registry keeps that mark, so
a restarted conductor writes again only the status files changed after it,
never every one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from baton.common.jobfile import write_job
from baton.common.layout import STATUS_FILE
from baton.common.removal import set_aside
from baton.common.safeopen import UnsafePath, dir_without_links
from baton.conductor.sweeper import Sweeps
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)
RETRY_MAX_SECONDS = 2.0

# (directory, newest Job to write there, or None to remove the directory; its tree's root; revision)
_Item = tuple[str, job_pb2.Job | None, Path, int]
# How long directories set aside are gathered, with no more coming, before
# their removal starts; and how often a running removal is looked in on.
SWEEP_GATHER_SECONDS = 0.2
SWEEP_POLL_SECONDS = 0.1
# Parent directories a round of removals keeps open, at most: a bulk deletion
# removes many runs of one job name, and each parent is reached through no
# link once, not once a run.
_OPEN_PARENTS = 64


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
        # Directories set aside, and the children removing them (conductor.sweeper).
        self.sweeps = Sweeps()
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
        for the lock and the wake-up once."""
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

    def _set_aside(self, root: Path, path: str, parents: dict[tuple[Path, str], int]) -> None:
        """Take a directory out of its place and hand it to the sweeps to remove,
        never through a link: a parent directory that is a link out of the tree
        deletes nothing. ``parents``: the parents this round has opened so far,
        kept open for the next run of the same job."""
        parent, name = os.path.split(path)
        try:
            pfd = parents.get((root, parent))
            if pfd is None:
                if len(parents) >= _OPEN_PARENTS:
                    _close_all(parents)
                with dir_without_links(root, parent) as fd:
                    pfd = parents[(root, parent)] = os.dup(fd)
            self.sweeps.add(pfd, set_aside(pfd, name))
        except FileNotFoundError:
            pass
        except UnsafePath as exc:
            log.warning("run_dir_not_removed", run_dir=path, why=str(exc))

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
                quiet = self._wait()
                if not quiet:
                    if not self._pending and self._stopping:
                        self.sweeps.start()
                        self.sweeps.reap()
                        self._idle.set()
                        return
                    batch, self._pending = self._pending, {}
                    self._writing = [item[3] for item in batch.values()]
            if quiet:
                # No more deletions for a moment: what is gathered goes now.
                self.sweeps.start()
                continue
            failed = {}
            parents: dict[tuple[Path, str], int] = {}
            try:
                for key, item in batch.items():
                    path, job, root, _ = item
                    try:
                        if job is None:
                            self._set_aside(root, path, parents)
                        else:
                            write_job(Path(path, STATUS_FILE), job)
                    except OSError as exc:
                        if not backoff:
                            log.error("status_write_failed", run_dir=path, error=exc.strerror)
                        failed[key] = item
            finally:
                _close_all(parents)
            with self._cond:
                self._writing = []
                for key, item in failed.items():
                    # A newer version queued meanwhile replaces the one that failed.
                    self._pending.setdefault(key, item)
                if self._stopping and failed:
                    self._pending.clear()
            backoff = min(RETRY_MAX_SECONDS, max(0.05, backoff * 2)) if failed else 0.0

    def _wait(self) -> bool:
        """Wait, with the lock held, for something to do; True when directories
        set aside are gathered and no more came for SWEEP_GATHER_SECONDS."""
        while not self._pending and not self._stopping:
            self.sweeps.reap()
            if self.sweeps.gathering:
                if not self._cond.wait(SWEEP_GATHER_SECONDS) and not self._pending:
                    return True
            elif self.sweeps.running:
                self._cond.wait(SWEEP_POLL_SECONDS)
            else:
                self._idle.set()
                self._cond.wait()
        return False

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is written, and every directory to
        remove is gone (for shutdown and tests)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()


def _close_all(fds: dict[tuple[Path, str], int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()
