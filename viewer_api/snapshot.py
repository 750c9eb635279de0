"""The viewer's index snapshot: what it knew at its last scan, in a file of its own.

At a million runs a cold scan reads a million status files: tens of seconds
with the tree in the page cache, minutes when it is not (each file is a
random read on the disk). A restart that knew the index a minute ago need not
wait for that: it loads this snapshot (a second or two), serves at once, and
reconciles against the tree in the background with the reconciliation scan
it runs every five minutes anyway (``indexer.py``). That scan compares each
status.json's signature (inode, mtime, size) with the snapshot's and reads
only files that changed, removes runs that are gone and adds new ones, so the
index converges to exactly what a fresh scan gives; until it has, a page may
list a run as it was when the viewer stopped. A single run's Job is read from
its file anyway, so GetJob is right at once.

The file lives outside the trees (the viewer never writes in what it
indexes): by default under ``$XDG_CACHE_HOME/baton/viewer`` (``~/.cache``),
named by a hash of the two roots, so viewers of different trees never share
one. It is written after a scan that changed the index, whole, to a temporary
file renamed over the old one: a crash leaves the old snapshot or the new,
never half of one. A snapshot that cannot be read, or was written for other
roots, by another format or another Python (signatures are Python hashes),
is ignored with a warning: the viewer then scans cold, as without one.

The format is JSON (orjson, which the project already uses): plain data that
a damaged or foreign file can only make unreadable, never make run code, and
about as fast to load as pickle here. Rows carry only what ``RunEntry``
holds; live runs' Jobs are not kept (they are read from their files when
asked, and the reconciliation reads any that changed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from baton.viewer_api.index import RunEntry
from baton.viewer_api.scan import CheckpointFile, JobKey

FORMAT = 1
# What makes a signature (a Python hash of ints) mean the same in another process.
_HASH = f"{sys.hash_info.algorithm}/{sys.hash_info.width}/{sys.version_info[0]}.{sys.version_info[1]}"
OFF = "off"


def default_path(status_dir: str, checkpoints_dir: str) -> Path:
    """Where a viewer of these two roots keeps its snapshot unless told otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots = f"{os.path.realpath(status_dir)}\0{os.path.realpath(checkpoints_dir)}".encode()
    return Path(base) / "baton" / "viewer" / f"index-{hashlib.sha256(roots).hexdigest()[:20]}.json"


@dataclass
class Snapshot:
    """What a snapshot holds: the runs' records, the checkpoints and the problems."""

    runs: list[RunEntry] = field(default_factory=list)
    checkpoints: list[CheckpointFile] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)


class SnapshotUnusable(Exception):
    """The snapshot is absent, damaged, or not for these roots (the message says which)."""


def _header(status_root: str, checkpoints_root: str) -> dict[str, Any]:
    return {"format": FORMAT, "hash": _HASH, "status_root": status_root, "checkpoints_root": checkpoints_root}


def dump(path: Path, status_root: str, checkpoints_root: str, snapshot: Snapshot) -> int:
    """Write ``snapshot`` to ``path`` (blocking: run it in a thread); returns the bytes written.

    The records are read, never changed: the index replaces a run's record
    when the run changes and never alters one in place, so a list of them
    taken on the event loop may be written from a thread.
    """
    jobs: dict[tuple[str, str, str], int] = {}
    rows = []
    # Written in list order, so loading sorts an already sorted list (linear).
    for e in sorted(snapshot.runs, key=_sort_of):
        p, g, n, r = e.key
        j = jobs.setdefault((p, g, n), len(jobs))
        rows.append((j, r, None if e.job_id == r else e.job_id, e.state,
                     e.sort[0], e.end_ts, e.activity, e.beat, e.signature))  # fmt: skip
    ckpts = [
        (*c.key, c.run_id, c.suffix, c.path, c.create_ts, c.size_bytes, c.file_count, c.config_file,
         c.has_job_spec)
        for c in snapshot.checkpoints
    ]  # fmt: skip
    body = orjson.dumps(
        {
            **_header(status_root, checkpoints_root),
            "jobs": list(jobs),
            "runs": rows,
            "checkpoints": ckpts,
            "problems": snapshot.problems,
        }
    )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return len(body)


def load(path: Path, status_root: str, checkpoints_root: str) -> Snapshot:
    """The snapshot at ``path`` (blocking); SnapshotUnusable when it cannot serve these roots."""
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotUnusable("none yet") from None
    except OSError as exc:
        raise SnapshotUnusable(f"unreadable: {exc.strerror}") from None
    try:
        data = orjson.loads(body)
        del body
        if not isinstance(data, dict):
            raise SnapshotUnusable("not a snapshot")
        want = _header(status_root, checkpoints_root)
        for name, value in want.items():
            if data.get(name) != value:
                found = str(data.get(name))[:200]
                raise SnapshotUnusable(f"written for another {name}: {found!r}, not {value!r}")
        return _build(data)
    except SnapshotUnusable:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise SnapshotUnusable(f"damaged: {type(exc).__name__}") from None


def _build(data: dict[str, Any]) -> Snapshot:
    jobs = [_job_key(j) for j in data["jobs"]]
    restore = RunEntry.restore
    runs = []
    for j, r, job_id, state, sort0, end, activity, beat, sig in data["runs"]:
        p, g, n = jobs[j]
        if r.__class__ is not str:
            raise TypeError("run id")
        job_id = r if job_id is None else job_id
        runs.append(restore((p, g, n, r), job_id, state, sort0, end, activity, beat, sig))
    checkpoints = [_checkpoint(c) for c in data["checkpoints"]]
    problems = data["problems"]
    if not isinstance(problems, dict) or not all(isinstance(v, str) for v in problems.values()):
        raise TypeError("problems")
    return Snapshot(runs, checkpoints, problems)


# A checkpoint row's types after its three names, as CheckpointFile holds them.
_CKPT_TYPES = (str, str, str, float | int, int, int, str, bool)


def _checkpoint(row: Any) -> CheckpointFile:
    if not isinstance(row, list) or len(row) != 3 + len(_CKPT_TYPES):
        raise TypeError("checkpoint")
    if not all(isinstance(v, t) for v, t in zip(row[3:], _CKPT_TYPES, strict=True)):
        raise TypeError("checkpoint")
    run_id, suffix, path, created, size, count, config, spec = row[3:]
    return CheckpointFile(_job_key(row[:3]), run_id, suffix, path, float(created), size, count, config, spec)


def _job_key(value: Any) -> JobKey:
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, str) for v in value):
        raise TypeError("names")
    return (value[0], value[1], value[2])


def _sort_of(entry: RunEntry) -> Any:
    return entry.sort
