"""Reading the status and checkpoint trees (blocking; run in worker threads).

    <status_dir>/<project>/<group>/<name>/<run_id>/status.json
    <checkpoints_dir>/<project>/<group>/<name>/<suffix>/

Everything here only reads. A directory whose name breaks the naming rule, a
link that leads outside its root, and a status.json that is not a Job are
reported as problems (counted in the stats), never indexed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import heapq
import json
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import orjson

from baton.v1 import job_pb2
from common.layout import CONFIG_FILES, JOB_SPEC_FILE, STATUS_FILE, is_complete_checkpoint
from common.names import is_valid_name
from common.protojson import check_shape

RunKey = tuple[str, str, str, str]
JobKey = tuple[str, str, str]
OnDir = Callable[[str, tuple[str, ...]], None]

INVALID_STATUS = "invalid_status"
INVALID_NAME = "invalid_name"
OUTSIDE_LINK = "outside_link"

_STATES = {v.name: v.number for v in job_pb2.JobState.DESCRIPTOR.values}
_EPOCH = datetime.datetime(1970, 1, 1)
# Seconds at the start of each minute seen ("YYYY-MM-DDTHH:MM:" -> seconds):
# runs cluster in time, so most timestamps hit this cache.
_MINUTES: dict[str, float] = {}
_MINUTES_MAX = 200_000
# A hash of a status file's inode, mtime and size: whether it changed since read.
Signature = int


def _minute(prefix: str) -> float:
    if prefix[16] != ":":
        raise ValueError(f"not an RFC 3339 time: {prefix!r}")
    seconds = (datetime.datetime.fromisoformat(prefix[:16]) - _EPOCH).total_seconds()
    if len(_MINUTES) >= _MINUTES_MAX:
        _MINUTES.clear()
    _MINUTES[prefix] = seconds
    return seconds


def rfc3339_seconds(text: Any) -> float:
    """Seconds since the epoch of a proto3-JSON timestamp; 0.0 when absent."""
    if not text:
        return 0.0
    if not isinstance(text, str):
        raise ValueError("timestamp is not a string")
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T" and text[17:19].isdigit():
        # What json_format writes: UTC, whole seconds, then an optional fraction.
        prefix = text[:17]
        minute = _MINUTES.get(prefix)
        if minute is None:
            minute = _minute(prefix)
        whole = minute + int(text[17:19])
        if len(text) == 20:
            return whole
        if text[19] == "." and text[20:-1].isdigit():
            return whole + float(text[19:-1])
    return datetime.datetime.fromisoformat(text).timestamp()


class RunFile(NamedTuple):
    """What the index keeps of one status.json: its key fields and its bytes.

    A tuple, because a cold scan makes 100,000 of them and sends them between
    processes: a tuple is made, pickled and unpickled several times faster
    than an object.
    """

    key: RunKey
    job_id: str
    state: int
    create_ts: float
    start_ts: float
    end_ts: float
    heartbeat_ts: float
    raw: bytes
    signature: Signature


@dataclass(slots=True)
class CheckpointFile:
    key: JobKey
    suffix: str
    path: str
    create_ts: float
    size_bytes: int
    file_count: int
    config_file: str
    has_job_spec: bool


@dataclass
class ScanResult:
    runs: list[RunFile] = field(default_factory=list)
    # Runs whose status.json did not change since the signature the caller gave.
    unchanged: list[RunKey] = field(default_factory=list)
    checkpoints: list[CheckpointFile] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    # Called with each directory (its path, and its names below the root)
    # before it is listed: the indexer watches it then, so nothing created
    # while the scan runs goes unnoticed.
    on_dir: OnDir | None = None
    # Inotify watches that scan workers added for the caller: (descriptor, names).
    watched: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    # Directories they could not watch (out of inotify watches), by names.
    unwatched: list[tuple[str, ...]] = field(default_factory=list)

    def enter(self, path: str, rel: tuple[str, ...]) -> None:
        if self.on_dir is not None:
            self.on_dir(path, rel)


def parse_run(key: RunKey, raw: bytes, signature: Signature) -> RunFile:
    """Index fields of a status.json; ValueError when it is not a Job."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # orjson takes strict RFC 8259 only; what it refuses (NaN, huge
        # integers) the standard parser decides, as every other reader does.
        try:
            data = json.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    check_shape(job_pb2.Job, data)
    state = data.get("state", 0)
    if isinstance(state, str):
        if state not in _STATES:
            raise ValueError(f"unknown state {state!r}")
        state = _STATES[state]
    elif not isinstance(state, int):
        raise ValueError("state is not an enum")
    job_id = data.get("id", "")
    if not isinstance(job_id, str):
        raise ValueError("id is not a string")
    if job_id == key[3]:
        job_id = key[3]  # one string object for both, not two
    try:
        create = rfc3339_seconds(data.get("createTime"))
        start = rfc3339_seconds(data.get("startTime"))
        end = rfc3339_seconds(data.get("endTime"))
        beat = rfc3339_seconds(data.get("heartbeatTime"))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad timestamp: {exc}") from None
    return RunFile(key, job_id, state, create, start, end, beat, raw, signature)


def _signature(st: os.stat_result) -> Signature:
    return hash((st.st_ino, st.st_mtime_ns, st.st_size))


def inside(root: str, path: str) -> bool:
    """Whether ``path``, links resolved, stays under ``root``."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def _subdirs(path: str, root: str, problems: dict[str, str]) -> list[tuple[str, str]]:
    """(name, path) of the valid subdirectories of ``path``; problems noted."""
    out: list[tuple[str, str]] = []
    try:
        entries = list(os.scandir(path))
    except OSError:
        return out
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=True):
                continue
        except OSError:
            continue
        if entry.name.startswith(".") or entry.name.endswith(".tmp"):
            continue  # being written, or not ours
        if not is_valid_name(entry.name):
            problems[entry.path] = INVALID_NAME
            continue
        if entry.is_symlink() and not inside(root, entry.path):
            problems[entry.path] = OUTSIDE_LINK
            continue
        out.append((entry.name, entry.path))
    return out


def read_run(root: str, key: RunKey, run_dir: str, known: Signature | None = None) -> RunFile | str | None:
    """A run's status.json: a RunFile, None when unchanged since ``known``, or a problem."""
    path = f"{run_dir}/{STATUS_FILE}"
    if known is not None:
        # One stat instead of open, fstat and close: most files have not changed.
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return "missing"
        except OSError:
            pass
        else:
            if stat.S_ISREG(st.st_mode) and _signature(st) == known:
                return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return "missing"
    except OSError:
        if os.path.islink(path) and not inside(root, path):
            return OUTSIDE_LINK
        if os.path.islink(path):
            try:
                fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return INVALID_STATUS
        else:
            return INVALID_STATUS
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return INVALID_STATUS  # a directory or a device is no status file
        sig = _signature(st)
        if known is not None and sig == known:
            return None
        # One read nearly always does: status files are a few kilobytes.
        raw = os.read(fd, max(st.st_size + 1, 4096))
        while len(raw) < st.st_size:
            more = os.read(fd, 1 << 16)
            if not more:
                break
            raw += more
    except OSError:
        return INVALID_STATUS
    finally:
        os.close(fd)
    try:
        return parse_run(key, raw, sig)
    except ValueError:
        return INVALID_STATUS


def scan_status(
    root: str, known: Mapping[RunKey, Signature] | None = None, on_dir: OnDir | None = None
) -> ScanResult:
    """Every run under ``root``; with ``known``, unchanged files are not re-read."""
    result = ScanResult(on_dir=on_dir)
    if not os.path.isdir(root):
        return result
    root = os.path.realpath(root)
    scan_status_under(root, (), root, result, known or {})
    return result


def scan_jobs(root: str, jobs: list[JobKey], result: ScanResult) -> ScanResult:
    """Scan the runs of each job directory (project/group/name) into ``result``."""
    for job in jobs:
        scan_status_under(root, job, os.path.join(root, *job), result, {})
    return result


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
) -> ScanResult:
    """A full scan split by job directory across ``workers`` processes (the cold start).

    Parsing 100,000 status files is CPU work that one interpreter does on one
    core. Worker processes (``python -m viewer_api.scan_worker``: fresh interpreters,
    so nothing of a running server is forked and no caller's main module is
    re-imported) each take a share of about as many runs. With ``watch``, each
    worker watches every directory of its share before listing it, and the
    result's ``watched`` says which descriptor is which directory; the
    directories above the job directories are scanned here and go to
    ``on_dir``, as in a serial scan.
    """
    result = ScanResult(on_dir=on_dir)
    if not os.path.isdir(root):
        return result
    root = os.path.realpath(root)
    result.enter(root, ())
    jobs: list[tuple[JobKey, int]] = []
    for project, ppath in _subdirs(root, root, result.problems):
        result.enter(ppath, (project,))
        for group, gpath in _subdirs(ppath, root, result.problems):
            result.enter(gpath, (project, group))
            jobs.extend(
                ((project, group, name), _run_count(npath))
                for name, npath in _subdirs(gpath, root, result.problems)
            )
    if workers <= 1 or len(jobs) < 2 or sum(runs for _, runs in jobs) < PARALLEL_SCAN_MIN_RUNS:
        return scan_jobs(root, [job for job, _ in jobs], result)
    # Every share goes to a worker: this process has the checkpoint scan and
    # the merging to do, and threads here would only fight over one lock.
    shares = _shares(jobs, workers)
    # -P and this code's own folder first on the path: a worker runs the same
    # code as its parent, whatever folder the viewer was started from.
    command = [sys.executable, "-P", "-m", "viewer_api.scan_worker", root]
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
            proc.stdin.write(json.dumps(share).encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        procs.append((proc, share))
    # Drain every worker's pipe at once, a frame at a time: a worker whose
    # pipe is full waits, and unpickling here overlaps the workers' reading.
    with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
        parts = list(pool.map(lambda p: _receive(p[0]), procs))
    for (_, share), part in zip(procs, parts, strict=True):
        if part is not None:
            _merge(result, part)
        else:  # the worker failed: do its share here rather than lose it
            scan_jobs(root, share, result)
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


def _receive(proc: subprocess.Popen[bytes]) -> ScanResult | None:
    """Everything a worker sent; None when it failed (what it sent is then not trusted)."""
    assert proc.stdout is not None
    part = ScanResult()
    complete = True
    while head := proc.stdout.read(_FRAME_HEAD):
        body = proc.stdout.read(int.from_bytes(head, "little"))
        try:
            _merge(part, from_wire(pickle.loads(body)))
        except Exception:  # a torn frame from a worker that died
            complete = False
            break
    proc.stdout.close()
    return part if proc.wait() == 0 and complete else None


Wire = tuple[list[tuple[Any, ...]], dict[str, str], list[tuple[int, tuple[str, ...]]], list[tuple[str, ...]]]


def to_wire(result: ScanResult) -> Wire:
    """A worker's result as plain data (plain tuples, not RunFiles), for pickling."""
    return [tuple(r) for r in result.runs], result.problems, result.watched, result.unwatched


def from_wire(wire: Wire) -> ScanResult:
    rows, problems, watched, unwatched = wire
    make = tuple.__new__
    runs: list[RunFile] = [make(RunFile, r) for r in rows]
    return ScanResult(runs=runs, problems=problems, watched=watched, unwatched=unwatched)


def _merge(into: ScanResult, part: ScanResult) -> None:
    into.runs.extend(part.runs)
    into.unchanged.extend(part.unchanged)
    into.problems.update(part.problems)
    into.watched.extend(part.watched)
    into.unwatched.extend(part.unwatched)


def scan_status_under(
    root: str, prefix: tuple[str, ...], path: str, result: ScanResult, known: Mapping[RunKey, Signature]
) -> None:
    """Scan the subtree at ``path`` (whose names so far are ``prefix``) into ``result``."""
    result.enter(path, prefix)
    if len(prefix) == 4:
        key: RunKey = prefix  # type: ignore[assignment]
        got = read_run(root, key, path, known.get(key))
        if got is None:
            result.unchanged.append(key)
        elif isinstance(got, RunFile):
            result.runs.append(got)
        elif got != "missing":
            result.problems[os.path.join(path, STATUS_FILE)] = got
        return
    for name, sub in _subdirs(path, root, result.problems):
        # Interned: the index and the watches then share one string per name.
        scan_status_under(root, (*prefix, sys.intern(name)), sub, result, known)


def _dir_usage(path: str) -> tuple[int, int, set[str]]:
    """Bytes and files below ``path`` (links not followed), and the top level's file names."""
    size = files = 0
    top: set[str] = set()
    stack = [path]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                            continue
                        size += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
                    files += 1
                    if current is path:
                        top.add(entry.name)
        except OSError:
            continue
    return size, files, top


def read_checkpoint(root: str, key: JobKey, suffix: str, path: str) -> CheckpointFile | str | None:
    """One complete checkpoint directory, a problem, or None when not a checkpoint."""
    if not is_complete_checkpoint(suffix):
        return None
    try:
        lst = os.lstat(path)
    except OSError:
        return None  # gone
    if not is_valid_name(suffix):
        return INVALID_NAME
    if stat.S_ISLNK(lst.st_mode):
        if not inside(root, path):
            return OUTSIDE_LINK
        try:
            lst = os.stat(path)
        except OSError:
            return None
    if not stat.S_ISDIR(lst.st_mode):
        return None
    size, files, top = _dir_usage(path)
    config = next((c for c in CONFIG_FILES if c in top), "")
    return CheckpointFile(key, suffix, path, lst.st_mtime, size, files, config, JOB_SPEC_FILE in top)


def scan_checkpoints(root: str, on_dir: OnDir | None = None) -> ScanResult:
    result = ScanResult(on_dir=on_dir)
    if not os.path.isdir(root):
        return result
    root = os.path.realpath(root)
    scan_checkpoints_under(root, (), root, result)
    return result


def scan_checkpoints_under(root: str, prefix: tuple[str, ...], path: str, result: ScanResult) -> None:
    if len(prefix) == 4:
        key: JobKey = prefix[:3]  # type: ignore[assignment]
        got = read_checkpoint(root, key, prefix[3], path)
        if isinstance(got, CheckpointFile):
            result.checkpoints.append(got)
        elif isinstance(got, str):
            result.problems[path] = got
        return
    result.enter(path, prefix)
    if len(prefix) == 3:
        # Checkpoint names that are still being written are skipped, not problems.
        try:
            entries = [e for e in os.scandir(path) if e.is_dir(follow_symlinks=True)]
        except OSError:
            return
        for entry in entries:
            scan_checkpoints_under(root, (*prefix, entry.name), entry.path, result)
        return
    for name, sub in _subdirs(path, root, result.problems):
        scan_checkpoints_under(root, (*prefix, name), sub, result)


def read_text(path: Path, limit: int = 8 << 20) -> str:
    """A small file's text, opened read-only; ValueError when too large."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data.decode()
