"""The registry: the durable record of every job and of every change to one.

The lifecycle decides; the registry remembers. One interface, one embedded
implementation (SQLite in WAL mode). Writes go through a single writer thread
that commits whatever has queued up in one transaction (group commit), so a
burst of submissions costs one fsync, not one each, and no SQLite call ever
runs on the event loop.

When storage fails (a full disk, an I/O error), the two kinds of write part
ways. A new job (``insert``) is refused at once with a ``StorageError``: its
submitter rolls it back and tells the client. A change to a known job
(``put``, ``delete``) records something that already happened (a process
ended, a signal was sent), so it is never dropped: it is written again, in
order and with the changes queued behind it, until storage takes it. Until
then the registry is ``degraded`` and refuses new jobs without trying, and
recovers by itself once a write succeeds.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from baton.v1 import job_pb2

log = structlog.get_logger(__name__)

# Changes kept for WatchJobs reconnects; older ones are pruned.
DEFAULT_EVENT_HISTORY = 100_000
# How long the writer waits before writing a failed change again, at most.
RETRY_MAX_SECONDS = 2.0
_SQLITE_FULL = 13
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class StorageError(Exception):
    """The registry could not write; ``full`` when for want of space."""

    def __init__(self, message: str, *, full: bool) -> None:
        super().__init__(message)
        self.full = full


def storage_error(exc: BaseException) -> StorageError | None:
    """``exc`` as a StorageError when it is a storage fault worth writing again after."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, OSError):
        full = exc.errno in _NO_SPACE
        if full:
            return StorageError("no space left on the registry's device", full=True)
        name = errno.errorcode.get(exc.errno or 0, "EIO")
        return StorageError(f"the registry's device failed ({name})", full=False)
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == _SQLITE_FULL:
            return StorageError("no space left on the registry's device", full=True)
        return StorageError("the registry's storage failed", full=False)
    return None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    state INTEGER NOT NULL,
    request_id TEXT UNIQUE,
    revision INTEGER NOT NULL,
    job BLOB NOT NULL,
    runtime TEXT
);
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    type INTEGER NOT NULL,
    job BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""


@dataclass
class StoredJob:
    """One job as loaded at start: the Job, its order and the lifecycle's runtime notes."""

    seq: int
    job: job_pb2.Job
    runtime: str | None


@dataclass(frozen=True)
class DamagedRow:
    """A job row that could not be read at open: left in place, its key and order still taken."""

    job_id: str
    seq: int
    request_id: str


@dataclass
class StoredEvent:
    revision: int
    type: int
    job: job_pb2.Job


class Registry(abc.ABC):
    """What the lifecycle needs from storage. Every write is durable once awaited."""

    @abc.abstractmethod
    async def open(self) -> list[StoredJob]:
        """Open storage and return every job in submission order."""

    @property
    @abc.abstractmethod
    def max_revision(self) -> int:
        """The highest revision logged when the registry was opened."""

    @property
    @abc.abstractmethod
    def damaged(self) -> list[DamagedRow]:
        """The rows ``open`` could not read (it returned the others)."""

    @abc.abstractmethod
    def insert(self, seq: int, job: job_pb2.Job, runtime: str | None) -> asyncio.Future[None]:
        """Add a new job and log its creation; fails with StorageError when storage does."""

    @abc.abstractmethod
    def put(self, seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> asyncio.Future[None]:
        """Replace a known job; with ``event``, also log the change at job.revision.

        Never dropped for a storage fault: written again until it is durable.
        """

    @property
    @abc.abstractmethod
    def degraded(self) -> StorageError | None:
        """The storage fault that keeps changes from being written now, if any."""

    @abc.abstractmethod
    def delete(self, job: job_pb2.Job) -> asyncio.Future[None]:
        """Remove a job and log its deletion at job.revision."""

    @abc.abstractmethod
    async def events_after(self, revision: int, limit: int) -> list[StoredEvent]:
        """Logged changes with a revision above ``revision``, oldest first."""

    @abc.abstractmethod
    async def oldest_revision(self) -> int:
        """The oldest revision still kept (0 when none)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


_Op = Callable[[sqlite3.Connection], None]


class _Write:
    __slots__ = ("fut", "new_job", "op")

    def __init__(self, op: _Op, fut: asyncio.Future[None] | None, new_job: bool) -> None:
        self.op = op
        self.fut = fut
        # A new job's insert is refused on a storage fault; every other write is kept.
        self.new_job = new_job


class SqliteRegistry(Registry):
    """The embedded registry: one SQLite file in WAL mode, fsync on every commit."""

    def __init__(self, path: Path, event_history: int = DEFAULT_EVENT_HISTORY) -> None:
        self._path = path
        self._history = event_history
        self._ops: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._degraded: StorageError | None = None
        # Rows that could not be read at open; left in place for an operator.
        self._damaged: list[DamagedRow] = []
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = 0
        self._max_revision = 0
        # Told the seconds each transaction took (BEGIN to COMMIT with its
        # fsync), in the writer thread: for the commit latency metric.
        self.on_commit: Callable[[float], None] | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the caller hears of it.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def open(self) -> list[StoredJob]:
        self._loop = asyncio.get_running_loop()
        return await asyncio.to_thread(self._open_blocking)

    def _open_blocking(self) -> list[StoredJob]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only, made so before SQLite opens it: its -wal and -shm files
        # take the database's mode. A registry from before is tightened too.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for path in (self._path, self._path.with_name(self._path.name + "-wal"),
                     self._path.with_name(self._path.name + "-shm")):  # fmt: skip
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, 0o600)
        conn = self._connect()
        conn.executescript(_SCHEMA)
        rows = conn.execute("SELECT id, seq, job, runtime, request_id FROM jobs ORDER BY seq").fetchall()
        self._max_revision = conn.execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchone()[0]
        out = []
        for job_id, seq, blob, runtime, request_id in rows:
            try:
                job = job_pb2.Job.FromString(blob)
            except Exception as exc:  # a damaged row must not keep the others from loading
                log.error("registry_row_damaged", job_id=str(job_id)[:200], error=repr(exc)[:200])
                self._damaged.append(DamagedRow(str(job_id), int(seq), str(request_id or "")))
                continue
            out.append(StoredJob(seq, job, runtime))
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="registry-writer", daemon=True
        )
        self._writer.start()
        return out

    @property
    def max_revision(self) -> int:
        """The highest revision logged when the registry was opened."""
        return self._max_revision

    @property
    def damaged(self) -> list[DamagedRow]:
        return self._damaged

    @property
    def degraded(self) -> StorageError | None:
        return self._degraded

    def _submit(self, op: _Op, *, new_job: bool = False) -> asyncio.Future[None]:
        assert self._loop is not None, "registry not open"
        fut: asyncio.Future[None] = self._loop.create_future()
        degraded = self._degraded
        if new_job and degraded is not None:
            # Storage is failing: refuse now rather than queue behind the retries.
            fut.set_exception(degraded)
            return fut
        self._ops.put(_Write(op, fut, new_job))
        return fut

    def insert(self, seq: int, job: job_pb2.Job, runtime: str | None) -> asyncio.Future[None]:
        return self._submit(self._upsert(seq, job, runtime, job_pb2.JOB_EVENT_TYPE_UPDATED), new_job=True)

    def put(self, seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> asyncio.Future[None]:
        return self._submit(self._upsert(seq, job, runtime, event))

    @staticmethod
    def _upsert(seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> _Op:
        blob = job.SerializeToString()
        args = (job.id, seq, int(job.state), job.request_id or None, job.revision, blob, runtime)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO jobs (id, seq, state, request_id, revision, job, runtime)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET state=excluded.state, revision=excluded.revision,"
                " job=excluded.job, runtime=excluded.runtime",
                args,
            )
            if event is not None:
                conn.execute(
                    "INSERT INTO events (revision, job_id, type, job) VALUES (?, ?, ?, ?)",
                    (job.revision, job.id, event, blob),
                )

        return op

    def delete(self, job: job_pb2.Job) -> asyncio.Future[None]:
        blob = job.SerializeToString()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
            conn.execute(
                "INSERT INTO events (revision, job_id, type, job) VALUES (?, ?, ?, ?)",
                (job.revision, job.id, job_pb2.JOB_EVENT_TYPE_DELETED, blob),
            )

        return self._submit(op)

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        kept: list[_Write] = []  # changes that storage refused, written again first
        backoff = 0.05
        while True:
            # While storage fails, wake up to try again even when nothing new comes.
            batch, stop = self._take(kept, backoff if self._degraded is not None else None)
            if batch:
                kept = self._commit(conn, batch)
            elif self._degraded is not None:
                self._probe(conn)
            backoff = min(RETRY_MAX_SECONDS, backoff * 2) if self._degraded is not None else 0.05
            if stop:
                for w in kept:
                    lost = StorageError("the conductor stopped before storage recovered", full=False)
                    self._settle(w, lost)
                conn.close()
                return

    def _probe(self, conn: sqlite3.Connection) -> None:
        """A write of no consequence, to learn whether storage works again."""
        self._commit(conn, [_Write(_touch_probe, None, new_job=False)])

    def _take(self, batch: list[_Write], wait: float | None) -> tuple[list[_Write], bool]:
        """``batch`` and every write queued now, waiting up to ``wait`` for the first (None: forever).

        Group commit: everything already waiting goes into one transaction.
        Returns the batch and whether the registry is closing.
        """
        stop = False
        try:
            item = self._ops.get(timeout=wait)
            while True:
                if item is None:
                    stop = True
                else:
                    batch.append(item)
                item = self._ops.get_nowait()
        except queue.Empty:
            pass
        return batch, stop

    def _commit(self, conn: sqlite3.Connection, batch: list[_Write]) -> list[_Write]:
        """Write ``batch`` in one transaction; returns the writes to try again (storage failed).

        A new job refused by storage is answered at once; any other write is
        kept, in order, whatever became of its caller. A write that fails for
        another reason (a bug, a damaged file) is answered alone: the batch is
        written again one write at a time, so it cannot take the others with it.
        """
        began = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for w in batch:
                w.op(conn)
            self._writes += len(batch)
            if self._writes >= 1000:
                self._writes = 0
                conn.execute(
                    "DELETE FROM events WHERE revision <= (SELECT MAX(revision) FROM events) - ?",
                    (self._history,),
                )
            conn.execute("COMMIT")
        except BaseException as exc:  # the waiting callers must hear of it
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            fault = storage_error(exc)
            if fault is None:
                if len(batch) > 1:
                    return [kept for w in batch for kept in self._commit(conn, [w])]
                log.error("registry_write_refused", error=repr(exc)[:200])
                self._settle(batch[0], exc)
                return []
            if self._degraded is None:
                log.error("registry_write_failed", error=str(fault), full=fault.full)
            self._degraded = fault
            for w in batch:
                if w.new_job:
                    self._settle(w, fault)
            return [w for w in batch if not w.new_job]
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began)
        if self._degraded is not None:
            log.info("registry_recovered")
        self._degraded = None
        for w in batch:
            self._settle(w, None)
        return []

    def _settle(self, w: _Write, error: BaseException | None) -> None:
        assert self._loop is not None
        if w.fut is not None:
            self._loop.call_soon_threadsafe(_settle, w.fut, error)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            conn = sqlite3.connect(self._path, isolation_level=None)
            try:
                return fn(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    async def events_after(self, revision: int, limit: int) -> list[StoredEvent]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT revision, type, job FROM events WHERE revision > ? ORDER BY revision LIMIT ?",
                (revision, limit),
            ).fetchall()
        )
        return [StoredEvent(r, t, _event_job(r, b)) for r, t, b in rows]

    async def oldest_revision(self) -> int:
        row = await self._read(
            lambda c: c.execute("SELECT COALESCE(MIN(revision), 0) FROM events").fetchone()
        )
        return int(row[0])

    async def close(self) -> None:
        if self._writer is None:
            return
        self._ops.put(None)
        await asyncio.to_thread(self._writer.join)
        self._writer = None


def _event_job(revision: int, blob: bytes) -> job_pb2.Job:
    """The job an event carries; an empty Job when its row cannot be read.

    Decoded one by one, so a damaged event costs its own job only: the
    revision is still delivered, in order, and a watcher is never cut off.
    """
    try:
        return job_pb2.Job.FromString(blob)
    except Exception as exc:  # DecodeError, or whatever a damaged blob brings
        log.error("registry_event_damaged", revision=revision, error=type(exc).__name__)
        return job_pb2.Job()


def _touch_probe(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, julianday('now'))")


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
