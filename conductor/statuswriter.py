"""The status writer: a child process that writes status.json files and removes run
directories for the publisher (``conductor.publisher``).

Every new job gets a status.json: its JSON encoding and half a dozen file
system calls. Done by a thread of the conductor, each of those holds or
hands back and forth the one GIL that the event loop needs for every call it
serves; in a process of its own the work costs the conductor a pipe write per
batch. The publisher keeps every rule (what to write, in which order, what to
try again, how far it has got); this process only carries out a batch and
says what failed.

    python -m baton.conductor.statuswriter

reads batches on stdin and answers each on stdout, until stdin closes
(``conductor.childproc``). When the process cannot be started or dies, the
publisher's thread does the same work itself (``apply``), so status files
never depend on it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import subprocess
import time
from pathlib import Path

import structlog

from baton.common import checkpointdirs, runsummary
from baton.common.jobfile import write_job
from baton.common.layout import STATUS_FILE
from baton.common.safeopen import UnsafePath, dir_without_links, remove_beneath
from baton.conductor import childproc
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)

# (key, directory, the Job's bytes to write there or None to remove the directory, its tree's root)
Item = tuple[str, str, bytes | None, str]
# (key, FAILED or UNSAFE, what went wrong): FAILED is tried again, UNSAFE never.
Outcome = tuple[str, str, str]
FAILED = "failed"
UNSAFE = "unsafe"
# After the process failed to start or died, the thread writes for this long before starting another.
RESTART_AFTER_SECONDS = 30.0


# A job directory's run summary is compacted once this many of its runs were removed here.
COMPACT_AFTER = 1000
# Runs removed from each job directory since its summary was last compacted (by this process:
# a new one starts counting afresh, so at most this many lines of a job outlive their runs).
_removed: dict[str, int] = {}


def apply(items: list[Item]) -> list[Outcome]:
    """Carry out a batch in order; the items that did not succeed."""
    out: list[Outcome] = []
    for key, path, blob, root in items:
        try:
            if blob is None:
                _remove(Path(root), Path(path))
                _compact_later(Path(root), Path(path).parent)
            else:
                job = job_pb2.Job.FromString(blob)
                line = runsummary.summary_line(job, write_job(os.path.join(path, STATUS_FILE), job))
                if line is not None:
                    _summarize(os.path.dirname(path), line)
                    _summarize_checkpoints(job.checkpoint_dir)
        except UnsafePath as exc:
            out.append((key, UNSAFE, str(exc)))
        except OSError as exc:
            out.append((key, FAILED, exc.strerror or type(exc).__name__))
    return out


def _summarize(job_dir: str, line: bytes) -> None:
    """Append an ended run's line to its job's summary. The status file is written already and
    is what counts: a line that cannot be added only costs a viewer's cold start one read."""
    try:
        runsummary.append(job_dir, line)
    except OSError as exc:
        log.warning("run_summary_not_appended", job_dir=job_dir, error=str(exc)[:200])


def _summarize_checkpoints(run_dir: str) -> None:
    """Append an ended run's checkpoint line to its job's checkpoint summary, when its
    directory can be summarized (``common.checkpointdirs.run_checkpoints``)."""
    found = checkpointdirs.run_checkpoints(run_dir) if run_dir else None
    if found is not None:
        _summarize(os.path.dirname(run_dir), runsummary.checkpoint_line(run_dir, found))


def _compact_later(root: Path, job_dir: Path) -> None:
    """Count a run removed from ``job_dir``; compact its summary when enough were."""
    count = _removed.get(str(job_dir), 0) + 1
    if count < COMPACT_AFTER:
        _removed[str(job_dir)] = count
        return
    _removed.pop(str(job_dir), None)
    try:
        with dir_without_links(root, job_dir) as fd:
            runsummary.compact(fd)
    except FileNotFoundError:
        pass  # the whole job directory went
    except (OSError, UnsafePath) as exc:
        # The runs are removed all the same; the lines left are ignored by readers.
        log.warning("run_summary_not_compacted", job_dir=str(job_dir), error=str(exc)[:200])


def _remove(root: Path, path: Path) -> None:
    """Delete a directory, never through a link: a parent directory that is a
    link out of the tree deletes nothing (UnsafePath)."""
    try:
        with dir_without_links(root, path.parent) as pfd:
            remove_beneath(pfd, path.name)
    except FileNotFoundError:
        pass


class StatusWriter:
    """The publisher's end: batches to the child process, and the thread's own hands when it is gone.

    Used by one thread only (the publisher's).
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        # Whether the process has said it is ready; until then the thread writes
        # itself, so a new conductor's first status files never wait for it.
        self._ready = False
        # When the process last failed (monotonic seconds); none is started again for a while.
        self._failed_at: float | None = None

    def run(self, items: list[Item]) -> list[Outcome]:
        """Carry out a batch; the items that did not succeed."""
        proc = self._process()
        if proc is None:
            return apply(items)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            if not self._ready:
                if not select.select([proc.stdout], [], [], 0)[0]:
                    return apply(items)
                if childproc.receive(proc.stdout) != childproc.READY:
                    raise EOFError("the status writer did not start")
                self._ready = True
            childproc.send(proc.stdin, items)
            outcomes: list[Outcome] = childproc.receive(proc.stdout)
            return outcomes
        except (OSError, EOFError, pickle.PickleError) as exc:
            log.warning("status_writer_lost", error=repr(exc)[:200], pid=proc.pid)
            self._stop(kill=True)
            self._failed_at = time.monotonic()
            # Every write is whole or not at all: writing the batch again is safe.
            return apply(items)

    def _process(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None:
            return self._proc
        if self._failed_at is not None and time.monotonic() - self._failed_at < RESTART_AFTER_SECONDS:
            return None
        argv, env = childproc.command("baton.conductor.statuswriter")
        try:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            log.warning("status_writer_not_started", error=str(exc)[:200])
            self._failed_at = time.monotonic()
            return None
        return self._proc

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        self._ready = False
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if kill:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Let the process end (its stdin closes) and wait for it."""
        self._stop(kill=False)


def main() -> int:
    inp, out = childproc.helper_streams()
    try:
        childproc.send(out, childproc.READY)
        while True:
            childproc.send(out, apply(childproc.receive(inp)))
    except (EOFError, BrokenPipeError):
        # The conductor closed its end (it is stopping, or gone): nothing is owed to anyone.
        with contextlib.suppress(OSError):
            out.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
