"""Registry reader processes: the embedded registry's hot reads, off the conductor's GIL.

A read in a thread of the conductor still competes with the event loop for
the one GIL: the rows it fetches, the page it checks and the snapshot events
it frames hold it for milliseconds at a time, and every call the loop serves
meanwhile waits. So the reads that scale with the history (a job by id for
GetJob, a page of ended jobs for ListJobs, a WatchJobs snapshot) run in child
processes, each with its own SQLite connection; the conductor only writes a
request to a pipe and reads back stored bytes, already checked to decode (and
a snapshot already framed, ``conductor.snapshots``).

    python -m baton.conductor.readers DATABASE [read|view]

answers requests on stdin, one at a time, until stdin closes
(``conductor.childproc``). ``ReaderProcesses`` keeps a few of them: some for
reads, some leased to one snapshot each for as long as it lasts (its read
transaction lives in that process). When none is ready (at start, after one
died, every snapshot reader leased) a read runs in the registry's own threads
as before, so no answer ever depends on these processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from baton.common.jobs import JobFilter
from baton.common.wire import Encoded
from baton.conductor import childproc
from baton.conductor.childproc import HelperUnavailable
from baton.conductor.registry import Snapshot, begin_view, check_rows, ended_rows, snapshot_rows
from baton.conductor.snapshots import SNAPSHOT_FIRST_PAGE, SNAPSHOT_PAGE, BatchLimits, SnapshotBatches
from baton.v1 import conductor_pb2 as pb

log = structlog.get_logger(__name__)

MODULE = "baton.conductor.readers"
# Processes for reads; and for snapshots, each leased to one at a time.
READ_PROCESSES = 2
SNAPSHOT_PROCESSES = 2
# A snapshot is bulk work: its processes yield the CPU to the calls the
# conductor and its read processes answer meanwhile (a niceness, added).
SNAPSHOT_NICENESS = 10
# After a reader died or would not start, none is started again for this long.
RESTART_AFTER_SECONDS = 30.0
# A pipe large enough for a whole snapshot response (Linux's default most).
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031

# A process's role: READ answers reads; VIEW is leased to one snapshot at a time.
READ, VIEW = "read", "view"
# (job_id, seq, request_id, what went wrong) for each row found damaged.
Damaged = list[tuple[Any, Any, Any, str]]


# ---------------------------------------------------------------- the process


class _Reads:
    """What one reader process does: its connection, and the snapshot it serves, if any."""

    def __init__(self, database: str) -> None:
        self.conn = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout=5000")
        # Never a write from here, whatever a request says.
        self.conn.execute("PRAGMA query_only=1")
        self.damaged: Damaged = []
        # The snapshot being served: its filter, its framing, and the last seq sent.
        self._view: tuple[JobFilter, SnapshotBatches] | None = None
        self._after = 0
        self._limit = SNAPSHOT_FIRST_PAGE

    def note(self, job_id: Any, seq: Any, request_id: Any, error: str) -> None:
        self.damaged.append((str(job_id), int(seq), str(request_id or ""), error))

    def get(self, job_id: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            "SELECT seq, id, request_id, job FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        checked = check_rows([row], 1, self.note) if row else []
        return checked[0] if checked else None

    def ended(
        self, names: tuple[str, str, str, tuple[int, ...]], after: int | None, limit: int, newest_first: bool
    ) -> list[tuple[int, bytes]]:
        flt = JobFilter(*names)
        return ended_rows(
            self.conn, flt, after, limit, newest_first, lambda rows, n: check_rows(rows, n, self.note)
        )

    def begin(self, names: tuple[str, str, str], limits: BatchLimits) -> int:
        self.end()
        revision = begin_view(self.conn)
        self._view = (JobFilter(*names), SnapshotBatches(revision, limits))
        self._after, self._limit = 0, SNAPSHOT_FIRST_PAGE
        return revision

    def page(self, limit: int) -> list[bytes]:
        """The snapshot's next ``limit`` jobs at most, as stored."""
        if self._view is None:
            raise RuntimeError("no snapshot begun")
        rows = check_rows(snapshot_rows(self.conn, self._view[0], self._after, limit), limit, self.note)
        if rows:
            self._after = rows[-1][0]
        return [blob for _, blob in rows]

    def frames(self) -> tuple[list[bytes], bool]:
        """The snapshot's next responses, and whether they are the last."""
        limit = self._limit
        blobs = self.page(limit)
        assert self._view is not None
        batches = self._view[1]
        if not blobs:
            return [r.data for r in batches.end()], True
        self._limit = SNAPSHOT_PAGE
        # The first page goes out at once when more will follow.
        flush = limit == SNAPSHOT_FIRST_PAGE and len(blobs) == limit
        return [r.data for r in batches.add(blobs, flush)], False

    def end(self) -> None:
        if self._view is not None:
            self._view = None
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("COMMIT")

    def answer(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        """("ok", value, damaged rows) or ("error", what went wrong)."""
        self.damaged = []
        kind, *args = request
        try:
            handler: Callable[..., Any] = getattr(self, kind)
            value = handler(*args)
        except Exception as exc:  # told to the conductor, which reads by itself and answers properly
            return ("error", f"{type(exc).__name__}: {exc}"[:500])
        return ("ok", value, self.damaged)


def main() -> int:
    inp, out = childproc.helper_streams()
    with contextlib.suppress(OSError):
        fcntl.fcntl(out.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
    if len(sys.argv) > 2 and sys.argv[2] == VIEW:
        with contextlib.suppress(OSError):
            os.nice(SNAPSHOT_NICENESS)
    reads = _Reads(sys.argv[1])
    try:
        childproc.send(out, childproc.READY)
        while True:
            childproc.send(out, reads.answer(childproc.receive(inp)))
    except (EOFError, BrokenPipeError):
        return 0  # the conductor closed its end: it is stopping, or gone


# ---------------------------------------------------------------- the conductor's end


@dataclass
class _Reader:
    proc: asyncio.subprocess.Process
    role: str  # READ, or VIEW: leased to one snapshot at a time
    # One request at a time; an answer is always read whole, even for a caller
    # that stopped waiting, so the next request never reads a stale answer.
    lock: asyncio.Lock

    async def ask(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        # Shielded with the lock inside: a cancelled caller leaves the exchange
        # holding the lock until its answer is read.
        return await asyncio.shield(self._exchange(request))

    async def _exchange(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        async with self.lock:
            return await self._exchange_locked(request)

    async def _exchange_locked(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(childproc.encode(request))
        await self.proc.stdin.drain()
        answer: tuple[Any, ...] = await _receive(self.proc.stdout)
        return answer


async def _receive(stream: asyncio.StreamReader) -> Any:
    head = await stream.readexactly(childproc.HEAD_BYTES)
    return pickle.loads(await stream.readexactly(childproc.frame_length(head)))


_LOST = (OSError, EOFError, asyncio.IncompleteReadError, pickle.PickleError)


class ReaderProcesses:
    """The conductor's reader processes (see the module docstring); used on the event loop only."""

    def __init__(self, database: str, note_damaged: Callable[[Any, Any, Any, str], None]) -> None:
        self._database = database
        self._note = note_damaged
        self._ready: list[_Reader] = []  # started and answering, both roles
        self._idle: list[_Reader] = []  # READ processes free now
        self._waiting: list[asyncio.Future[_Reader]] = []
        self._free_views: list[_Reader] = []  # VIEW processes not leased
        self._closed = False
        self._started = False
        # Requests the processes answered (a test's proof that they did).
        self.answered = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._grew = asyncio.Event()

    def start(self) -> None:
        """Start the processes (once); each serves once it says it is ready.

        Called when the registry opens with ended jobs, or at the first read
        of one: a conductor never asked for an ended job never starts them.
        """
        if self._started:
            return
        self._started = True
        for role, count in ((READ, READ_PROCESSES), (VIEW, SNAPSHOT_PROCESSES)):
            for _ in range(count):
                self._spawn(role)

    async def wait_ready(self) -> None:
        """Start the processes and wait until every one answers (bound it with ``asyncio.timeout``)."""
        self.start()
        while len(self._ready) < READ_PROCESSES + SNAPSHOT_PROCESSES:
            self._grew.clear()
            await self._grew.wait()

    def _spawn(self, role: str) -> None:
        if self._closed:
            return
        task = asyncio.ensure_future(self._start_one(role))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self, role: str) -> None:
        argv, env = childproc.command(MODULE, self._database, role)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=_PIPE_BYTES,
            )
        except OSError as exc:
            log.warning("registry_reader_not_started", error=str(exc)[:200])
            self._later(role)
            return
        reader = _Reader(proc, role, asyncio.Lock())
        try:
            assert proc.stdout is not None
            said = await _receive(proc.stdout)
            if said != childproc.READY:
                raise EOFError(f"it said {said!r}")
        except _LOST as exc:
            log.warning("registry_reader_not_started", error=repr(exc)[:200], pid=proc.pid)
            self._later(role)
            await self._stop(reader, kill=True)
            return
        if self._closed:
            await self._stop(reader, kill=False)
            return
        self._ready.append(reader)
        self._grew.set()
        self._put_back(reader)

    def _later(self, role: str) -> None:
        if not self._closed:
            asyncio.get_running_loop().call_later(RESTART_AFTER_SECONDS, self._spawn, role)

    def _put_back(self, reader: _Reader) -> None:
        if reader not in self._ready:
            return
        if reader.role == VIEW:
            self._free_views.append(reader)
            return
        while self._waiting:
            fut = self._waiting.pop(0)
            if not fut.done():
                fut.set_result(reader)
                return
        self._idle.append(reader)

    def _lost(self, reader: _Reader, error: BaseException) -> None:
        """A reader died or broke the protocol: forget it, and start another after a while."""
        if reader not in self._ready:
            return
        log.warning("registry_reader_lost", pid=reader.proc.pid, error=repr(error)[:200])
        self._ready.remove(reader)
        for pool in (self._idle, self._free_views):
            if reader in pool:
                pool.remove(reader)
        with contextlib.suppress(ProcessLookupError):
            reader.proc.kill()
        if not any(r.role == READ for r in self._ready):
            # Whoever waits for a read process reads by itself instead.
            for fut in self._waiting:
                if not fut.done():
                    fut.set_exception(HelperUnavailable("no reader process"))
            self._waiting.clear()
        self._later(reader.role)

    async def _checkout(self) -> _Reader:
        """A read process, waiting for a busy one; HelperUnavailable when there is none."""
        if self._idle:
            return self._idle.pop()
        self.start()
        if not any(r.role == READ for r in self._ready):
            raise HelperUnavailable("no reader process")
        fut: asyncio.Future[_Reader] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._put_back(fut.result())
            raise

    async def ask(self, request: tuple[Any, ...]) -> Any:
        """A read's answer from a reader process; HelperUnavailable when the caller must read by itself."""
        reader = await self._checkout()
        try:
            return await self._ask(reader, request)
        finally:
            self._put_back(reader)

    async def _ask(self, reader: _Reader, request: tuple[Any, ...]) -> Any:
        try:
            answer = await reader.ask(request)
        except _LOST as exc:
            self._lost(reader, exc)
            raise HelperUnavailable(repr(exc)) from exc
        if answer[0] != "ok":
            raise HelperUnavailable(answer[1])
        self.answered += 1
        for row in answer[2]:
            self._note(*row)
        return answer[1]

    async def snapshot(self, flt: JobFilter, limits: BatchLimits) -> ReaderSnapshot | None:
        """A snapshot read and framed by a process of its own; None when none is free.

        A snapshot never starts the processes: starting them costs the loop a
        few forks, and a watch of a new conductor has nothing to read anyway.
        """
        if not self._free_views:
            return None
        reader = self._free_views.pop()
        try:
            revision = await self._ask(reader, ("begin", (flt.project, flt.group, flt.name), limits))
        except BaseException:
            self._put_back(reader)
            raise
        return ReaderSnapshot(self, reader, int(revision))

    async def give_back(self, reader: _Reader) -> None:
        """A snapshot is done with its process: its transaction ends, and the process is free."""
        with contextlib.suppress(HelperUnavailable):
            await self._ask(reader, ("end",))
            self._put_back(reader)

    async def close(self) -> None:
        self._closed = True
        # A process still starting is let finish, then stopped (``_start_one``).
        await asyncio.gather(*self._tasks, return_exceptions=True)
        readers, self._ready = self._ready, []
        self._idle.clear()
        self._free_views.clear()
        for reader in readers:
            await self._stop(reader, kill=False)

    @staticmethod
    async def _stop(reader: _Reader, *, kill: bool) -> None:
        proc = reader.proc
        if proc.stdin is not None:
            proc.stdin.close()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class ReaderSnapshot(Snapshot):
    """A snapshot whose read transaction lives in one reader process, leased until ``close``."""

    def __init__(self, pool: ReaderProcesses, reader: _Reader, revision: int) -> None:
        self._pool = pool
        self._reader = reader
        self.revision = revision
        self._closed = False

    async def page(self, limit: int) -> list[bytes]:
        blobs: list[bytes] = await self._pool._ask(self._reader, ("page", limit))
        return blobs

    async def responses(self) -> AsyncIterator[Encoded]:
        while True:
            frames, last = await self._pool._ask(self._reader, ("frames",))
            for frame in frames:
                yield Encoded(pb.WatchJobsResponse, frame)
            if last:
                return

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            # Shielded: a cancelled caller must still give the process back.
            await asyncio.shield(self._pool.give_back(self._reader))


if __name__ == "__main__":
    raise SystemExit(main())
