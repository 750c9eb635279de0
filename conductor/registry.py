"""The registry: the durable record of every job and of every change to one.

The lifecycle decides; the registry remembers. One interface (``Registry``),
two implementations chosen by ``make_registry`` (as Flower's link state is):
the embedded one (SQLite in WAL mode, here) and one in memory
(``conductor.memregistry``, for tests and throwaway conductors). One contract
test suite (tests/test_registry_contract.py) runs against both.

The conductor keeps only live jobs in memory; ended ones are read back from
here, page by page, through indexes that serve every filter ListJobs offers in
its order (newest submission first). No SQLite call ever runs on the event
loop: writes go through a single writer thread that commits whatever has
queued up in one transaction (group commit), so a burst of submissions costs
one fsync, not one each; reads run on a small pool of reader threads, each
with its own connection.

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
import functools
import heapq
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from baton.common.jobs import FINAL_STATES, JobFilter
from baton.common.wire import Encoded, decode_jobs
from baton.conductor.childproc import HelperUnavailable
from baton.conductor.snapshots import SNAPSHOT_FIRST_PAGE, SNAPSHOT_PAGE, SnapshotBatches, batch_limits
from baton.v1 import job_pb2

if TYPE_CHECKING:
    from baton.conductor.readers import ReaderProcesses

log = structlog.get_logger(__name__)

# Changes kept for WatchJobs reconnects; older ones are pruned.
DEFAULT_EVENT_HISTORY = 100_000
# How long the writer waits before writing a failed change again, at most.
RETRY_MAX_SECONDS = 2.0
# Read transactions (and connections) that WatchJobs snapshots share, at most.
SNAPSHOT_CONNECTIONS = 2
# A snapshot starting within this many seconds of another shares its transaction.
SNAPSHOT_SHARE_SECONDS = 2.0
# With no published mark to go by, a restart writes again the status files of
# live jobs and of jobs that ended this recently (what older conductors did).
STALE_FALLBACK_SECONDS = 3600.0
# The name ``make_registry`` takes for a registry kept in memory only.
IN_MEMORY = ":memory:"
_SQLITE_FULL = 13
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_FINAL = tuple(sorted(FINAL_STATES))
T = TypeVar("T")


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


@dataclass
class StoredJob:
    """One job as loaded at start: the Job, its order and the lifecycle's runtime notes."""

    seq: int
    job: job_pb2.Job
    runtime: str | None


@dataclass(frozen=True)
class DamagedRow:
    """A job row that could not be read: left in place, its key and order still taken."""

    job_id: str
    seq: int
    request_id: str


@dataclass
class StoredEvent:
    revision: int
    type: int
    job: job_pb2.Job


@dataclass
class Opened:
    """What a conductor needs at start, and nothing more: never every ended job."""

    # Jobs that have not ended, in submission order.
    live: list[StoredJob]
    # Ended jobs, by state (the live ones count themselves).
    ended_counts: dict[int, int]
    # The highest revision any change was given (0 for a new registry).
    max_revision: int
    # The next submission's order: above every row's, readable or not.
    next_seq: int
    # Every status.json for a change up to this revision is known written
    # (``note_published``); None when the registry has no such mark yet.
    published_revision: int | None
    # Live rows that could not be read.
    damaged: list[DamagedRow] = field(default_factory=list)


@dataclass
class Stale:
    """Status files that a restart must write again (``Registry.stale``)."""

    # Jobs whose status.json may be older than their record.
    jobs: list[job_pb2.Job]
    # The last version of jobs deleted since: their run directories may still be there.
    deleted: list[job_pb2.Job]


def end_ns(job: job_pb2.Job) -> int:
    """When an ended job ended, in nanoseconds (0 when it says not)."""
    return job.end_time.ToNanoseconds() if job.HasField("end_time") else 0


def ended_states(flt: JobFilter) -> tuple[int, ...]:
    """The ended states a filter asks for (all of them when it names none)."""
    if not flt.states:
        return _FINAL
    return tuple(s for s in _FINAL if s in flt.states)


class Snapshot(abc.ABC):
    """One consistent view of every job, read page by page while changes go on.

    ``revision`` is the revision the view stands at: every change up to it is
    in the view, none after it. Pages come in submission order, oldest first.
    """

    revision: int

    @abc.abstractmethod
    async def page(self, limit: int) -> list[bytes]:
        """The next ``limit`` matching jobs at most, each a serialized Job known
        to decode (a snapshot is sent on as it is stored); empty at the end."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def responses(self) -> AsyncIterator[Encoded]:
        """The whole view as WatchJobsResponses of SNAPSHOT events, the last
        closed by SNAPSHOT_END (``conductor.snapshots``), framed in a worker thread.

        The first page is short and goes out at once when more will follow.
        """
        batches = SnapshotBatches(self.revision)
        size = SNAPSHOT_FIRST_PAGE
        while blobs := await self.page(size):
            flush = size == SNAPSHOT_FIRST_PAGE and len(blobs) == size
            for response in await asyncio.to_thread(batches.add, blobs, flush):
                yield response
            size = SNAPSHOT_PAGE
        for response in batches.end():
            yield response


class Registry(abc.ABC):
    """What the lifecycle needs from storage. Every write is durable once awaited.

    Reads never block the event loop. The ones that take a filter serve ended
    jobs only: the lifecycle holds the live ones.
    """

    # Told the seconds each durable commit took, where there is one (for the
    # commit latency metric); called from whatever thread commits.
    on_commit: Callable[[float], None] | None = None

    @abc.abstractmethod
    async def open(self) -> Opened:
        """Open storage and read what a start needs: live jobs, counts, the revision."""

    @property
    @abc.abstractmethod
    def damaged(self) -> list[DamagedRow]:
        """Rows found unreadable so far (at open, or by a read since)."""

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
    def delete(self, jobs: list[job_pb2.Job]) -> asyncio.Future[set[str]]:
        """Remove jobs and log each one's deletion at its job.revision, all in one write.

        Resolves to the ids removed: a job already gone is neither removed
        nor logged again, so two deletions of one job never both happen.
        """

    @abc.abstractmethod
    def note_published(self, revision: int) -> None:
        """Every status.json up to ``revision`` is written: remembered with the next write, not durably."""

    @abc.abstractmethod
    async def get(self, job_id: str) -> job_pb2.Job | None:
        """The job, or None when there is none (or its row cannot be read)."""

    @abc.abstractmethod
    async def find_request(self, request_id: str) -> str | None:
        """The id of the job submitted with ``request_id``, if any."""

    @abc.abstractmethod
    def contains_blocking(self, job_id: str) -> bool:
        """Whether a row has this id (blocking: for a worker thread)."""

    @abc.abstractmethod
    def ids_blocking(self, project: str, group: str, name: str) -> set[str]:
        """The ids of the rows whose job has this project, group and name (blocking: for a worker thread)."""

    @abc.abstractmethod
    async def ended(
        self, flt: JobFilter, after: int | None, limit: int, *, newest_first: bool = True
    ) -> list[tuple[int, job_pb2.Job]]:
        """Ended jobs matching ``flt`` as (seq, job), in submission order, from just past ``after``.

        Newest first: seqs below ``after``; else oldest first: seqs above it.
        Fewer than ``limit`` only when no more match: a row that cannot be
        read is left out (and noted in ``damaged``), the page filled past it.
        """

    @abc.abstractmethod
    async def ended_by_end(
        self, flt: JobFilter, through_ns: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, job_pb2.Job]]:
        """Ended jobs matching ``flt`` that ended at or before ``through_ns`` (one that
        says no end counts as ended at 0), as (seq, job), in the order they ended (then
        by seq), from just past ``after`` = (end_ns, seq).

        What a bulk deletion by age reads: its cost goes with the jobs it returns,
        never with the history. Fewer than ``limit`` only when no more match.
        """

    @abc.abstractmethod
    async def snapshot(self, flt: JobFilter) -> Snapshot:
        """A consistent view of every job matching ``flt`` (its states ignored)."""

    @abc.abstractmethod
    async def stale(self, published: int | None) -> Stale:
        """Jobs changed or deleted after revision ``published``.

        With no mark (None), or one older than the kept history: the live
        jobs and those that ended in the last ``STALE_FALLBACK_SECONDS``.
        """

    @abc.abstractmethod
    async def events_after(self, revision: int, limit: int) -> list[StoredEvent]:
        """Logged changes with a revision above ``revision``, oldest first."""

    @abc.abstractmethod
    async def oldest_revision(self) -> int:
        """The oldest revision still kept (0 when none)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def make_registry(database: str | Path, *, event_history: int = DEFAULT_EVENT_HISTORY) -> Registry:
    """The registry for ``database``: a SQLite file, or ``IN_MEMORY`` for one kept in memory."""
    if str(database) == IN_MEMORY:
        from baton.conductor.memregistry import InMemoryRegistry

        return InMemoryRegistry(event_history=event_history)
    return SqliteRegistry(Path(database), event_history=event_history)


def merge_streams(
    streams: Iterable[list[tuple[int, T]]], limit: int, *, newest_first: bool
) -> list[tuple[int, T]]:
    """Merge streams each sorted by seq, keeping only what every stream has reached.

    A stream that came back full (``limit`` rows) may have more past its last
    seq, so nothing beyond that seq is taken from the others either.
    """
    lists = [s for s in streams if s]
    bound: int | None = None
    for s in lists:
        if len(s) >= limit:
            last = s[-1][0]
            bound = last if bound is None else (max(bound, last) if newest_first else min(bound, last))
    if newest_first:
        merged = heapq.merge(*lists, key=lambda r: -r[0])
        inside = (lambda seq: True) if bound is None else (lambda seq: seq >= bound)
    else:
        merged = heapq.merge(*lists, key=lambda r: r[0])
        inside = (lambda seq: True) if bound is None else (lambda seq: seq <= bound)
    out: list[tuple[int, T]] = []
    for row in merged:
        if len(out) == limit or not inside(row[0]):
            break
        out.append(row)
    return out


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
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Columns added in schema 2, filled from each row's Job: what the indexes need.
_COLUMNS = (
    ("project", "TEXT NOT NULL DEFAULT ''"),
    ("grp", "TEXT NOT NULL DEFAULT ''"),
    ("name", "TEXT NOT NULL DEFAULT ''"),
    # The state of an ended job, NULL while it lives: ended jobs alone are indexed.
    ("final_state", "INTEGER"),
    ("end_ns", "INTEGER"),
)
# Partial indexes over ended jobs only, so a live job's changes touch none of
# them; each ends in seq, so a filter reads its page in order and stops.
# A filter naming the job's name uses the name's index (a name is rare), one
# naming project and group theirs, and so on.
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_live ON jobs (seq) WHERE final_state IS NULL;
CREATE INDEX IF NOT EXISTS ended_all ON jobs (final_state, seq) WHERE final_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS ended_p ON jobs (final_state, project, seq) WHERE final_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS ended_pg ON jobs (final_state, project, grp, seq) WHERE final_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS ended_pgn ON jobs (final_state, project, grp, name, seq)
    WHERE final_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS ended_g ON jobs (final_state, grp, seq) WHERE final_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS ended_n ON jobs (final_state, name, seq) WHERE final_state IS NOT NULL;
CREATE INDEX IF NOT EXISTS ended_by_end ON jobs (end_ns, seq) WHERE final_state IS NOT NULL;
"""
_SCHEMA_VERSION = 2
_PUBLISHED = "published_revision"


def _ended_index(flt: JobFilter) -> tuple[str, str, list[Any]]:
    """The index for ``flt``'s ended jobs, and the terms and values beside final_state."""
    terms, values = [], []
    for column, value in (("project", flt.project), ("grp", flt.group), ("name", flt.name)):
        if value:
            terms.append(f" AND {column} = ?")
            values.append(value)
    p, g, n = bool(flt.project), bool(flt.group), bool(flt.name)
    if n:
        index = "ended_pgn" if p and g else "ended_n"
    elif p:
        index = "ended_pg" if g else "ended_p"
    else:
        index = "ended_g" if g else "ended_all"
    return index, "".join(terms), values


def index_columns(job: job_pb2.Job) -> tuple[str, str, str, int | None, int | None]:
    """The values of the ``jobs`` columns the indexes read, for a job's row:
    (project, grp, name, final_state, end_ns)."""
    final = int(job.state) if job.state in FINAL_STATES else None
    return job.project, job.group, job.name, final, end_ns(job) if final is not None else None


def row_values(seq: int, job: job_pb2.Job, runtime: str | None, blob: bytes) -> tuple[Any, ...]:
    """A job's row of ``INSERT_JOB`` (a tool writing rows itself, like the benchmark's
    history generator, uses it too): the record and the columns its indexes read."""
    return (job.id, seq, int(job.state), job.request_id or None, job.revision, blob, runtime,
            *index_columns(job))  # fmt: skip


_INTO_JOBS = (
    "INSERT INTO jobs (id, seq, state, request_id, revision, job, runtime, project, grp, name,"
    " final_state, end_ns) VALUES "
)
_INTO_EVENTS = "INSERT INTO events (revision, job_id, type, job) VALUES "
INSERT_JOB = _INTO_JOBS + "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# New jobs written by one statement at most: 12 values a row stay far under
# SQLite's oldest limit on a statement's values (999).
_ROWS_AT_ONCE = 64
# A live job's change names no indexed column, so SQLite leaves every index be.
_UPDATE_LIVE = "UPDATE jobs SET state = ?, revision = ?, job = ?, runtime = ? WHERE id = ?"
_UPDATE_ENDED = (
    "UPDATE jobs SET state = ?, revision = ?, job = ?, runtime = ?, final_state = ?, end_ns = ? WHERE id = ?"
)


_Op = Callable[[sqlite3.Connection], Any]
# Ids one DELETE names at most (well under SQLite's bound on parameters, 999 before 3.32).
_DELETE_CHUNK = 500


# A new job's row of ``jobs`` and its creation's row of ``events``.
_NewRows = tuple[tuple[Any, ...], tuple[Any, ...]]


class _Write:
    __slots__ = ("fut", "new_job", "op", "rows")

    def __init__(
        self, op: _Op | None, fut: asyncio.Future[Any] | None, new_job: bool, rows: _NewRows | None = None
    ) -> None:
        # What the write runs in its transaction; none for a new job's rows.
        self.op = op
        self.fut = fut
        # A new job's insert is refused on a storage fault; every other write is kept.
        self.new_job = new_job
        # A new job's rows, written together with those of the new jobs next
        # to it in its transaction (``_apply``).
        self.rows = rows


@functools.lru_cache(maxsize=16)
def _values(head: str, columns: int, rows: int) -> str:
    """``head`` and ``rows`` rows of ``columns`` placeholders: one INSERT of many rows."""
    row = "(" + ", ".join("?" * columns) + ")"
    return head + ", ".join([row] * rows)


def _insert_new(conn: sqlite3.Connection, writes: list[_Write]) -> None:
    """Write new jobs' rows with a few multi-row INSERTs rather than two statements a job.

    Each statement the writer thread runs gives up the GIL and must win it
    back from a busy event loop, which can take a switch interval (5 ms): a
    burst of submissions then costs a few statements, not hundreds. Chunks
    are powers of two, so few distinct statements are prepared and cached.
    """
    done = 0
    while done < len(writes):
        n = min(_ROWS_AT_ONCE, 1 << ((len(writes) - done).bit_length() - 1))
        part = [w.rows for w in writes[done : done + n] if w.rows is not None]
        conn.execute(_values(_INTO_JOBS, 12, n), [v for job, _ in part for v in job])
        conn.execute(_values(_INTO_EVENTS, 4, n), [v for _, event in part for v in event])
        done += n


def _apply(conn: sqlite3.Connection, batch: list[_Write]) -> list[Any]:
    """Run a transaction's writes in order, each run of new jobs together; their results."""
    results: list[Any] = []
    new: list[_Write] = []
    for w in batch:
        if w.rows is not None:
            new.append(w)
        if w.op is None:
            results.append(None)
            continue
        if new:
            _insert_new(conn, new)
            new = []
        results.append(w.op(conn))
    if new:
        _insert_new(conn, new)
    return results


# Told of a row that does not decode: (job_id, seq, request_id, what went wrong).
NoteDamaged = Callable[[Any, Any, Any, str], None]


def decode_rows(rows: list[Any], limit: int, note: NoteDamaged) -> list[tuple[int, job_pb2.Job]]:
    """(seq, id, request_id, blob) rows as (seq, Job); a damaged one is left out and noted."""
    rows = rows[:limit]
    jobs = decode_jobs([r[3] for r in rows])
    if jobs is not None:  # the common case: the whole page in one parse
        return [(int(r[0]), job) for r, job in zip(rows, jobs, strict=True)]
    return _decode_each(rows, note)


def _decode_each(rows: list[Any], note: NoteDamaged) -> list[tuple[int, job_pb2.Job]]:
    """``decode_rows`` one row at a time, for a page with a row that does not decode."""
    out = []
    for seq, job_id, request_id, blob in rows:
        try:
            out.append((int(seq), job_pb2.Job.FromString(blob)))
        except Exception as exc:
            note(job_id, seq, request_id, repr(exc))
    return out


def check_rows(rows: list[Any], limit: int, note: NoteDamaged) -> list[tuple[int, bytes]]:
    """(seq, id, request_id, blob) rows as (seq, blob), keeping only blobs that decode."""
    rows = rows[:limit]
    if decode_jobs([r[3] for r in rows]) is not None:
        return [(int(r[0]), bytes(r[3])) for r in rows]
    good = {seq for seq, _ in _decode_each(rows, note)}
    return [(int(r[0]), bytes(r[3])) for r in rows if int(r[0]) in good]


def begin_view(conn: sqlite3.Connection) -> int:
    """Open a read transaction on ``conn``; the revision it stands at.

    In WAL mode a read transaction sees one commit's state for as long as it
    lasts, whatever is written meanwhile.
    """
    conn.execute("BEGIN")
    return int(conn.execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchone()[0])


def snapshot_rows(conn: sqlite3.Connection, flt: JobFilter, after: int, limit: int) -> list[Any]:
    """The (seq, id, request_id, blob) rows of a snapshot page: every job matching
    ``flt``'s names (live or ended, any state) past seq ``after``, oldest first."""
    if not (flt.project or flt.group or flt.name):
        rows: list[Any] = conn.execute(
            "SELECT seq, id, request_id, job FROM jobs WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return rows
    index, terms, values = _ended_index(flt)
    streams = [
        conn.execute(
            "SELECT seq, id, request_id, job FROM jobs INDEXED BY jobs_live"
            f" WHERE final_state IS NULL{terms} AND seq > ? ORDER BY seq LIMIT ?",
            (*values, after, limit),
        ).fetchall()
    ]
    for state in _FINAL:
        streams.append(
            conn.execute(
                f"SELECT seq, id, request_id, job FROM jobs INDEXED BY {index}"
                f" WHERE final_state = ?{terms} AND seq > ? ORDER BY seq LIMIT ?",
                (state, *values, after, limit),
            ).fetchall()
        )
    merged = merge_streams([[(r[0], r) for r in s] for s in streams], limit, newest_first=False)
    return [r for _, r in merged]


def ended_rows(
    conn: sqlite3.Connection,
    flt: JobFilter,
    after: int | None,
    limit: int,
    newest_first: bool,
    decode: Callable[[list[Any], int], list[tuple[int, T]]],
) -> list[tuple[int, T]]:
    """``Registry.ended``'s page, each row as ``decode`` gives it (the rows it
    leaves out, damaged ones, are looked past for the rest of the page)."""
    states = ended_states(flt)
    if not states or limit <= 0:
        return []
    index, terms, values = _ended_index(flt)
    order = "DESC" if newest_first else "ASC"
    head = f"SELECT seq, id, request_id, job FROM jobs INDEXED BY {index} WHERE final_state = ?{terms}"
    unbounded = f"{head} ORDER BY seq {order} LIMIT ?"
    bounded = f"{head} AND seq {'<' if newest_first else '>'} ? ORDER BY seq {order} LIMIT ?"
    out: list[tuple[int, T]] = []
    cursor = after
    while len(out) < limit:
        want = limit - len(out)
        # One ordered run per state, merged: an IN over the states would sort them all.
        streams = [
            conn.execute(unbounded, (state, *values, want)).fetchall()
            if cursor is None
            else conn.execute(bounded, (state, *values, cursor, want)).fetchall()
            for state in states
        ]
        raw = merge_streams([[(r[0], r) for r in s] for s in streams], want, newest_first=newest_first)
        out += decode([r for _, r in raw], want)
        if len(raw) < want:
            break  # every matching row has been looked at
        cursor = raw[-1][0]
    return out


class _ReadTxn:
    """A connection kept for snapshots, and the read transaction open on it, if any.

    Snapshots that start while one is young share its transaction (each with
    its own place in it), so any number of watchers hold at most
    ``SNAPSHOT_CONNECTIONS`` transactions and connections.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()  # one statement at a time on the connection
        self.users = 0
        self.revision = 0
        self.started = 0.0

    def acquire(self, now: float) -> int:
        with self.lock:
            if self.users == 0:
                self.revision, self.started = begin_view(self.conn), now
            self.users += 1
            return self.revision

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0:
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("COMMIT")


class _SqliteSnapshot(Snapshot):
    """One reader's place in a shared read transaction, read a page at a time."""

    def __init__(self, registry: SqliteRegistry, txn: _ReadTxn, flt: JobFilter, revision: int) -> None:
        self._registry = registry
        self._txn = txn
        self._flt = flt
        self.revision = revision
        self._after = 0
        self._closed = False

    async def page(self, limit: int) -> list[bytes]:
        rows = await self._registry._in_thread(self._page, limit)
        if rows:
            self._after = rows[-1][0]
        return [blob for _, blob in rows]

    def _page(self, limit: int) -> list[tuple[int, bytes]]:
        with self._txn.lock:
            raw = snapshot_rows(self._txn.conn, self._flt, self._after, limit)
        return check_rows(raw, limit, self._registry.note_damaged)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: a cancelled caller must still give its place back.
        await asyncio.shield(self._registry._in_thread(self._txn.release))


class SqliteRegistry(Registry):
    """The embedded registry: one SQLite file in WAL mode, fsync on every commit."""

    def __init__(self, path: Path, event_history: int = DEFAULT_EVENT_HISTORY, readers: int = 2) -> None:
        self._path = path
        self._history = event_history
        self._ops: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._degraded: StorageError | None = None
        # Rows found unreadable; left in place for an operator.
        self._damaged: dict[str, DamagedRow] = {}
        self._writer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writes = 0
        self._reader_count = readers
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="registry-reader", initializer=self._reader
        )
        self._local = threading.local()
        self._lookup_conn: sqlite3.Connection | None = None
        self._txns: list[_ReadTxn] = []
        # The hot reads' processes (``conductor.readers``), made at open.
        self._procs: ReaderProcesses | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # The published mark asked for, and the one last written.
        self._published: int | None = None
        self._published_written: int | None = None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the caller hears of it.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This reader thread's own connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
            with self._conns_lock:
                self._reader_conns.append(conn)
        return conn

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, fn, *args)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._in_thread(lambda: fn(self._reader()))

    async def open(self) -> Opened:
        self._loop = asyncio.get_running_loop()
        opened = await asyncio.to_thread(self._open_blocking)
        # Imported here: the reader processes run this module's read functions.
        from baton.conductor.readers import ReaderProcesses

        self._procs = ReaderProcesses(str(self._path), self.note_damaged)
        if opened.ended_counts:
            # A history to read: the processes start with the conductor (else at its first read).
            self._procs.start()
        # Every reader thread and its connection made now, not under load later.
        barrier = threading.Barrier(self._reader_count)
        await asyncio.gather(*(self._in_thread(barrier.wait, 10) for _ in range(self._reader_count)))
        return opened

    def _open_blocking(self) -> Opened:
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
        self._migrate(conn)
        self._index_stray_rows(conn)
        rows = conn.execute(
            "SELECT id, seq, job, runtime, request_id FROM jobs INDEXED BY jobs_live"
            " WHERE final_state IS NULL ORDER BY seq"
        ).fetchall()
        max_rev = max(
            conn.execute("SELECT COALESCE(MAX(revision), 0) FROM events").fetchone()[0],
            # A registry whose log was pruned to nothing still knows its jobs' revisions.
            conn.execute("SELECT COALESCE(MAX(revision), 0) FROM jobs INDEXED BY jobs_live"
                         " WHERE final_state IS NULL").fetchone()[0],
        )  # fmt: skip
        next_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        counts = dict(
            conn.execute(
                "SELECT final_state, COUNT(*) FROM jobs INDEXED BY ended_all"
                " WHERE final_state IS NOT NULL GROUP BY final_state"
            ).fetchall()
        )
        mark = conn.execute("SELECT value FROM meta WHERE key = ?", (_PUBLISHED,)).fetchone()
        self._published = self._published_written = None if mark is None else int(mark[0])
        live = []
        for job_id, seq, blob, runtime, request_id in rows:
            try:
                job = job_pb2.Job.FromString(blob)
            except Exception as exc:  # a damaged row must not keep the others from loading
                self.note_damaged(job_id, seq, request_id, repr(exc))
                continue
            live.append(StoredJob(seq, job, runtime))
        for _ in range(SNAPSHOT_CONNECTIONS):
            snap = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            snap.execute("PRAGMA busy_timeout=5000")
            self._txns.append(_ReadTxn(snap))
            self._reader_conns.append(snap)
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="registry-writer", daemon=True
        )
        self._writer.start()
        return Opened(
            live=live,
            ended_counts={int(k): int(v) for k, v in counts.items()},
            max_revision=int(max_rev),
            next_seq=int(next_seq),
            published_revision=self._published,
            damaged=list(self._damaged.values()),
        )

    def _index_stray_rows(self, conn: sqlite3.Connection) -> None:
        """Fill the indexed columns of ended rows written without them (by a tool that
        knows only the older columns): else they would look live and filter wrong."""
        final = ",".join(str(s) for s in _FINAL)
        stray = conn.execute(
            "SELECT id, state, job FROM jobs INDEXED BY jobs_live"
            f" WHERE final_state IS NULL AND state IN ({final})"
        ).fetchall()
        if not stray:
            return
        conn.execute("BEGIN IMMEDIATE")
        for job_id, state, blob in stray:
            try:
                job = job_pb2.Job.FromString(blob)
            except Exception:
                job = job_pb2.Job(state=state)
            conn.execute(
                "UPDATE jobs SET project = ?, grp = ?, name = ?, final_state = ?, end_ns = ? WHERE id = ?",
                (*index_columns(job)[:3], state, end_ns(job), job_id),
            )
        conn.execute("COMMIT")
        log.warning("registry_rows_indexed", rows=len(stray))

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring a registry written by an older conductor to this schema (once)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version >= _SCHEMA_VERSION:
            return
        have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        conn.execute("BEGIN IMMEDIATE")
        for column, decl in _COLUMNS:
            if column not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {decl}")
        rows = conn.execute("SELECT id, state, job FROM jobs").fetchall()
        for job_id, state, blob in rows:
            try:
                job = job_pb2.Job.FromString(blob)
            except Exception:
                job = job_pb2.Job(state=state)
            final = state if state in FINAL_STATES else None
            conn.execute(
                "UPDATE jobs SET project = ?, grp = ?, name = ?, final_state = ?, end_ns = ? WHERE id = ?",
                (job.project, job.group, job.name, final, end_ns(job) if final else None, job_id),
            )
        for statement in _INDEXES.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        conn.execute("COMMIT")
        if rows:
            log.info("registry_migrated", rows=len(rows), schema=_SCHEMA_VERSION)

    def note_damaged(self, job_id: Any, seq: Any, request_id: Any, error: str) -> None:
        """Record a row found unreadable (here, or by a reader process)."""
        key = str(job_id)
        if key not in self._damaged:
            log.error("registry_row_damaged", job_id=key[:200], error=error[:200])
            self._damaged[key] = DamagedRow(key, int(seq), str(request_id or ""))

    def _decode(self, rows: list[Any], limit: int) -> list[tuple[int, job_pb2.Job]]:
        return decode_rows(rows, limit, self.note_damaged)

    @property
    def damaged(self) -> list[DamagedRow]:
        return list(self._damaged.values())

    @property
    def degraded(self) -> StorageError | None:
        return self._degraded

    def _submit(
        self, op: _Op | None, *, new_job: bool = False, rows: _NewRows | None = None
    ) -> asyncio.Future[Any]:
        assert self._loop is not None, "registry not open"
        fut: asyncio.Future[Any] = self._loop.create_future()
        degraded = self._degraded
        if new_job and degraded is not None:
            # Storage is failing: refuse now rather than queue behind the retries.
            fut.set_exception(degraded)
            return fut
        self._ops.put(_Write(op, fut, new_job, rows))
        return fut

    def insert(self, seq: int, job: job_pb2.Job, runtime: str | None) -> asyncio.Future[None]:
        blob = job.SerializeToString()
        args = row_values(seq, job, runtime, blob)
        event = (job.revision, job.id, job_pb2.JOB_EVENT_TYPE_UPDATED, blob)
        return self._submit(None, new_job=True, rows=(args, event))

    def put(self, seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> asyncio.Future[None]:
        blob = job.SerializeToString()
        if job.state in FINAL_STATES:
            sql = _UPDATE_ENDED
            args: tuple[Any, ...] = (
                int(job.state),
                job.revision,
                blob,
                runtime,
                int(job.state),
                end_ns(job),
                job.id,
            )
        else:
            sql, args = _UPDATE_LIVE, (int(job.state), job.revision, blob, runtime, job.id)
        row = row_values(seq, job, runtime, blob)
        logged = None if event is None else (job.revision, job.id, event, blob)

        def op(conn: sqlite3.Connection) -> None:
            if conn.execute(sql, args).rowcount == 0:
                conn.execute(INSERT_JOB, row)
            if logged is not None:
                conn.execute("INSERT INTO events (revision, job_id, type, job) VALUES (?, ?, ?, ?)", logged)

        return self._submit(op)

    def delete(self, jobs: list[job_pb2.Job]) -> asyncio.Future[set[str]]:
        def op(conn: sqlite3.Connection) -> set[str]:
            # One statement a chunk, not one a job: SQLite's work is the same, the
            # writer's Python (which holds the GIL the event loop needs) is not.
            gone: set[str] = set()
            for i in range(0, len(jobs), _DELETE_CHUNK):
                ids = [j.id for j in jobs[i : i + _DELETE_CHUNK]]
                sql = f"DELETE FROM jobs WHERE id IN ({','.join('?' * len(ids))}) RETURNING id"
                gone.update(row[0] for row in conn.execute(sql, ids))
            events, logged = [], set()
            for j in jobs:
                if j.id in gone and j.id not in logged:  # a job named twice is deleted once
                    logged.add(j.id)
                    # Serialized here, in the writer thread, not on the event loop.
                    events.append((j.revision, j.id, job_pb2.JOB_EVENT_TYPE_DELETED, j.SerializeToString()))
            conn.executemany("INSERT INTO events (revision, job_id, type, job) VALUES (?, ?, ?, ?)", events)
            return gone

        return self._submit(op)

    def note_published(self, revision: int) -> None:
        # Read by the writer thread at its next commit; a plain int swap.
        if self._published is None or revision > self._published:
            self._published = revision

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
                if not kept and self._published != self._published_written:
                    self._commit(conn, [_Write(lambda c: None, None, new_job=False)])
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
        published = self._published
        began = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = _apply(conn, batch)
            self._writes += len(batch)
            if self._writes >= 1000:
                self._writes = 0
                conn.execute(
                    "DELETE FROM events WHERE revision <= (SELECT MAX(revision) FROM events) - ?",
                    (self._history,),
                )
            if published is not None and published != self._published_written:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (_PUBLISHED, published)
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
            self._settle_many([(w, fault, None) for w in batch if w.new_job])
            return [w for w in batch if not w.new_job]
        self._published_written = published
        if self.on_commit is not None:
            self.on_commit(time.perf_counter() - began)
        if self._degraded is not None:
            log.info("registry_recovered")
        self._degraded = None
        self._settle_many([(w, None, result) for w, result in zip(batch, results, strict=True)])
        return []

    def _settle(self, w: _Write, error: BaseException | None, result: Any = None) -> None:
        self._settle_many([(w, error, result)])

    def _settle_many(self, outcomes: list[tuple[_Write, BaseException | None, Any]]) -> None:
        """Answer the callers of many writes, in write order, with one wake-up of the event loop:
        a group commit of hundreds of submissions costs the loop one callback, not hundreds."""
        assert self._loop is not None
        settled = [(w.fut, error, result) for w, error, result in outcomes if w.fut is not None]
        if settled:
            self._loop.call_soon_threadsafe(_settle_all, settled)

    # ------------------------------------------------------------------ reads

    async def get(self, job_id: str) -> job_pb2.Job | None:
        if self._procs is not None:
            with contextlib.suppress(HelperUnavailable):
                found = await self._procs.ask(("get", job_id))
                return None if found is None else job_pb2.Job.FromString(found[1])

        def read(c: sqlite3.Connection) -> job_pb2.Job | None:
            row = c.execute("SELECT seq, id, request_id, job FROM jobs WHERE id = ?", (job_id,)).fetchone()
            decoded = self._decode([row], 1) if row else []
            return decoded[0][1] if decoded else None

        return await self._read(read)

    async def find_request(self, request_id: str) -> str | None:
        row = await self._read(
            lambda c: c.execute("SELECT id FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        )
        return None if row is None else str(row[0])

    def contains_blocking(self, job_id: str) -> bool:
        with self._conns_lock:
            row = self._lookup().execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row is not None

    def ids_blocking(self, project: str, group: str, name: str) -> set[str]:
        key = (project, group, name)
        states = ",".join("?" * len(_FINAL))
        with self._conns_lock:
            rows = (
                self._lookup()
                .execute(
                    f"SELECT id FROM jobs INDEXED BY ended_pgn WHERE final_state IN ({states})"
                    " AND project = ? AND grp = ? AND name = ?"
                    " UNION ALL SELECT id FROM jobs INDEXED BY jobs_live WHERE final_state IS NULL"
                    " AND project = ? AND grp = ? AND name = ?",
                    (*_FINAL, *key, *key),
                )
                .fetchall()
            )
        return {str(r[0]) for r in rows}

    def _lookup(self) -> sqlite3.Connection:
        """The connection for the blocking lookups; the caller holds ``_conns_lock``."""
        if self._lookup_conn is None:
            self._lookup_conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._reader_conns.append(self._lookup_conn)
        return self._lookup_conn

    async def ended(
        self, flt: JobFilter, after: int | None, limit: int, *, newest_first: bool = True
    ) -> list[tuple[int, job_pb2.Job]]:
        if self._procs is not None:
            with contextlib.suppress(HelperUnavailable):
                names = (flt.project, flt.group, flt.name, tuple(flt.states))
                rows = await self._procs.ask(("ended", names, after, limit, newest_first))
                # Checked in the process: one parse of the whole page here.
                jobs = decode_jobs([blob for _, blob in rows])
                if jobs is not None:
                    return [(seq, job) for (seq, _), job in zip(rows, jobs, strict=True)]
        return await self._read(lambda c: ended_rows(c, flt, after, limit, newest_first, self._decode))

    async def ended_by_end(
        self, flt: JobFilter, through_ns: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, job_pb2.Job]]:
        states = ended_states(flt)
        if not states or limit <= 0:
            return []
        _, terms, values = _ended_index(flt)
        if len(states) < len(_FINAL):
            terms += f" AND final_state IN ({', '.join('?' * len(states))})"
            values = [*values, *states]
        head = (
            "SELECT end_ns, seq, id, request_id, job FROM jobs INDEXED BY ended_by_end"
            f" WHERE final_state IS NOT NULL AND end_ns <= ?{terms}"
        )
        unbounded = f"{head} ORDER BY end_ns, seq LIMIT ?"
        # A row value: the index is read from just past the cursor, not from its start.
        bounded = f"{head} AND (end_ns, seq) > (?, ?) ORDER BY end_ns, seq LIMIT ?"

        def read(c: sqlite3.Connection) -> list[tuple[int, job_pb2.Job]]:
            out: list[tuple[int, job_pb2.Job]] = []
            cursor = after
            while len(out) < limit:
                want = limit - len(out)
                raw = (
                    c.execute(unbounded, (through_ns, *values, want)).fetchall()
                    if cursor is None
                    else c.execute(bounded, (through_ns, *values, *cursor, want)).fetchall()
                )
                out += self._decode([r[1:] for r in raw], want)
                if len(raw) < want:
                    break
                # Some rows could not be read: look past them for the rest of the page.
                cursor = (raw[-1][0], raw[-1][1])
            return out

        return await self._read(read)

    async def snapshot(self, flt: JobFilter) -> Snapshot:
        if self._procs is not None:
            with contextlib.suppress(HelperUnavailable):
                leased = await self._procs.snapshot(flt, batch_limits())
                if leased is not None:
                    return leased
        # Every reader process is leased (or none runs): a transaction here, shared.
        now = time.monotonic()
        txns = self._txns
        young = [t for t in txns if t.users and now - t.started < SNAPSHOT_SHARE_SECONDS]
        free = [t for t in txns if not t.users]
        # Join a young transaction, else open one on a free connection, else
        # join the youngest: the history after it is still kept.
        txn = max(young or txns, key=lambda t: t.started) if young or not free else free[0]
        fut = asyncio.ensure_future(self._in_thread(txn.acquire, now))
        try:
            revision = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Taken in the thread all the same: given back once it is.
            fut.add_done_callback(functools.partial(self._give_back, txn))
            raise
        return _SqliteSnapshot(self, txn, JobFilter(flt.project, flt.group, flt.name), revision)

    @property
    def readers(self) -> ReaderProcesses | None:
        """The reader processes (``conductor.readers``), once open."""
        return self._procs

    def _give_back(self, txn: _ReadTxn, fut: asyncio.Future[int]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._readers.submit(txn.release)

    async def stale(self, published: int | None) -> Stale:
        def read(c: sqlite3.Connection) -> Stale:
            mark = 0 if published is None else published
            oldest = c.execute("SELECT COALESCE(MIN(revision), 0) FROM events").fetchone()[0]
            jobs: list[job_pb2.Job] = []
            deleted: list[job_pb2.Job] = []
            if published is not None and (oldest == 0 or mark >= oldest - 1):
                changed = c.execute(
                    "SELECT job_id, MAX(type = ?), MAX(revision) FROM events WHERE revision > ?"
                    " GROUP BY job_id",
                    (job_pb2.JOB_EVENT_TYPE_DELETED, mark),
                ).fetchall()
                for job_id, was_deleted, revision in changed:
                    if was_deleted:
                        blob = c.execute("SELECT job FROM events WHERE revision = ?", (revision,)).fetchone()[
                            0
                        ]
                        with contextlib.suppress(Exception):
                            deleted.append(job_pb2.Job.FromString(blob))
                        continue
                    row = c.execute(
                        "SELECT seq, id, request_id, job FROM jobs WHERE id = ?", (job_id,)
                    ).fetchone()
                    jobs.extend(job for _, job in self._decode([row] if row else [], 1))
                return Stale(jobs, deleted)
            # No mark (a registry from an older conductor), or the log no longer
            # reaches back to it: what an older conductor wrote again, the
            # live jobs and those that ended in the last STALE_FALLBACK_SECONDS.
            since = time.time_ns() - int(STALE_FALLBACK_SECONDS * 1e9)
            rows = c.execute(
                "SELECT seq, id, request_id, job FROM jobs INDEXED BY jobs_live WHERE final_state IS NULL"
                " UNION ALL SELECT seq, id, request_id, job FROM jobs INDEXED BY ended_by_end"
                " WHERE final_state IS NOT NULL AND end_ns > ?",
                (since,),
            ).fetchall()
            rows.sort(key=lambda r: r[0])
            return Stale([job for _, job in self._decode(rows, len(rows))], [])

        return await self._read(read)

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
        if self._procs is not None:
            await self._procs.close()
        if self._writer is not None:
            self._ops.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        await asyncio.to_thread(self._readers.shutdown, True)
        with self._conns_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


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


def _settle_all(settled: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for fut, error, result in settled:
        _settle(fut, error, result)


def _settle(fut: asyncio.Future[Any], error: BaseException | None, result: Any = None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)
