"""status.json: a Job in the proto3 JSON mapping, written atomically.

Writers replace the file with a rename, so readers see whole records only.
Readers ignore unknown fields: a newer conductor may add some.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from baton.common import boundedjson
from baton.common.modes import RUN_FILE_MODE
from baton.common.protojson import parse_dict
from baton.v1 import job_pb2

STATUS_FILE_NAME = "status.json"
# The largest status.json read. A status file is one Job, and a Job must fit
# one gRPC reply (4 MiB is every standard client's default limit), so nothing
# larger could be served anyway; the conductor's own (specs of at most 1 MiB,
# results of 64 KiB) stay well under it. It also bounds what one hostile file
# costs the viewer, which keeps each run's bytes in memory.
MAX_STATUS_BYTES = 4 << 20


def job_to_json(job: job_pb2.Job) -> str:
    return json_format.MessageToJson(job, indent=None, sort_keys=True)


def load_json(raw: str | bytes) -> Any:
    """Decoded status.json; ValueError (``JsonRefused``) when it is not JSON, is larger
    than MAX_STATUS_BYTES or nests deeper than ``boundedjson.MAX_DEPTH``."""
    return boundedjson.loads(raw, max_bytes=MAX_STATUS_BYTES, what=STATUS_FILE_NAME)


def job_from_json(text: str | bytes) -> job_pb2.Job:
    """Parse a status.json; raises ValueError when it is not a Job."""
    data = load_json(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    try:
        return parse_dict(job_pb2.Job, data)
    except ValueError as exc:
        raise ValueError(f"not a Job in proto3 JSON: {exc}") from None


def read_job(path: Path) -> job_pb2.Job:
    """Read one status.json, at most MAX_STATUS_BYTES of it (blocking; call from a worker thread)."""
    with open(path, "rb") as f:
        return job_from_json(f.read(MAX_STATUS_BYTES + 1))


def write_atomic(
    path: str | os.PathLike[str], data: bytes, *, fsync: bool = False, mode: int = RUN_FILE_MODE
) -> os.stat_result:
    """Replace ``path`` with ``data`` via a temp file and rename (blocking); ``mode``: 0640, a run's file.
    Returns the new file's status (a rename keeps its inode and mtime).

    Made for many small files (a status.json for every new job): plain
    syscalls on strings, its directory made only when the first try finds
    it missing, and a temp name from a counter rather than a random one. The
    temp file is made with O_EXCL and O_NOFOLLOW, so whatever a job left under
    that name is never written through.
    """
    target = os.fspath(path)
    parent, name = os.path.split(target)
    try:
        fd, tmp = _open_temp(parent, name)
    except FileNotFoundError:
        os.makedirs(parent or ".", exist_ok=True)
        fd, tmp = _open_temp(parent, name)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            # The mode exactly, whatever the umask took from the one open() asked for.
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        return st
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Temp names: unique within this process (with its pid, among processes) without a random draw.
_temp_numbers = itertools.count()


def _open_temp(parent: str, name: str) -> tuple[int, str]:
    """A new file beside ``name`` in ``parent``, named ``.NAME.PID.N.tmp`` (readers skip
    names starting with '.' or ending in '.tmp'); another name when that one is taken."""
    while True:
        tmp = os.path.join(parent, f".{name}.{os.getpid()}.{next(_temp_numbers)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o600), tmp
        except FileExistsError:
            continue


def write_job(path: str | os.PathLike[str], job: job_pb2.Job) -> os.stat_result:
    return write_atomic(path, job_to_json(job).encode())
