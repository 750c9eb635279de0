"""Run summaries: a line per ended run, in its job directory, for a viewer that starts cold.

    <status_dir>/<project>/<group>/<name>/.runs.jsonl        what each run's status.json held
    <checkpoints_dir>/<project>/<group>/<name>/.runs.jsonl   what each run's checkpoint directory held

A viewer with no index of its own would otherwise open every run's
status.json, and list every run's checkpoint directory, before it serves: at a
million runs that is millions of scattered reads, minutes on a disk whose cache
does not hold the trees. With summaries it reads one file per job directory in
each tree, serves at once, and checks the runs against the trees in the
background (``viewer_api.indexer``).

The trees stay the truth; a summary only says what an ended run left there
when its line was written. Each line is a JSON object whose ``run`` is the run
directory's name.

- A status line holds the status.json fields ``id`` and ``state`` as the file
  has them; ``ts``, its create, start, end and heartbeat times in seconds since
  the epoch (0.0 when absent), as a viewer parses them from the file
  (``common.rfc3339``); and ``file`` ([inode, mtime_ns, size]): which file that
  was, so a reader can tell a file rewritten since by a stat.
- A checkpoint line holds ``checkpoints``: for each checkpoint in the run's
  directory, [suffix, mtime, bytes, files, configuration file, has a job spec],
  measured as the viewer measures them (``common.checkpointdirs``). A run whose
  directory cannot be summarized (a link in it, too many files) has no line.

Whoever writes an ended run's status.json appends its lines (the conductor's
status writer, the benchmark's history generator). Lines are appended, never
edited: the last line for a run wins, a line whose run directory is gone is
ignored, and a line that does not parse (a write cut short) is skipped, its
run read from the tree. Only ended runs have lines: a live run changes, and is
read. The conductor's status writer, which removes run directories too,
compacts a summary (``compact``) once it has removed many runs of that job.

The name starts with '.', so a reader of the tree that does not know it skips
it, and it is never a checkpoint's name (``common.layout``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

import orjson

from baton.common.checkpointdirs import Checkpoint
from baton.common.jobs import FINAL_STATES
from baton.common.layout import CONFIG_FILES, is_complete_checkpoint
from baton.common.modes import RUN_FILE_MODE
from baton.common.names import is_valid_name
from baton.common.rfc3339 import rfc3339_seconds
from baton.v1 import job_pb2

SUMMARY_FILE = ".runs.jsonl"
# A summary larger than this is not read (a reader reads the runs' files instead).
MAX_SUMMARY_BYTES = 256 << 20
# The times a line holds, in this order.
_TIMES = ("create_time", "start_time", "end_time", "heartbeat_time")
# (a status line's fields but ``run`` and ``file``; the file's (inode, mtime_ns, size))
Entry = tuple[dict[str, Any], tuple[int, int, int]]
# What a checkpoint line may name as a checkpoint's configuration file (none: "").
_CONFIG_NAMES = frozenset({"", *CONFIG_FILES})


def summary_line(job: job_pb2.Job, st: os.stat_result) -> bytes | None:
    """The line for ``job``, whose status.json in its ``run_dir`` ``st`` describes; None while
    it is live."""
    if job.state not in FINAL_STATES:
        return None
    fields: dict[str, Any] = {"run": os.path.basename(job.run_dir)}
    if job.id:
        fields["id"] = job.id
    fields["state"] = job_pb2.JobState.Name(job.state)
    # Each time as the viewer parses it from status.json (0.0: absent), so the line gives the
    # very float a read of the file would, and a reader parses no time at all.
    fields["ts"] = [
        rfc3339_seconds(getattr(job, name).ToJsonString()) if job.HasField(name) else 0.0 for name in _TIMES
    ]
    fields["file"] = [st.st_ino, st.st_mtime_ns, st.st_size]
    return orjson.dumps(fields) + b"\n"


def append(job_dir: str, line: bytes) -> None:
    """Add ``line`` to the summary in ``job_dir`` (blocking). One write of a short line:
    writers appending at once never interleave within a line. OSError when it cannot, or when
    something other than a file (a link, a FIFO) has the summary's name."""
    fd = os.open(
        os.path.join(job_dir, SUMMARY_FILE),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
        RUN_FILE_MODE,
    )
    try:
        _regular(fd)
        os.write(fd, line)
    finally:
        os.close(fd)


# Never blocks on a FIFO left under the summary's name; never follows a link.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _regular(fd: int) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, f"{SUMMARY_FILE} is not a regular file")
    return st


def compact(dir_fd: int) -> int:
    """Drop the lines of runs whose directories are gone from the summary in the job directory
    open at ``dir_fd`` (blocking); how many were dropped. Replaced whole (temp file and
    rename), so a reader sees the old summary or the new one. For the one process that
    appends to it: a line appended meanwhile by another would be lost."""
    try:
        fd = os.open(SUMMARY_FILE, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    try:
        _regular(fd)
        data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    finally:
        os.close(fd)
    present = set(os.listdir(dir_fd))
    lines = data.splitlines(keepends=True)
    kept = [line for line in lines if _run_id(line) in present]
    if len(kept) == len(lines):
        return 0
    tmp = f".{SUMMARY_FILE}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, RUN_FILE_MODE, dir_fd=dir_fd)
    try:
        os.write(fd, b"".join(kept))
    finally:
        os.close(fd)
    os.replace(tmp, SUMMARY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return len(lines) - len(kept)


def _run_id(line: bytes) -> str | None:
    try:
        run_id = orjson.loads(line).get("run")
    except (ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None


def _lines(job_dir: str) -> Iterator[dict[str, Any]]:
    """The lines of the summary in ``job_dir`` that parse as objects with a string ``run``
    (blocking); none when it has none or it cannot be read."""
    try:
        fd = os.open(os.path.join(job_dir, SUMMARY_FILE), _READ_FLAGS)
    except OSError:
        return
    try:
        st = _regular(fd)
        if st.st_size > MAX_SUMMARY_BYTES:
            return
        data = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    except OSError:
        return
    finally:
        os.close(fd)
    for line in data.splitlines():
        try:
            fields = orjson.loads(line)
        except ValueError:
            continue  # cut short: that run is read from its file
        if type(fields) is dict and type(fields.get("run")) is str:
            yield fields


def read(job_dir: str) -> dict[str, Entry]:
    """The status summary in ``job_dir`` by run directory name (blocking); empty when it has
    none or it cannot be read."""
    out: dict[str, Entry] = {}
    for fields in _lines(job_dir):
        try:
            ino, mtime_ns, size = fields.pop("file")
        except (KeyError, TypeError, ValueError):
            continue  # not a status line: that run is read from its file
        if type(ino) is int and type(mtime_ns) is int and type(size) is int:
            out[fields.pop("run")] = (fields, (ino, mtime_ns, size))
    return out


def checkpoint_line(run_dir: str, checkpoints: list[Checkpoint] | None) -> bytes:
    """The line for the ended run whose checkpoint directory is ``run_dir`` and holds
    ``checkpoints`` (``common.checkpointdirs.run_checkpoints``); with None, a line that says
    nothing of them, so a reader lists the directory whatever lines came before."""
    return orjson.dumps({"run": os.path.basename(run_dir), "checkpoints": checkpoints}) + b"\n"


def read_checkpoints(job_dir: str) -> dict[str, list[Checkpoint]]:
    """The checkpoint summary in ``job_dir`` by run directory name (blocking): each run's
    checkpoints as its line has them. A line whose checkpoints are not all well formed, with
    names a run's checkpoint could have, is skipped: its run is read from the tree."""
    out: dict[str, list[Checkpoint]] = {}
    for fields in _lines(job_dir):
        found = fields.get("checkpoints")
        if type(found) is not list:
            out.pop(fields["run"], None)
            continue
        checkpoints = [_checkpoint(c) for c in found]
        if None in checkpoints:
            out.pop(fields["run"], None)  # what the run holds now is unknown: read it
        else:
            out[fields["run"]] = checkpoints  # type: ignore[assignment]
    return out


def _checkpoint(item: Any) -> Checkpoint | None:
    if type(item) is not list or len(item) != 6:
        return None
    suffix, mtime, size, files, config, spec = item
    if (
        type(suffix) is not str
        or not is_complete_checkpoint(suffix)
        or not is_valid_name(suffix)
        or type(mtime) not in (int, float)
        or type(size) is not int
        or type(files) is not int
        or config not in _CONFIG_NAMES
        or type(spec) is not bool
    ):
        return None
    return (suffix, float(mtime), size, files, config, spec)
