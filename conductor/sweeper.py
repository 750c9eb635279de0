"""Directories set aside for deletion, removed in batches by a child process.

A bulk deletion (ClearJobs, retention) removes tens of thousands of run
directories: several system calls a file and, done in the conductor, Python
work between them that holds the interpreter lock the event loop needs. So the
publisher only sets each directory aside (``removal.set_aside``: gone from its
place at once), and ``Sweeps`` gathers them and hands each batch to a child
(``python -m baton.common.removal``) at a low CPU priority, which
removes them as the publisher would (by descriptor, following no link): the
calls being served never wait on the removal, and it yields the CPU to them.
The child inherits the open parent directories (reached through no link by
the publisher) and never resolves a path from a root.
A batch too small to be worth a process is removed by the publisher itself.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass

import structlog

from baton.common.removal import BACKGROUND_PRIORITY, encode, remove_all

log = structlog.get_logger(__name__)

# Fewer directories than this are removed in the publisher itself: starting a
# process costs more than they do.
CHILD_MIN = 64
# Directories one child is given at most, and parent directories it inherits.
CHILD_BATCH = 5_000
CHILD_PARENTS = 256


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    count: int


class Sweeps:
    """Directories set aside, gathered into batches, each removed by a child.

    Used by the publisher's thread only. ``add`` gathers; a batch starts when
    it is full or when ``start`` is called (the publisher calls it once no
    more deletions have come for a moment); children are reaped as they end,
    their failures logged.
    """

    def __init__(self) -> None:
        self._children: list[_Child] = []
        # Children started, and directories given to them, since this began.
        self.started = 0
        self.handed = 0
        # The gathered batch: each parent directory once (by device and inode,
        # a descriptor of our own), and the names set aside in them.
        self._parents: dict[tuple[int, int], int] = {}
        self._doomed: list[tuple[int, str]] = []

    @property
    def gathering(self) -> bool:
        return bool(self._doomed)

    @property
    def running(self) -> bool:
        return bool(self._children)

    def add(self, parent_fd: int, name: str) -> None:
        """Gather ``name``, set aside in the directory ``parent_fd`` (which the caller keeps)."""
        st = os.fstat(parent_fd)
        key = (st.st_dev, st.st_ino)
        fd = self._parents.get(key)
        if fd is None:
            if len(self._parents) >= CHILD_PARENTS:
                self.start()
            fd = self._parents[key] = os.dup(parent_fd)
        self._doomed.append((fd, name))
        if len(self._doomed) >= CHILD_BATCH:
            self.start()

    def start(self) -> None:
        """Start removing what is gathered: a child for a batch, in this thread for a few."""
        doomed, self._doomed = self._doomed, []
        try:
            if len(doomed) >= CHILD_MIN:
                try:
                    self._spawn(doomed)
                    return
                except OSError as exc:  # no process to be had: removed here instead
                    log.warning("sweeper_not_started", error=str(exc), count=len(doomed))
            failed = remove_all(doomed)
            if failed:
                log.warning("run_dirs_not_removed", count=failed, of=len(doomed))
        finally:
            for fd in self._parents.values():
                os.close(fd)
            self._parents.clear()

    def _spawn(self, doomed: list[tuple[int, str]]) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "baton.common.removal"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=sorted(self._parents.values()),
        )
        # Lowered at once, before the child's own imports (it lowers itself too).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, BACKGROUND_PRIORITY)
        assert proc.stdin is not None
        try:
            # The child reads all of it before it removes anything.
            proc.stdin.write(encode(doomed))
            proc.stdin.close()
        except OSError:
            proc.kill()
            proc.wait()
            raise
        self._children.append(_Child(proc, len(doomed)))
        self.started += 1
        self.handed += len(doomed)

    def reap(self) -> None:
        """Collect the children that have ended."""
        running = []
        for child in self._children:
            if child.proc.poll() is None:
                running.append(child)
                continue
            assert child.proc.stdout is not None
            with child.proc.stdout:
                said = child.proc.stdout.read()
            if child.proc.returncode != 0:
                failed = said.decode(errors="replace").strip()[:20] or "?"
                log.warning("run_dirs_not_removed", count=failed, of=child.count, exit=child.proc.returncode)
        self._children = running
