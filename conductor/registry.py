"""The registry: the durable record of every job and of every change to one.

The lifecycle decides; the registry remembers. One interface, one embedded
implementation (SQLite in WAL mode). Writes go through a single writer thread
that commits whatever has queued up in one transaction (group commit), so a
burst of submissions costs one fsync, not one each, and no SQLite call ever
runs on the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from baton.v1 import job_pb2

# Changes kept for WatchJobs reconnects; older ones are pruned.
DEFAULT_EVENT_HISTORY = 100_000

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
"""


@dataclass
class StoredJob:
    """One job as loaded at start: the Job, its order and the lifecycle's runtime notes."""

    seq: int
    job: job_pb2.Job
    runtime: str | None


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

    @abc.abstractmethod
    def put(self, seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> asyncio.Future[None]:
        """Insert or replace a job; with ``event``, also log the change at job.revision."""

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


class SqliteRegistry(Registry):
    """The embedded registry: one SQLite file in WAL mode, fsync on every commit."""

    def __init__(self, path: Path, event_history: int = DEFAULT_EVENT_HISTORY) -> None:
        self._path = path
        self._history = event_history
        self._ops: queue.SimpleQueue[tuple[_Op, asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = 0
        self._max_revision = 0

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
        conn = self._connect()
        conn.executescript(_SCHEMA)
        rows = conn.execute("SELECT seq, job, runtime FROM jobs ORDER BY seq").fetchall()
        self._max_revision = conn.execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchone()[0]
        out = []
        for seq, blob, runtime in rows:
            out.append(StoredJob(seq, job_pb2.Job.FromString(blob), runtime))
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="registry-writer", daemon=True
        )
        self._writer.start()
        return out

    @property
    def max_revision(self) -> int:
        """The highest revision logged when the registry was opened."""
        return self._max_revision

    def _submit(self, op: _Op) -> asyncio.Future[None]:
        assert self._loop is not None, "registry not open"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._ops.put((op, fut))
        return fut

    def put(self, seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> asyncio.Future[None]:
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

        return self._submit(op)

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
        while True:
            item = self._ops.get()
            batch: list[tuple[_Op, asyncio.Future[None]]] = []
            stop = item is None
            if item is not None:
                batch.append(item)
            # Group commit: take everything already waiting into this transaction.
            while not stop:
                try:
                    nxt = self._ops.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    batch.append(nxt)
            if batch:
                self._commit(conn, batch)
            if stop:
                conn.close()
                return

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[_Op, asyncio.Future[None]]]) -> None:
        error: BaseException | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, _ in batch:
                op(conn)
            self._writes += len(batch)
            if self._writes >= 1000:
                self._writes = 0
                conn.execute(
                    "DELETE FROM events WHERE revision <= (SELECT MAX(revision) FROM events) - ?",
                    (self._history,),
                )
            conn.execute("COMMIT")
        except BaseException as exc:  # the waiting callers must hear of it
            error = exc
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        assert self._loop is not None
        for _, fut in batch:
            self._loop.call_soon_threadsafe(_settle, fut, error)

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
        return [StoredEvent(r, t, job_pb2.Job.FromString(b)) for r, t, b in rows]

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


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
