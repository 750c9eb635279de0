"""Keeping a job's output.log to its spec's ``max_log_bytes``, cut from the start.

The job's processes write the log themselves (O_APPEND, never through the
conductor), so the log cannot be rotated by renaming: the writers would go on
appending to the old file. Instead the conductor removes the start of the file
in place with ``fallocate(FALLOC_FL_COLLAPSE_RANGE)``: one atomic operation on
the inode, serialised with the writers' appends by the kernel, so no byte
written meanwhile is lost or moved. It works on whole file-system blocks
(ext4, XFS), so about ``max_log_bytes`` (up to one block more) are kept. Where
the file system cannot collapse (tmpfs, NFS...), the kept tail is copied to the
start and the file truncated: bytes appended between the copy and the
truncation (microseconds) are lost, which is said in the log line.

The log is cut when it passes twice the bound, so the work is amortised: each
cut removes at least half the file. A reader whose offset is past the new end
sees the file shrink and is told so (LogChunk.truncated) by the one tailer both
services use. Blocking calls: run them in a thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

_FALLOC_FL_COLLAPSE_RANGE = 0x08
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def over_bound(size: int, max_bytes: int) -> bool:
    """True when a log of ``size`` bytes is due a cut (past twice its bound)."""
    return size > 2 * max_bytes


def trim_log(path: str, keep: int) -> tuple[int, bool]:
    """Cut ``path`` from the start so that about its last ``keep`` bytes remain.

    Returns (bytes removed, whether it was done in place without any loss).
    A missing file or one already within ``keep`` is left alone.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return 0, True
    try:
        st = os.fstat(fd)
        if st.st_size <= keep:
            return 0, True
        block = st.st_blksize or 4096
        cut = (st.st_size - keep) // block * block
        if cut > 0 and _libc.fallocate(fd, _FALLOC_FL_COLLAPSE_RANGE, 0, cut) == 0:
            return cut, True
        err = ctypes.get_errno()
        if cut > 0 and err not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), path)
        # No collapse here: copy the tail to the start, then truncate.
        size = os.fstat(fd).st_size
        tail = os.pread(fd, keep, size - keep)
        os.pwrite(fd, tail, 0)
        os.ftruncate(fd, len(tail))
        return size - len(tail), False
    finally:
        os.close(fd)
