"""Removing a job's checkpoints (blocking; use a thread).

Each checkpoint is first renamed to a hidden name inside the same directory,
so it disappears at once and as a whole (a reader or a starting job never sees
half of one), then removed. Links are removed, never followed: nothing outside
the job's own checkpoint directory is touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from baton.common.layout import is_complete_checkpoint, is_run_checkpoint_dir


def _usage(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def existing(base: Path) -> tuple[list[Path], list[Path]]:
    """The complete checkpoints of a job (plain layout and every run's), and its runs' directories."""
    checkpoints: list[Path] = []
    runs: list[Path] = []
    for path in _complete(base):
        if is_run_checkpoint_dir(path):
            runs.append(path)
            checkpoints.extend(_complete(path))
        else:
            checkpoints.append(path)
    return checkpoints, runs


def delete_all(base: Path) -> tuple[int, int]:
    """Remove every checkpoint of a job, then its runs' directories; returns (count, bytes)."""
    checkpoints, runs = existing(base)
    counted = delete(checkpoints)
    # What is left of a run's directory is its marker and any half-written checkpoint.
    delete(runs)
    return counted


def _complete(directory: Path) -> list[Path]:
    try:
        return sorted(directory / e.name for e in os.scandir(directory) if is_complete_checkpoint(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def delete(targets: list[Path]) -> tuple[int, int]:
    """Remove each target (a checkpoint or a run's directory); returns (count, bytes)."""
    count = size = 0
    for target in targets:
        if not (target.exists() or target.is_symlink()):
            continue
        size += _usage(target)
        doomed = target.parent / f".deleting-{target.name}-{secrets.token_hex(4)}"
        os.rename(target, doomed)
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed)
        else:
            doomed.unlink()
        count += 1
    return count, size
