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
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from baton.common.boundedjson import read_fd
from baton.common.errors import FailedPrecondition

# The reasons of a refusal (google.rpc.ErrorInfo): a path that leads out of its
# tree; a file that is no regular file; a link met where none is followed (deletion).
PATH_OUTSIDE_TREE = "PATH_OUTSIDE_TREE"
PATH_NOT_REGULAR = "PATH_NOT_REGULAR"
PATH_IS_LINK = "PATH_IS_LINK"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafePath(Exception):
    """A path refused: it leads outside its root, is not a regular file, or is a link
    where none is followed. ``reason`` says which."""

    def __init__(self, rel: str, why: str, reason: str = PATH_OUTSIDE_TREE) -> None:
        super().__init__(f"{rel} {why}")
        self.rel = rel
        self.why = why
        self.reason = reason

    @property
    def outside(self) -> bool:
        return self.reason != PATH_NOT_REGULAR


def refusal(exc: UnsafePath) -> FailedPrecondition:
    """The domain error a client gets for ``exc``: FAILED_PRECONDITION with its reason.

    FAILED_PRECONDITION, not NOT_FOUND: the path is there, and an operator
    must learn that the tree holds something Baton will not touch.
    """
    return FailedPrecondition(str(exc), reason=exc.reason, metadata={"path": exc.rel})


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


_CHANGED = "changed into a link while it was opened"


@contextlib.contextmanager
def _dir_fd(root: str, parts: list[str], rel: str, on_link: str = _CHANGED) -> Iterator[int]:
    """An open descriptor of root/parts..., every component opened with O_NOFOLLOW."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    # A link (or a file) where a directory should be.
                    raise UnsafePath(
                        rel, on_link, PATH_IS_LINK if on_link != _CHANGED else PATH_OUTSIDE_TREE
                    ) from None
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
        raise UnsafePath(rel, "is a directory, not a file", PATH_NOT_REGULAR)
    with _dir_fd(root_s, parts[:-1], rel) as dfd:
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(rel, _CHANGED) from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePath(rel, "is not a regular file", PATH_NOT_REGULAR)
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


@contextlib.contextmanager
def dir_without_links(root: str | Path, path: str | Path) -> Iterator[int]:
    """An open descriptor of the directory ``path`` under ``root``, reached through no link at all.

    For deletion, which never descends a link, not even one that stays
    inside: ``path`` is taken as written (it is built from validated names),
    each component opened with O_NOFOLLOW. UnsafePath (PATH_IS_LINK) when one
    is a link, or when ``path`` is not under ``root``; FileNotFoundError when
    it is missing.
    """
    root_s = os.fspath(root)
    rel = os.path.relpath(os.fspath(path), root_s)
    if rel == os.curdir:
        parts: list[str] = []
    elif rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise UnsafePath(os.path.basename(os.fspath(path)), "is not inside its directory", PATH_OUTSIDE_TREE)
    else:
        parts = rel.split(os.sep)
    with _dir_fd(root_s, parts, rel, "is reached through a link; nothing is deleted through a link") as fd:
        yield fd


def remove_beneath(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a directory tree, a file or a link) in the directory
    ``dir_fd``, following no link: a link is removed, never its target.

    Renamed aside first, so a reader never sees half a tree; FileNotFoundError
    when it is not there.
    """
    doomed = f".deleting-{name}-{secrets.token_hex(4)}"
    os.rename(name, doomed, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    if stat.S_ISDIR(os.lstat(doomed, dir_fd=dir_fd).st_mode):
        # rmtree with dir_fd is the descriptor-based walk: it refuses a link at
        # the top and never follows one below.
        shutil.rmtree(doomed, dir_fd=dir_fd)
    else:
        os.unlink(doomed, dir_fd=dir_fd)
