"""The log tailer: one implementation behind the conductor's StreamLogs and the
viewer's ReadLog, TailLog and StreamLogs (the streams through ``common.logfollow``,
which also decides how a followed log ends).

It reads a log from a byte offset in chunks of at most 64 KiB, each tagged
with its offset, so a reader that reconnects resumes exactly where it stopped.
When following, it sleeps until inotify says the file changed (or the caller
says the writer ended), never on a timer, and it sends a payload-free
heartbeat when the log is quiet. A log that shrinks or is replaced under the
reader is reported, never skipped over or repeated silently.

Every open goes through ``common.safeopen`` with the root the log must stay
under: a log (or a directory above it) that is a link out of the tree is
refused with ``UnsafePath``, never read, even when it is swapped in while a
reader follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from baton.common.filewatch import FileWatcher
from baton.common.safeopen import open_beneath

CHUNK = 64 * 1024
# Bytes read per trip to a worker thread; split into CHUNK-sized pieces.
READ_BATCH = 64 * CHUNK
# Checking interval when the log's directory does not exist yet (no inotify watch possible).
MISSING_DIR_RECHECK = 0.25


@dataclass(frozen=True)
class Piece:
    """Bytes at ``offset``; no data and not truncated means a heartbeat."""

    offset: int
    data: bytes = b""
    truncated: bool = False


class _Reader:
    """An open log file that notices truncation and replacement (blocking calls).

    A read runs in a worker thread, which goes on after its reader is
    cancelled; ``close`` may therefore come in the middle of a read. Such a
    read must not open the file again after the close (the descriptor would
    stay open for good), and the close, on the event loop, must not wait for
    it: whichever of the two comes last releases the descriptor.
    """

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self._fd: int | None = None
        self._ino: int | None = None
        self._lock = threading.Lock()
        self._closed = False

    def read(self, offset: int, limit: int) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes at ``offset``; True when the file shrank or was replaced."""
        try:
            with self._lock:
                return (b"", False) if self._closed else self._read(offset, limit)
        finally:
            # Closed while this read ran (and the close could not take the lock).
            self._release_if_closed()

    def _read(self, offset: int, limit: int) -> tuple[bytes, bool]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is not None and st.st_ino != self._ino:
            replaced = self._fd is not None
            self._release()
            try:
                self._fd = open_beneath(self.root, self.path)
            except FileNotFoundError:
                return b"", False
            self._ino = os.fstat(self._fd).st_ino
            if replaced and offset > 0:
                return b"", True
        if self._fd is None:
            return b"", False
        size = os.fstat(self._fd).st_size
        if size < offset:
            return b"", True
        if size == offset:
            return b"", False
        return os.pread(self._fd, min(limit, size - offset), offset), False

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        self._closed = True
        # A read in progress holds the lock; it releases the file once done.
        self._release_if_closed()

    def _release_if_closed(self) -> None:
        if self._closed and self._lock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._lock.release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._ino = None


def offset_of_last_lines(path: Path, root: Path, lines: int, start: int = 0, end: int | None = None) -> int:
    """The offset where the last ``lines`` lines of ``path`` (inside ``root``) begin (blocking).

    Only the byte range [start, end) counts (end: the file's size when None).
    A final line without a newline counts as a line.
    """
    try:
        fd = open_beneath(root, path)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        end = size if end is None else min(end, size)
        floor = min(start, end)
        if end <= floor or lines <= 0:
            return end
        if os.pread(fd, 1, end - 1) == b"\n":
            end -= 1  # the last line's own newline does not start another line
        found = 0
        pos = end
        while pos > floor:
            begin = max(floor, pos - CHUNK)
            block = os.pread(fd, pos - begin, begin)
            idx = len(block)
            while True:
                idx = block.rfind(b"\n", 0, idx)
                if idx < 0:
                    break
                found += 1
                if found == lines:
                    return begin + idx + 1
            pos = begin
        return floor
    finally:
        os.close(fd)


def read_range(path: Path, root: Path, start: int, end: int) -> bytes:
    """Bytes [start, end) of ``path`` inside ``root`` (blocking); fewer when the file is shorter."""
    try:
        fd = open_beneath(root, path)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, max(0, end - start), start)
    finally:
        os.close(fd)


async def tail(
    path: Path,
    offset: int,
    *,
    root: Path,
    follow: bool,
    watcher: FileWatcher,
    ended: Callable[[], Awaitable[bool]],
    wake: asyncio.Event | None = None,
    heartbeat: float = 5.0,
) -> AsyncIterator[Piece]:
    """Yield the log from ``offset``; with ``follow``, until ``ended()`` and every byte is out.

    ``wake`` is set by the caller when the writer's state changes (so the end
    is noticed at once); file changes set it through inotify. ``path`` must
    resolve inside ``root``: UnsafePath otherwise.
    """
    wake = wake or asyncio.Event()
    loop = asyncio.get_running_loop()
    reader = _Reader(path, root)
    sub = watcher.subscribe(path, wake)
    last_sent = loop.time()
    try:
        while True:
            wake.clear()
            # Ask before reading: if the writer had ended, this read sees its last byte.
            finished = await ended() if follow else True
            data, truncated = await asyncio.to_thread(reader.read, offset, READ_BATCH)
            if truncated:
                offset = 0
                last_sent = loop.time()
                yield Piece(0, truncated=True)
                continue
            if data:
                for i in range(0, len(data), CHUNK):
                    yield Piece(offset + i, data[i : i + CHUNK])
                offset += len(data)
                last_sent = loop.time()
                continue
            if finished:
                return
            if not sub.watched:
                # The directory may exist by now; a kernel watch beats re-checking.
                watcher.unsubscribe(sub)
                sub = watcher.subscribe(path, wake)
            until_heartbeat = last_sent + heartbeat - loop.time()
            wait = until_heartbeat if sub.watched else min(until_heartbeat, MISSING_DIR_RECHECK)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
            if not wake.is_set() and loop.time() - last_sent >= heartbeat:
                last_sent = loop.time()
                yield Piece(offset)
    finally:
        watcher.unsubscribe(sub)
        reader.close()
