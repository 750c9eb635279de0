"""Opening a file inside a tree on a client's behalf, and nowhere else.

Both services open files that jobs and other programs write (status.json,
output.log, a checkpoint's config.yaml and job.json) under a root they serve
(the status directory, the checkpoints directory). Any of those, or any
directory above them, may be a symbolic link. The rule: a path is opened only
if, with every link resolved, it stays inside its root; links that stay
inside are followed (the viewer's index lists runs reached through them, and
a read must find what a list shows), links that leave are refused.

Python has no ``openat2(RESOLVE_BENEATH)``, so the check is made race-free
this way: the path is resolved once (``realpath``), the resolved path must lie
under the root, and it is then opened one component at a time from the root
with ``O_NOFOLLOW`` on each (``O_DIRECTORY`` for the directories). A link
swapped in after the check is a component that no longer opens, so the open
fails rather than follow it. The last component must be a regular file: a
FIFO would block the reading thread, a device could be anything. It is opened
with ``O_NONBLOCK`` so that not even opening a FIFO blocks.

The error, ``UnsafePath``, names the path relative to its root (built from
the client's own names) and never the link's target or the file's content.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from baton.common.boundedjson import read_fd
from baton.common.errors import FailedPrecondition

# The reason on every refusal (google.rpc.ErrorInfo).
PATH_OUTSIDE_TREE = "PATH_OUTSIDE_TREE"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePath(Exception):
    """A path that leads outside its root (``outside``), or is not a regular file; never opened."""

    def __init__(self, rel: str, why: str, *, outside: bool = True) -> None:
        super().__init__(f"{rel} {why}")
        self.rel = rel
        self.why = why
        self.outside = outside


def refusal(exc: UnsafePath) -> FailedPrecondition:
    """The domain error a client gets for ``exc``: FAILED_PRECONDITION, reason PATH_OUTSIDE_TREE."""
    return FailedPrecondition(
        f"{exc.rel} {exc.why}; it is not read", reason=PATH_OUTSIDE_TREE, metadata={"path": exc.rel}
    )


def _relative(root: str, path: str) -> str:
    """``path`` as the client named it, relative to ``root`` (links not resolved)."""
    rel = os.path.relpath(os.path.abspath(path), root)
    return rel if not rel.startswith("..") else os.path.basename(path)


def resolve_beneath(root: str | Path, path: str | Path) -> list[str]:
    """The components of ``path`` below ``root``, links resolved; UnsafePath when it leaves ``root``.

    ``root`` must already be resolved (both services resolve theirs at start).
    """
    root_s, path_s = os.fspath(root), os.fspath(path)
    real = os.path.realpath(path_s)
    if real == root_s:
        return []
    if not real.startswith(root_s.rstrip(os.sep) + os.sep):
        raise UnsafePath(_relative(root_s, path_s), "leads outside its directory through a link")
    return real[len(root_s.rstrip(os.sep)) + 1 :].split(os.sep)


@contextlib.contextmanager
def _dir_fd(root: str, parts: list[str], rel: str) -> Iterator[int]:
    """An open descriptor of root/parts..., every component opened with O_NOFOLLOW."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    # Resolved a moment ago, a link or a file now: changed under the read.
                    raise UnsafePath(rel, "changed into a link while it was opened") from None
                raise
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def open_beneath(root: str | Path, path: str | Path) -> int:
    """A read-only descriptor of the regular file ``path``, which must resolve inside ``root``.

    FileNotFoundError when it does not exist; UnsafePath when it leads
    outside ``root`` or is not a regular file; other OSErrors as they come.
    Blocking: call it from a worker thread.
    """
    root_s = os.fspath(root)
    rel = _relative(root_s, os.fspath(path))
    parts = resolve_beneath(root_s, path)
    if not parts:
        raise UnsafePath(rel, "is a directory, not a file", outside=False)
    with _dir_fd(root_s, parts[:-1], rel) as dfd:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(rel, "changed into a link while it was opened") from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(rel, "is not a regular file", outside=False)
        # Regular files never block; reads are ordinary again.
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_beneath(root: str | Path, path: str | Path, limit: int) -> bytes:
    """Up to ``limit`` + 1 bytes of ``path`` opened with ``open_beneath`` (one more: too large)."""
    fd = open_beneath(root, path)
    try:
        return read_fd(fd, max_bytes=limit)
    finally:
        os.close(fd)
