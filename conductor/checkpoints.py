"""Removing a job's checkpoints (blocking; use a thread).

Each checkpoint is first renamed to a hidden name inside the same directory,
so it disappears at once and as a whole (a reader or a starting job never sees
half of one), then removed. Deletion never goes through a link, not even one
that stays inside the tree: every directory on the way down is opened with
O_NOFOLLOW from the checkpoints root, and each rename and removal is made
relative to the descriptor of the directory that holds it, so a link swapped
in after a check is never followed either. A checkpoint that is itself a link
is unlinked, never followed; a directory reached through a link is refused
(UnsafePath, PATH_IS_LINK), with nothing deleted.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import structlog

from baton.common import checkpointdirs, runsummary
from baton.common.layout import RUN_MARKER, is_complete_checkpoint
from baton.common.safeopen import dir_without_links, remove_beneath

log = structlog.get_logger(__name__)


def _usage(dir_fd: int, name: str) -> int:
    """Bytes of ``name`` in ``dir_fd`` (a checkpoint), links counted as themselves, never followed."""
    st = os.lstat(name, dir_fd=dir_fd)
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for _, dirs, files, fd in os.fwalk(name, dir_fd=dir_fd, follow_symlinks=False):
        for entry in files + dirs:
            with contextlib.suppress(OSError):
                est = os.lstat(entry, dir_fd=fd)
                if not stat.S_ISDIR(est.st_mode):
                    total += est.st_size
    return total


def _complete(dir_fd: int) -> list[str]:
    """The complete checkpoint names in an open directory, sorted."""
    with os.scandir(dir_fd) as it:
        return sorted(e.name for e in it if is_complete_checkpoint(e.name))


def _is_run_dir(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is a real directory (not a link) holding the run marker."""
    try:
        if not stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
            return False
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return not stat.S_ISDIR(os.lstat(RUN_MARKER, dir_fd=fd).st_mode)
    except OSError:
        return False
    finally:
        os.close(fd)


def existing(root: Path, base: Path) -> tuple[list[Path], list[Path]]:
    """The complete checkpoints of a job (plain layout and every run's), and its runs' directories.

    UnsafePath when ``base`` is reached through a link.
    """
    checkpoints: list[Path] = []
    runs: list[Path] = []
    try:
        with dir_without_links(root, base) as bfd:
            for name in _complete(bfd):
                if not _is_run_dir(bfd, name):
                    checkpoints.append(base / name)
                    continue
                runs.append(base / name)
                with dir_without_links(root, base / name) as rfd:
                    checkpoints.extend(base / name / sub for sub in _complete(rfd))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return checkpoints, runs


def delete_all(root: Path, base: Path) -> tuple[int, int]:
    """Remove every checkpoint of a job, then its runs' directories and its checkpoint summary;
    returns (count, bytes)."""
    checkpoints, runs = existing(root, base)
    counted = delete(root, checkpoints)
    # What is left of a run's directory is its marker and any half-written checkpoint.
    delete(root, runs)
    # Its lines all speak of runs now gone: the job's directory is left empty.
    with contextlib.suppress(FileNotFoundError), dir_without_links(root, base) as bfd:
        os.unlink(runsummary.SUMMARY_FILE, dir_fd=bfd)
    return counted


def delete_some(root: Path, base: Path, targets: list[Path]) -> tuple[int, int]:
    """``delete`` these checkpoints of the job at ``base``. Each run's directory they were in
    gets a new line in the job's checkpoint summary (the last line for a run wins), so a viewer
    starting cold from the summary shows none of them."""
    counted = delete(root, targets)
    for run_dir in sorted({t.parent for t in targets if t.parent != base}):
        # None (the directory cannot be summarized now) makes a line that has readers list it.
        found = checkpointdirs.run_checkpoints(str(run_dir))
        try:
            runsummary.append(str(base), runsummary.checkpoint_line(str(run_dir), found))
        except OSError as exc:
            # The deletion stands; a viewer starting cold shows the run as its old line has
            # it until its reconciliation.
            log.warning("run_summary_not_appended", job_dir=str(base), error=str(exc)[:200])
    return counted


def delete(root: Path, targets: list[Path]) -> tuple[int, int]:
    """Remove each target (a checkpoint or a run's directory) under ``root``; returns (count, bytes).

    Each target's directory must be reached through no link (UnsafePath
    otherwise, before anything of that target is touched).
    """
    count = size = 0
    for target in targets:
        try:
            with dir_without_links(root, target.parent) as pfd:
                try:
                    size += _usage(pfd, target.name)
                except FileNotFoundError:
                    continue
                remove_beneath(pfd, target.name)
        except FileNotFoundError:
            continue
        count += 1
    return count, size
