"""What a checkpoint directory holds, measured one way for everyone who reports it (blocking).

The viewer's scan indexes each checkpoint by its size, its file count and the
files at its top; the conductor's status writer records the same figures for an
ended run's checkpoints in the run summary (``common.runsummary``), so that a
viewer starting cold can take them from there. Both measure with the functions
here, so the figures a summary holds are the figures a scan would find.

Links are never followed below a checkpoint: one counts as itself.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from baton.common.layout import CONFIG_FILES, JOB_SPEC_FILE, RUN_MARKER, is_complete_checkpoint
from baton.common.names import is_valid_name

# A run's checkpoint directory with more entries than this below it is not summarized: the
# status writer that measures it writes every job's status, and must not spend long on one.
MAX_SUMMARIZED_ENTRIES = 10_000


class Usage(NamedTuple):
    """A checkpoint directory's bytes and files (links counted, not followed), and the
    configuration file and job spec found at its top."""

    size_bytes: int
    file_count: int
    config_file: str
    has_job_spec: bool


class _TooBig(Exception):
    pass


def listing(path: str) -> list[os.DirEntry[str]] | None:
    """The entries of the directory at ``path``; None when it is gone or unreadable."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return None


def has_marker(entries: list[os.DirEntry[str]]) -> bool:
    """Whether a listing holds the run marker (anything but a directory by that name)."""
    for entry in entries:
        if entry.name == RUN_MARKER:
            try:
                return not entry.is_dir(follow_symlinks=False)
            except OSError:
                return False
    return False


def usage(path: str, top: list[os.DirEntry[str]] | None = None) -> Usage:
    """What the checkpoint directory at ``path`` holds; ``top``: its listing, when the caller
    has it already."""
    return _measure(path, top, None)[0]


def _measure(path: str, top: list[os.DirEntry[str]] | None, limit: int | None) -> tuple[Usage, int]:
    """``usage``, and how many entries lie below ``path``; _TooBig past ``limit`` (None: none)."""
    size = files = seen = 0
    names: set[str] = set()
    stack: list[str] = []
    level: list[os.DirEntry[str]] | None = top if top is not None else listing(path)
    first = True
    while True:
        seen += len(level or ())
        if limit is not None and seen > limit:
            raise _TooBig
        for entry in level or ():
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                    continue
                size += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            files += 1
            if first:
                names.add(entry.name)
        if not stack:
            config = next((c for c in CONFIG_FILES if c in names), "")
            return Usage(size, files, config, JOB_SPEC_FILE in names), seen
        level, first = listing(stack.pop()), False


# (suffix, mtime in seconds, bytes, files, configuration file, has a job spec)
Checkpoint = tuple[str, float, int, int, str, bool]


def run_checkpoints(path: str, limit: int = MAX_SUMMARIZED_ENTRIES) -> list[Checkpoint] | None:
    """The checkpoints in the run's checkpoint directory at ``path``, as the viewer's scan
    would index them; None when it is not one whose checkpoints can be summarized: not a
    real directory with the run marker, or holding a link, a name the viewer reports as a
    problem, or more than ``limit`` entries. Such a directory is left to the viewer to read.
    """
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    entries = listing(path)
    if entries is None or not has_marker(entries):
        return None
    out: list[Checkpoint] = []
    budget = limit - len(entries)
    if budget < 0:
        return None
    try:
        for entry in entries:
            if entry.is_symlink():
                return None
            if not entry.is_dir(follow_symlinks=False) or not is_complete_checkpoint(entry.name):
                continue
            if not is_valid_name(entry.name):
                return None
            mtime = entry.stat(follow_symlinks=False).st_mtime
            found, seen = _measure(entry.path, None, budget)
            budget -= seen
            out.append((entry.name, mtime, *found))
    except (OSError, _TooBig):
        return None
    return out
