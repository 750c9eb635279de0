"""Removing a tree through no link, in two steps: set aside, then removed.

``set_aside`` renames a directory (or file, or link) to a hidden name in its
own parent: gone from its place at once, so no reader finds half a tree.
``remove_set_aside`` then removes it by descriptor, following no link (a link
is removed, never its target). ``safeopen.remove_beneath`` does both at once.

Run as a program (``python -m baton.common.removal``), this is the child the
conductor's publisher hands a batch of set-aside directories to
(``conductor.sweeper``): it inherits their open parent directories, reads
``descriptor TAB name NUL`` entries on its stdin, lowers its CPU priority
(``BACKGROUND_PRIORITY``), removes each, and prints how many it could not
remove. It imports nothing beyond the standard library, so it starts at once.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import sys

# A low CPU priority: the calls being served come first (about ten to one), yet
# on a machine its jobs keep busy the removal still moves (at 19 it all but stops).
BACKGROUND_PRIORITY = 10


def set_aside(dir_fd: int, name: str) -> str:
    """Rename ``name`` in the directory ``dir_fd`` to a hidden name of its own, and
    return that name. FileNotFoundError when it is not there."""
    # Only to be unlike any other name there: no secret, so no system call for it.
    doomed = f".deleting-{name}-{random.getrandbits(32):08x}"
    os.rename(name, doomed, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return doomed


def remove_set_aside(dir_fd: int, doomed: str) -> None:
    """Remove what ``set_aside`` renamed (a tree, a file or a link), following no link."""
    if stat.S_ISDIR(os.lstat(doomed, dir_fd=dir_fd).st_mode):
        # rmtree with dir_fd is the descriptor-based walk: it refuses a link at
        # the top and never follows one below.
        shutil.rmtree(doomed, dir_fd=dir_fd)
    else:
        os.unlink(doomed, dir_fd=dir_fd)


def remove_all(doomed: list[tuple[int, str]]) -> int:
    """Remove each (parent descriptor, name set aside); how many could not be."""
    failed = 0
    for fd, name in doomed:
        try:
            remove_set_aside(fd, name)
        except FileNotFoundError:
            pass
        except OSError:
            failed += 1
    return failed


def encode(doomed: list[tuple[int, str]]) -> bytes:
    """What the child reads on its stdin for ``doomed``."""
    return b"".join(b"%d\t%s\0" % (fd, os.fsencode(name)) for fd, name in doomed)


def decode(data: bytes) -> list[tuple[int, str]]:
    out = []
    for entry in data.split(b"\0"):
        fd, sep, name = entry.partition(b"\t")
        if sep:
            out.append((int(fd), os.fsdecode(name)))
    return out


def main() -> int:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_PRIORITY)
    failed = remove_all(decode(sys.stdin.buffer.read()))
    print(failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
