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

from common.layout import is_complete_checkpoint


def _usage(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    total = 0
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def existing(base: Path) -> list[str]:
    """The complete checkpoints under ``base``."""
    try:
        return sorted(e.name for e in os.scandir(base) if is_complete_checkpoint(e.name))
    except FileNotFoundError:
        return []


def delete(base: Path, suffixes: list[str]) -> tuple[int, int]:
    """Remove ``base/<suffix>`` for each suffix; returns (count, bytes)."""
    count = size = 0
    for suffix in suffixes:
        target = base / suffix
        if not (target.exists() or target.is_symlink()):
            continue
        size += _usage(target)
        doomed = base / f".deleting-{suffix}-{secrets.token_hex(4)}"
        os.rename(target, doomed)
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed)
        else:
            doomed.unlink()
        count += 1
    return count, size
