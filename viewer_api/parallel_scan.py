"""The cold scan of the status tree, split across worker processes.

Parsing 100,000 status files is CPU work that one interpreter does on one
core, so the viewer's first scan hands job directories to worker processes
(``viewer_api.scan_worker``), about as many runs to each, and merges what they
send back in frames as they go. Given the viewer's inotify descriptor, the
workers watch each directory before listing it. A worker that fails has its
share scanned here instead.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import json
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from baton.viewer_api.scan import FINAL_STATES, JobKey, OnDir, OnRun, RunFile, ScanResult, scan_jobs, subdirs

# The folder that holds the viewer_api package (and common/ and baton/ beside it).
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Below this many runs, starting worker processes costs more than it saves.
PARALLEL_SCAN_MIN_RUNS = 5000


def _run_count(path: str) -> int:
    """About how many runs a job directory holds, to balance the workers' shares.

    Its link count says how many subdirectories it has on the filesystems
    that keep one (tmpfs, ext4, xfs); elsewhere it is listed.
    """
    try:
        links = os.stat(path).st_nlink
        return links - 2 if links >= 2 else len(os.listdir(path))
    except OSError:
        return 0


def _shares(jobs: list[tuple[JobKey, int]], workers: int) -> list[list[JobKey]]:
    """Jobs split so each worker gets about as many runs: largest first, to the lightest."""
    load = [(0, i) for i in range(workers)]
    shares: list[list[JobKey]] = [[] for _ in range(workers)]
    for job, runs in sorted(jobs, key=lambda j: -j[1]):
        total, i = heapq.heappop(load)
        shares[i].append(job)
        heapq.heappush(load, (total + runs, i))
    return [share for share in shares if share]


@dataclass(frozen=True)
class WorkerWatch:
    """An inotify instance the scan workers add their watches to (they inherit its fd)."""

    fd: int
    mask: int


def scan_status_parallel(
    root: str,
    workers: int,
    on_dir: OnDir | None = None,
    watch: WorkerWatch | None = None,
    on_run: OnRun | None = None,
    sink: Sink | None = None,
    summaries: bool = False,
) -> ScanResult:
    """A full scan split by job directory across ``workers`` processes (the cold start).

    Parsing 100,000 status files is CPU work that one interpreter does on one
    core. Worker processes (``python -m viewer_api.scan_worker``: fresh interpreters,
    so nothing of a running server is forked and no caller's main module is
    re-imported) each take a share of about as many runs. With ``watch``, each
    worker watches every job directory of its share before listing it, and
    the directory of each run that may still change once it has read it (then
    reads it again), and the result's ``watched`` says which descriptor is
    which directory; the directories above the job directories are scanned
    here and go to ``on_dir``, as in a serial scan. ``on_run`` is for a share
    scanned here (small trees, or a worker that failed).

    With ``sink``, the runs go to it as they arrive (one call at a time, from
    the threads that read the workers' pipes), so the caller works on them
    while the workers read on; the result then holds none. A worker that
    fails part way has sent some of its share already: the whole share is
    scanned again here and sent again, so the sink keeps a run's last copy.

    With ``summaries``, an ended run with a line in its job directory's summary
    is taken from it, unread (``common.runsummary``); ``summarized`` counts them.
    """
    result = ScanResult(on_dir=on_dir, on_run=on_run, summaries=summaries)
    if not os.path.isdir(root):
        return result
    root = os.path.realpath(root)
    result.enter(root, ())
    jobs: list[tuple[JobKey, int]] = []
    for project, ppath in subdirs(root, root, result.problems):
        result.enter(ppath, (project,))
        for group, gpath in subdirs(ppath, root, result.problems):
            result.enter(gpath, (project, group))
            jobs.extend(
                ((project, group, name), _run_count(npath))
                for name, npath in subdirs(gpath, root, result.problems)
            )
    if workers <= 1 or len(jobs) < 2 or sum(runs for _, runs in jobs) < PARALLEL_SCAN_MIN_RUNS:
        return _sunk(scan_jobs(root, [job for job, _ in jobs], result), sink)
    # Every share goes to a worker: this process has the checkpoint scan and
    # the merging to do, and threads here would only fight over one lock.
    shares = _shares(jobs, workers)
    # -P and this code's own folder first on the path: a worker runs the same
    # code as its parent, whatever folder the viewer was started from.
    command = [sys.executable, "-P", "-m", "baton.viewer_api.scan_worker", root]
    if watch is not None:
        command += [str(watch.fd), str(watch.mask)]
    path = os.pathsep.join(filter(None, [_CODE_ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    procs = []
    for share in shares:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(watch.fd,) if watch is not None else (),
            env=env,
        )
        assert proc.stdin is not None
        # A worker that died at once shows as failed when it is reaped.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps({"jobs": share, "summaries": summaries}).encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        procs.append((proc, share))
    # Drain every worker's pipe at once, a frame at a time: a worker whose
    # pipe is full waits, and unpickling here overlaps the workers' reading.
    lock = threading.Lock()
    with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
        parts = list(pool.map(lambda p: _receive(p[0], sink, lock), procs))
    for (_, share), part in zip(procs, parts, strict=True):
        if part is not None:
            _merge(result, part)
        else:  # the worker failed: do its share here rather than lose it
            scan_jobs(root, share, result)
    return _sunk(result, sink)


# Takes runs as a cold scan finds them.
Sink = Callable[[list[RunFile]], None]


def _sunk(result: ScanResult, sink: Sink | None) -> ScanResult:
    """``result``, its runs given to ``sink`` (if any) rather than kept."""
    if sink is not None and result.runs:
        sink(result.runs)
        result.runs = []
    return result


# A worker sends what it found in frames of about this many runs.
FRAME_RUNS = 4096
_FRAME_HEAD = 8


def send_frame(out: BinaryIO, result: ScanResult) -> None:
    """Write ``result`` as one length-prefixed frame and empty it (in a worker)."""
    body = pickle.dumps(to_wire(result), protocol=pickle.HIGHEST_PROTOCOL)
    out.write(len(body).to_bytes(_FRAME_HEAD, "little"))
    out.write(body)
    result.runs, result.problems, result.watched, result.unwatched = [], {}, [], []
    result.summarized = 0


def _receive(proc: subprocess.Popen[bytes], sink: Sink | None, lock: threading.Lock) -> ScanResult | None:
    """Everything a worker sent (its runs given to ``sink``, if any); None when it failed
    (then what it sent is not trusted: its share is scanned again)."""
    assert proc.stdout is not None
    part = ScanResult()
    complete = True
    while head := proc.stdout.read(_FRAME_HEAD):
        body = proc.stdout.read(int.from_bytes(head, "little"))
        try:
            frame = from_wire(pickle.loads(body))
        except Exception:  # a torn frame from a worker that died
            complete = False
            break
        if sink is not None:
            with lock:
                sink(frame.runs)
            frame.runs = []
        _merge(part, frame)
    proc.stdout.close()
    return part if proc.wait() == 0 and complete else None


_RAW = RunFile._fields.index("raw")
# (runs, problems, watched, unwatched, summarized)
Wire = tuple[
    list[tuple[Any, ...]], dict[str, str], list[tuple[int, tuple[str, ...]]], list[tuple[str, ...]], int
]


def to_wire(result: ScanResult) -> Wire:
    """A worker's result as plain data (plain tuples, not RunFiles), for pickling.

    Ended runs travel without their bytes: the index keeps none for them.
    """
    rows = [tuple(r) if r.state not in FINAL_STATES else (*r[:_RAW], b"", r.signature) for r in result.runs]
    return rows, result.problems, result.watched, result.unwatched, result.summarized


def from_wire(wire: Wire) -> ScanResult:
    rows, problems, watched, unwatched, summarized = wire
    make = tuple.__new__
    runs: list[RunFile] = [make(RunFile, r) for r in rows]
    return ScanResult(
        runs=runs, problems=problems, watched=watched, unwatched=unwatched, summarized=summarized
    )


def _merge(into: ScanResult, part: ScanResult) -> None:
    into.runs.extend(part.runs)
    into.unchanged.extend(part.unchanged)
    into.problems.update(part.problems)
    into.watched.extend(part.watched)
    into.unwatched.extend(part.unwatched)
    into.summarized += part.summarized
