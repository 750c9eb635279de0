"""Reading the status and checkpoint trees (blocking; run in worker threads).

    <status_dir>/<project>/<group>/<name>/<run_id>/status.json
    <checkpoints_dir>/<project>/<group>/<name>/<run_id>/<suffix>/   a run's, marked by .baton-run
    <checkpoints_dir>/<project>/<group>/<name>/<suffix>/            the plain layout

Everything here only reads. A directory whose name breaks the naming rule, a
link that leads outside its root, and a status.json that is not a Job are
reported as problems (counted in the stats), never indexed.
"""

from __future__ import annotations

import concurrent.futures
import os
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from baton.common import checkpointdirs, protojson, runsummary
from baton.common.jobfile import MAX_STATUS_BYTES, load_json
from baton.common.layout import STATUS_FILE, is_complete_checkpoint
from baton.common.names import is_valid_name
from baton.common.protojson import check_shape
from baton.common.rfc3339 import rfc3339_seconds
from baton.common.safeopen import UnsafePath, open_beneath
from baton.v1 import job_pb2

RunKey = tuple[str, str, str, str]
JobKey = tuple[str, str, str]
# Called with a directory's path and names before it is listed; True when it
# watched the directory just now (a hook that watches nothing may return None).
OnDir = Callable[[str, tuple[str, ...]], "bool | None"]
# Called with a run directory's path, its key and what reading its
# status.json found (a RunFile; None when unchanged since a known signature;
# "missing"; or a problem); True when it watched the directory just now (then
# the file is read again: a change made before the watch raised no event).
OnRun = Callable[[str, RunKey, "RunFile | str | None"], bool]

INVALID_STATUS = "invalid_status"
INVALID_NAME = "invalid_name"
OUTSIDE_LINK = "outside_link"

_STATES = {v.name: v.number for v in job_pb2.JobState.DESCRIPTOR.values}
# States a run never leaves: its status.json changes only if another program rewrites it.
FINAL_STATES = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})
# A hash of a status file's inode, mtime and size: whether it changed since read.
Signature = int


class RunFile(NamedTuple):
    """What the index takes from one status.json: its key fields, and its bytes
    (empty when the reader dropped them: a cold scan keeps only live runs').

    A tuple, because a cold scan makes a million of them and sends them
    between processes: a tuple is made, pickled and unpickled several times
    faster than an object.
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
    # The run whose checkpoint directory holds it; empty in the plain layout.
    run_id: str
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
    # Called with each directory above the runs' (its path, and its names
    # below the root) before it is listed: the indexer watches it then, so
    # nothing created while the scan runs goes unnoticed.
    on_dir: OnDir | None = None
    # Called with each run directory once its status.json is read: the
    # indexer watches the directories of runs that may still change.
    on_run: OnRun | None = None
    # Inotify watches that scan workers added for the caller: (descriptor, names).
    watched: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    # Directories they could not watch (out of inotify watches), by names.
    unwatched: list[tuple[str, ...]] = field(default_factory=list)
    # Whether each entry of a job's checkpoint directory goes to ``on_dir``
    # before it is read, checkpoint or not. A full scan sends only the runs'
    # directories (a watch per checkpoint would be wasted); a rescan after an
    # event sends every one, since a directory just made may become a run's
    # when its marker is written a moment later.
    watch_items: bool = False
    # Whether an ended run is taken from its job directory's summary when it has a line
    # there (``common.runsummary``) rather than read (a cold start); how many were.
    summaries: bool = False
    summarized: int = 0

    def enter(self, path: str, rel: tuple[str, ...]) -> bool:
        """Tell ``on_dir`` of a directory about to be listed; True when it was watched just now."""
        return self.on_dir is not None and bool(self.on_dir(path, rel))


# What a Job's top-level fields take, as check_shape knows it.
_JOB_SHAPE = protojson._shape(job_pb2.Job.DESCRIPTOR)
# Status files come in a few layouts (the same keys, the same JSON types):
# for each seen, the keys whose values check_shape must still look at (a
# list's items, an int64 written as a string); the others fit by type alone.
_LAYOUTS: dict[tuple[tuple[str, ...], tuple[type, ...]], tuple[str, ...]] = {}
_LAYOUTS_MAX = 4096


def _check_job(data: dict[str, Any]) -> None:
    """check_shape for a Job, a few times faster on a layout seen before; ValueError when not a Job."""
    layout = (tuple(data), tuple(map(type, data.values())))
    look = _LAYOUTS.get(layout)
    if look is None:
        check_shape(job_pb2.Job, data)
        look = tuple(
            k
            for k, v in data.items()
            if k in _JOB_SHAPE and v is not None and type(v) not in _JOB_SHAPE[k][3]
        )
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[layout] = look
    elif look:
        check_shape(job_pb2.Job, {k: data[k] for k in look})


def parse_run(key: RunKey, raw: bytes, signature: Signature) -> RunFile:
    """Index fields of a status.json; ValueError when it is not a Job."""
    data = load_json(raw)
    if data.__class__ is not dict:
        raise ValueError("not a JSON object")
    return _run(key, data, raw, signature)


def summarized_run(key: RunKey, entry: runsummary.Entry) -> RunFile | None:
    """An ended run as its job directory's summary has it (``common.runsummary``); None
    when the line is not one an ended run's status.json could have."""
    fields, (ino, mtime_ns, size) = entry
    name, job_id, times = fields.get("state"), fields.get("id", ""), fields.get("ts")
    state = _STATES.get(name) if name.__class__ is str else None
    if (
        state not in FINAL_STATES
        or job_id.__class__ is not str
        or times.__class__ is not list
        or len(times) != 4
    ):
        return None
    create, start, end, beat = times
    if not (create.__class__ is start.__class__ is end.__class__ is beat.__class__ is float):
        return None
    if job_id == key[3]:
        job_id = key[3]  # one string object for both, not two
    return RunFile(key, job_id, state, create, start, end, beat, b"", hash((ino, mtime_ns, size)))


def _run(key: RunKey, data: dict[str, Any], raw: bytes, signature: Signature) -> RunFile:
    _check_job(data)
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
    # As summarized_run makes it from a summary's line.
    return hash((st.st_ino, st.st_mtime_ns, st.st_size))


def inside(root: str, path: str) -> bool:
    """Whether ``path``, links resolved, stays under ``root``."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root + os.sep)


def subdirs(path: str, root: str, problems: dict[str, str]) -> list[tuple[str, str]]:
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


def read_status(
    root: str, run_dir: str, known: Signature | None = None
) -> tuple[bytes, Signature] | str | None:
    """A run's status.json bytes and signature: None when unchanged since ``known``, "missing",
    or a problem otherwise."""
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
        # O_NONBLOCK: a FIFO named status.json must not hold the scan for good.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "missing"
    except OSError:
        if not os.path.islink(path):
            return INVALID_STATUS
        # A link: read only if it resolves inside the tree (checked race-free).
        try:
            fd = open_beneath(root, path)
        except UnsafePath as exc:
            return OUTSIDE_LINK if exc.outside else INVALID_STATUS
        except OSError:
            return INVALID_STATUS
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return INVALID_STATUS  # a directory, FIFO or device is no status file
        if st.st_size > MAX_STATUS_BYTES:
            return INVALID_STATUS  # never read whole: refused by its size alone
        sig = _signature(st)
        if known is not None and sig == known:
            return None
        # One read nearly always does: status files are a few kilobytes. Never
        # more than the cap, should the file grow while it is read.
        raw = os.read(fd, min(max(st.st_size + 1, 4096), MAX_STATUS_BYTES + 1))
        while len(raw) < st.st_size and len(raw) <= MAX_STATUS_BYTES:
            more = os.read(fd, 1 << 16)
            if not more:
                break
            raw += more
    except OSError:
        return INVALID_STATUS
    finally:
        os.close(fd)
    return raw, sig


def read_run(root: str, key: RunKey, run_dir: str, known: Signature | None = None) -> RunFile | str | None:
    """A run's status.json: a RunFile, None when unchanged since ``known``, "missing", or a problem."""
    got = read_status(root, run_dir, known)
    if not isinstance(got, tuple):
        return got
    try:
        return parse_run(key, *got)
    except ValueError:
        return INVALID_STATUS


def ended(got: RunFile | str | None) -> bool:
    """Whether a read found a run that has ended (its directory then needs no watch)."""
    return isinstance(got, RunFile) and got.state in FINAL_STATES


def read_run_watched(
    root: str, key: RunKey, run_dir: str, known: Signature | None, on_run: OnRun | None
) -> RunFile | str | None:
    """``read_run``, then ``on_run``; if that watched the directory just now, read again (and
    tell ``on_run`` what was found, should the run have ended meanwhile)."""
    got = read_run(root, key, run_dir, known)
    if on_run is not None and on_run(run_dir, key, got):
        again = read_run(root, key, run_dir, got.signature if isinstance(got, RunFile) else known)
        if again is not None:
            got = again
            on_run(run_dir, key, got)
    return got


def scan_status(
    root: str,
    known: Mapping[RunKey, Signature] | None = None,
    on_dir: OnDir | None = None,
    on_run: OnRun | None = None,
    threads: int = 1,
) -> ScanResult:
    """Every run under ``root``; with ``known``, unchanged files are not re-read.

    With ``threads``, that many job directories are scanned at once: on a
    disk whose cache does not hold the tree, each run costs reads that wait
    (its directory, its status.json's inode), and a disk answers several at a
    time about as fast as one. The hooks are called from those threads.
    """
    result = ScanResult(on_dir=on_dir, on_run=on_run)
    if not os.path.isdir(root):
        return result
    root = os.path.realpath(root)
    known = known or {}
    if threads <= 1:
        scan_status_under(root, (), root, result, known)
        return result
    jobs: list[tuple[tuple[str, ...], str]] = []
    result.enter(root, ())
    for project, ppath in subdirs(root, root, result.problems):
        project = sys.intern(project)
        result.enter(ppath, (project,))
        for group, gpath in subdirs(ppath, root, result.problems):
            group = sys.intern(group)
            result.enter(gpath, (project, group))
            jobs.extend(
                ((project, group, sys.intern(name)), npath)
                for name, npath in subdirs(gpath, root, result.problems)
            )

    def scan_job(job: tuple[tuple[str, ...], str]) -> ScanResult:
        part = ScanResult(on_dir=on_dir, on_run=on_run)
        scan_status_under(root, job[0], job[1], part, known)  # type: ignore[arg-type]
        return part

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for part in pool.map(scan_job, jobs):
            result.runs.extend(part.runs)
            result.unchanged.extend(part.unchanged)
            result.problems.update(part.problems)
    return result


def scan_jobs(root: str, jobs: list[JobKey], result: ScanResult) -> ScanResult:
    """Scan the runs of each job directory (project/group/name) into ``result``."""
    for job in jobs:
        scan_status_under(root, job, os.path.join(root, *job), result, {})
    return result


def scan_status_under(
    root: str, prefix: tuple[str, ...], path: str, result: ScanResult, known: Mapping[RunKey, Signature]
) -> None:
    """Scan the subtree at ``path`` (whose names so far are ``prefix``) into ``result``."""
    if len(prefix) == 4:
        key: RunKey = prefix  # type: ignore[assignment]
        got = read_run_watched(root, key, path, known.get(key), result.on_run)
        if got is None:
            result.unchanged.append(key)
        elif isinstance(got, RunFile):
            result.runs.append(got)
        elif got != "missing":
            result.problems[os.path.join(path, STATUS_FILE)] = got
        return
    result.enter(path, prefix)
    runs = len(prefix) == 3
    # Ended runs from their lines, unread; a run with no usable line (live ones, whose
    # directories are then watched) is read as before. A line made stale by a rewrite is
    # put right by the reconciliation that follows a start from summaries.
    summary = runsummary.read(path) if runs and result.summaries else None
    for name, sub in subdirs(path, root, result.problems):
        if summary:
            entry = summary.get(name)
            found = None if entry is None else summarized_run((*prefix, name), entry)  # type: ignore[arg-type]
            if found is not None:
                result.runs.append(found)
                result.summarized += 1
                continue
        # Names above the runs interned: the index and the watches then share one string
        # per name. A run id is one run's own (interning a million would only cost).
        scan_status_under(root, (*prefix, name if runs else sys.intern(name)), sub, result, known)


def _checkpoint_dir(root: str, name: str, path: str) -> os.stat_result | str | None:
    """The status of a complete, validly named directory at ``path``; a problem; None when no checkpoint."""
    if not is_complete_checkpoint(name):
        return None
    try:
        lst = os.lstat(path)
    except OSError:
        return None  # gone
    if not is_valid_name(name):
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
    return lst


def _checkpoint(
    key: JobKey, run_id: str, suffix: str, path: str, mtime: float, usage: checkpointdirs.Usage
) -> CheckpointFile:
    return CheckpointFile(key, run_id, suffix, path, mtime, *usage)


def read_checkpoint(
    root: str, key: JobKey, run_id: str, suffix: str, path: str
) -> CheckpointFile | str | None:
    """One checkpoint in a run's directory: a CheckpointFile, a problem, or None when not a checkpoint.

    Every complete subdirectory of a run's directory is a checkpoint: the
    marker means something one level up only.
    """
    lst = _checkpoint_dir(root, suffix, path)
    if not isinstance(lst, os.stat_result):
        return lst
    return _checkpoint(key, run_id, suffix, path, lst.st_mtime, checkpointdirs.usage(path))


def read_checkpoint_item(
    root: str,
    rel: tuple[str, str, str, str],
    path: str,
    result: ScanResult,
    entry: os.DirEntry[str] | None = None,
) -> None:
    """One entry of a job's checkpoint directory into ``result``: a plain checkpoint, or a run's
    checkpoint directory (marked) with its checkpoints.

    ``entry``, from the job directory's listing, spares a system call for a
    real directory (a link is looked at closely). The entry is listed once;
    a run's directory goes to ``on_dir`` before its checkpoints are read, and
    is listed again if that watched it just now, so one renamed in meanwhile
    is not missed. A million runs' directories are most of a cold scan's
    checkpoint tree, so each costs one listing and nothing more.
    """
    key: JobKey = rel[:3]  # type: ignore[assignment]
    name = rel[3]
    lst: os.stat_result | None = None
    if entry is not None and not entry.is_symlink() and is_complete_checkpoint(name):
        # The listing's file type says a real directory: no stat needed yet.
        if not is_valid_name(name):
            result.problems[path] = INVALID_NAME
            return
        if not entry.is_dir(follow_symlinks=False):
            return
    else:
        found = _checkpoint_dir(root, name, path)
        if isinstance(found, str):
            result.problems[path] = found
        if not isinstance(found, os.stat_result):
            return
        lst = found
    if result.watch_items:
        result.enter(path, rel)
    listing = checkpointdirs.listing(path)
    if listing is None:
        return  # gone meanwhile
    if not checkpointdirs.has_marker(listing):
        if lst is None:
            try:
                lst = os.stat(path)
            except OSError:
                return
        usage = checkpointdirs.usage(path, listing)
        result.checkpoints.append(_checkpoint(key, "", name, path, lst.st_mtime, usage))
        return
    if not result.watch_items and result.enter(path, rel):
        listing = checkpointdirs.listing(path) or []
    for sub in listing:
        try:
            if not sub.is_dir(follow_symlinks=True):
                continue
        except OSError:
            continue
        got = read_checkpoint(root, key, name, sub.name, sub.path)
        if isinstance(got, CheckpointFile):
            result.checkpoints.append(got)
        elif isinstance(got, str):
            result.problems[sub.path] = got


def scan_checkpoints(
    root: str, on_dir: OnDir | None = None, threads: int = 1, *, summaries: bool = False
) -> ScanResult:
    """Every checkpoint under ``root``.

    With ``threads``, that many job directories are read at once: on a disk
    whose cache does not hold the tree, each entry costs a read that waits,
    and a disk answers several at a time about as fast as one. With
    ``summaries``, an ended run's checkpoints are taken from its line in its
    job directory's summary (``common.runsummary``) when it has one, its
    directory unlisted (a cold start).
    """
    result = ScanResult(on_dir=on_dir, summaries=summaries)
    if not os.path.isdir(root):
        return result
    root = os.path.realpath(root)
    if threads <= 1:
        scan_checkpoints_under(root, (), root, result)
        return result
    jobs: list[tuple[tuple[str, ...], str]] = []
    result.enter(root, ())
    for project, ppath in subdirs(root, root, result.problems):
        result.enter(ppath, (project,))
        for group, gpath in subdirs(ppath, root, result.problems):
            result.enter(gpath, (project, group))
            jobs.extend(
                ((project, group, name), npath) for name, npath in subdirs(gpath, root, result.problems)
            )

    def scan_job(job: tuple[tuple[str, ...], str]) -> ScanResult:
        part = ScanResult(on_dir=on_dir, summaries=summaries)
        scan_checkpoints_under(root, job[0], job[1], part)
        return part

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for part in pool.map(scan_job, jobs):
            result.checkpoints.extend(part.checkpoints)
            result.problems.update(part.problems)
            result.summarized += part.summarized
    return result


def scan_checkpoints_under(root: str, prefix: tuple[str, ...], path: str, result: ScanResult) -> None:
    """Scan the subtree at ``path`` (whose names so far are ``prefix``, at most four) into ``result``."""
    if len(prefix) == 4:
        read_checkpoint_item(root, prefix, path, result)  # type: ignore[arg-type]
        return
    result.enter(path, prefix)
    if len(prefix) == 3:
        key: JobKey = prefix  # type: ignore[assignment]
        summary = runsummary.read_checkpoints(path) if result.summaries else None
        # Checkpoint names that are still being written are skipped, not problems.
        for entry in checkpointdirs.listing(path) or ():
            try:
                if not entry.is_dir(follow_symlinks=True):
                    continue
            except OSError:
                continue
            if summary and _summarized(key, entry, summary, result):
                continue
            item: tuple[str, str, str, str] = (*key, entry.name)
            read_checkpoint_item(root, item, entry.path, result, entry)
        return
    for name, sub in subdirs(path, root, result.problems):
        scan_checkpoints_under(root, (*prefix, name), sub, result)


def _summarized(
    key: JobKey,
    entry: os.DirEntry[str],
    summary: dict[str, list[checkpointdirs.Checkpoint]],
    result: ScanResult,
) -> bool:
    """Take the checkpoints of the run whose directory ``entry`` is from its summary line;
    False when it has none, or when the entry is not one a line may speak of (a link, or a
    name the scan would skip or report)."""
    checkpoints = summary.get(entry.name)
    if checkpoints is None or entry.is_symlink():
        return False
    if not is_complete_checkpoint(entry.name) or not is_valid_name(entry.name):
        return False
    for suffix, mtime, *usage in checkpoints:
        path = os.path.join(entry.path, suffix)
        result.checkpoints.append(CheckpointFile(key, entry.name, suffix, path, mtime, *usage))  # type: ignore[arg-type]
    result.summarized += 1
    return True
