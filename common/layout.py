"""The on-disk contract: where runs and checkpoints live.

    <status_dir>/<project>/<group>/<name>/<run_id>/status.json, output.log
    <checkpoints_dir>/<project>/<group>/<name>/<run_id>/.baton-run       one run's checkpoints
    <checkpoints_dir>/<project>/<group>/<name>/<run_id>/<suffix>/
    <checkpoints_dir>/<project>/<group>/<name>/<suffix>/                the plain layout

Each run has its own checkpoint directory, so a run never resumes from
another run's checkpoint by accident. The conductor marks it with a
``.baton-run`` file when it makes it; a directory under a job's checkpoint
directory without that marker is a checkpoint of the plain layout (written
by programs other than the conductor, or before runs had directories of
their own), and its run id is empty.

A checkpoint is named by a ref: ``SUFFIX`` or ``RUN_ID/SUFFIX``. A bare
suffix matches the plain checkpoint of that name and every run's checkpoint
of that name, so it may match several.

Every path built here comes from validated names, and is checked to stay under
its root, so nothing built from a name can leave it. The helpers that read
the disk block: call them from a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from baton.common.errors import quote
from baton.common.modes import RUN_FILE_MODE
from baton.common.names import is_valid_name, name_problem

STATUS_FILE = "status.json"
LOG_FILE = "output.log"
CONFIG_FILES = ("config.yaml", "config.json")
JOB_SPEC_FILE = "job.json"
# Marks a run's checkpoint directory; its name starts with '.' so no reader takes it for a checkpoint.
RUN_MARKER = ".baton-run"
# The ref that means the newest complete checkpoint of any run (and of the plain layout).
LATEST_REF = "latest"
# A run id, '/', a suffix: each at most 63 characters. Longer input is refused unquoted.
MAX_REF_LENGTH = 127


def _inside(root: Path, parts: tuple[str, ...]) -> Path:
    for part in parts:
        if not is_valid_name(part):
            raise ValueError(f"{quote(part)} is not a valid name")
    path = root.joinpath(*parts)
    if os.path.commonpath([root, path]) != str(root):
        raise ValueError(f"{path} leaves {root}")
    return path


def is_complete_checkpoint(name: str) -> bool:
    """A checkpoint directory being written starts with '.' or ends with '.tmp'."""
    return not name.startswith(".") and not name.endswith(".tmp")


def checkpoint_ref_problem(ref: str) -> str | None:
    """Why ``ref`` is not ``SUFFIX`` or ``RUN_ID/SUFFIX``, or None when it is.

    Each part obeys the name rule, so a ref joined to a job's checkpoint
    directory stays under it. The answer quotes at most MAX_REF_LENGTH
    characters of ``ref``.
    """
    if not ref:
        return "must not be empty"
    if len(ref) > MAX_REF_LENGTH:
        return f"is {len(ref)} characters long; a checkpoint ref has at most {MAX_REF_LENGTH}"
    parts = ref.split("/")
    if len(parts) > 2:
        return f"{ref!r} has more than one '/'; give SUFFIX or RUN_ID/SUFFIX"
    labels = ("run id", "suffix") if len(parts) == 2 else ("suffix",)
    for label, part in zip(labels, parts, strict=True):
        problem = name_problem(part)
        if problem:
            return f"{label} {problem}"
    return None


def split_checkpoint_ref(ref: str) -> tuple[str, str]:
    """``(run_id, suffix)`` of a valid ref; run_id is empty for a bare suffix.

    Raises ValueError (saying why) when ``ref`` is not a valid ref.
    """
    problem = checkpoint_ref_problem(ref)
    if problem:
        raise ValueError(problem)
    run_id, _, suffix = ref.rpartition("/")
    return run_id, suffix


def checkpoint_ref(run_id: str, suffix: str) -> str:
    """The ref naming one checkpoint: ``RUN_ID/SUFFIX``, or the suffix alone in the plain layout."""
    return f"{run_id}/{suffix}" if run_id else suffix


class FoundCheckpoint(NamedTuple):
    """One complete checkpoint on disk: its run id (empty in the plain layout), suffix and path."""

    run_id: str
    suffix: str
    path: Path

    @property
    def ref(self) -> str:
        return checkpoint_ref(self.run_id, self.suffix)


def _is_real_dir(path: Path) -> bool:
    """A directory, not a link to one: links are never followed out of a job's directory."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def is_run_checkpoint_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding the run marker (a run's checkpoint directory)."""
    if not _is_real_dir(path):
        return False
    try:
        return not stat.S_ISDIR(os.lstat(path / RUN_MARKER).st_mode)
    except OSError:
        return False


def _complete_dirs(directory: Path) -> Iterator[tuple[str, float]]:
    """(name, mtime) of each complete subdirectory of ``directory``; links and files skipped."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not is_complete_checkpoint(entry.name):
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        yield entry.name, mtime


def latest_checkpoint_in(directory: str | Path) -> Path | None:
    """The newest complete checkpoint directly under ``directory``, or None.

    Newest by modification time, then by name. Links, files, and directories
    still being written (``.*``, ``*.tmp``) are skipped; names need not obey
    the name rule, since a job names its own checkpoints. A missing or
    unreadable ``directory`` has none.
    """
    base = Path(directory)
    best = max(((mtime, name) for name, mtime in _complete_dirs(base)), default=None)
    return base / best[1] if best else None


@dataclass(frozen=True)
class Layout:
    """The two roots both services read: status runs and checkpoints."""

    status_dir: Path
    checkpoints_dir: Path

    @classmethod
    def under(cls, status_dir: str | Path, checkpoints_dir: str | Path) -> Layout:
        return cls(Path(status_dir).resolve(), Path(checkpoints_dir).resolve())

    def run_dir(self, project: str, group: str, name: str, run_id: str) -> Path:
        return _inside(self.status_dir, (project, group, name, run_id))

    def run_paths(self, project: str, group: str, name: str, run_id: str) -> tuple[str, str]:
        """A run's directory and its own checkpoint directory, as the strings a Job holds.

        The same paths as ``run_dir`` and ``run_checkpoint_dir``, for every
        submission, so built without Path objects: each part obeys the name
        rule (no '/', never '.' or '..'), so joined to a root it stays under it.
        Raises ValueError when a name breaks the rule.
        """
        parts = (project, group, name, run_id)
        for part in parts:
            if not is_valid_name(part):
                raise ValueError(f"{quote(part)} is not a valid name")
        tail = "/".join(parts)
        return os.path.join(self.status_dir, tail), os.path.join(self.checkpoints_dir, tail)

    def checkpoint_dir(self, project: str, group: str, name: str) -> Path:
        """A job's checkpoint directory: its runs' directories, and plain-layout checkpoints."""
        return _inside(self.checkpoints_dir, (project, group, name))

    def run_checkpoint_dir(self, project: str, group: str, name: str, run_id: str) -> Path:
        """One run's BATON_CHECKPOINT_DIR: each of its checkpoints is a subdirectory of it.

        Raises ValueError when a name breaks the name rule.
        """
        return _inside(self.checkpoints_dir, (project, group, name, run_id))

    def find_checkpoints(self, project: str, group: str, name: str, ref: str) -> list[FoundCheckpoint]:
        """Every complete checkpoint of a job that ``ref`` names, on disk now.

        - ``RUN_ID/SUFFIX``: that run's checkpoint, or nothing.
        - ``latest``: the newest complete checkpoint of any run or of the
          plain layout (by modification time, then suffix, then run id), or
          nothing. A checkpoint literally named ``latest`` is reached as
          ``RUN_ID/latest`` only.
        - ``SUFFIX``: the plain checkpoint of that name and each run's
          checkpoint of that name, plain first, then by run id. More than one
          means the ref is ambiguous; the caller decides what to do.

        Only names that obey the name rule are found (a ref can name no
        other), and links are not followed. Raises ValueError when ``ref`` or
        a name is invalid.
        """
        run_id, suffix = split_checkpoint_ref(ref)
        base = self.checkpoint_dir(project, group, name)
        if run_id:
            path = base / run_id / suffix
            if is_complete_checkpoint(suffix) and is_run_checkpoint_dir(base / run_id) and _is_real_dir(path):
                return [FoundCheckpoint(run_id, suffix, path)]
            return []
        if suffix == LATEST_REF:
            newest = max(
                ((mtime, found.suffix, found.run_id, found) for found, mtime in self._every_checkpoint(base)),
                default=None,
            )
            return [newest[3]] if newest else []
        if not is_complete_checkpoint(suffix):
            return []
        found: list[FoundCheckpoint] = []
        if _is_real_dir(base / suffix) and not is_run_checkpoint_dir(base / suffix):
            found.append(FoundCheckpoint("", suffix, base / suffix))
        for run, _ in sorted(_complete_dirs(base)):
            if is_valid_name(run) and _is_real_dir(base / run / suffix) and is_run_checkpoint_dir(base / run):
                found.append(FoundCheckpoint(run, suffix, base / run / suffix))
        return found

    @staticmethod
    def _every_checkpoint(base: Path) -> Iterator[tuple[FoundCheckpoint, float]]:
        for entry, mtime in _complete_dirs(base):
            if not is_valid_name(entry):
                continue
            if not is_run_checkpoint_dir(base / entry):
                yield FoundCheckpoint("", entry, base / entry), mtime
                continue
            for suffix, sub_mtime in _complete_dirs(base / entry):
                if is_valid_name(suffix):
                    yield FoundCheckpoint(entry, suffix, base / entry / suffix), sub_mtime


def make_run_checkpoint_dir(
    layout: Layout, project: str, group: str, name: str, run_id: str, *, job_id: str, sync: bool = True
) -> Path:
    """Make a run's checkpoint directory with its marker in it, and return its path (the conductor's).

    The directory is made under a hidden temporary name with the marker
    written and synced, then renamed into place, so no reader ever sees it
    without its marker (it would take it for a plain checkpoint). Calling it
    again for the same run keeps what is there and adds the marker if it is
    missing. Raises ValueError for a bad name, OSError when the disk refuses.
    With ``sync`` false nothing is flushed to disk: readers still never see
    the directory unmarked, but a machine that loses power may lose the
    marker, which the next launch of the run writes again.
    """
    path = layout.run_checkpoint_dir(project, group, name, run_id)
    if is_run_checkpoint_dir(path):
        return path
    marker = json.dumps({"job_id": job_id, "run_id": run_id}, sort_keys=True).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{run_id}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()
    try:
        _write_synced(staging / RUN_MARKER, marker, sync=sync)
        try:
            # Replaces an empty directory of that name; refuses a non-empty one.
            os.rename(staging, path)
        except OSError:
            if not _is_real_dir(path):
                raise
            _write_synced(path / RUN_MARKER, marker, atomic=True, sync=sync)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if sync:
        _sync_dir(path.parent)
    return path


def _write_synced(path: Path, data: bytes, *, atomic: bool = False, sync: bool = True) -> None:
    target = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp") if atomic else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, RUN_FILE_MODE)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if atomic:
        os.replace(target, path)


def _sync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems cannot sync a directory
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
