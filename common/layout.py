"""The on-disk contract: where runs and checkpoints live.

    <status_dir>/<project>/<group>/<name>/<run_id>/status.json, output.log
    <checkpoints_dir>/<project>/<group>/<name>/<suffix>/

Every path built here comes from validated names, and is checked to stay under
its root, so nothing built from a name can leave it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.names import is_valid_name

STATUS_FILE = "status.json"
LOG_FILE = "output.log"
CONFIG_FILES = ("config.yaml", "config.json")
JOB_SPEC_FILE = "job.json"


def _inside(root: Path, parts: tuple[str, ...]) -> Path:
    for part in parts:
        if not is_valid_name(part):
            raise ValueError(f"{part!r} is not a valid name")
    path = root.joinpath(*parts)
    if os.path.commonpath([root, path]) != str(root):
        raise ValueError(f"{path} leaves {root}")
    return path


def is_complete_checkpoint(name: str) -> bool:
    """A checkpoint directory being written starts with '.' or ends with '.tmp'."""
    return not name.startswith(".") and not name.endswith(".tmp")


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

    def checkpoint_dir(self, project: str, group: str, name: str) -> Path:
        """BATON_CHECKPOINT_DIR: each checkpoint is a subdirectory of it."""
        return _inside(self.checkpoints_dir, (project, group, name))

    def latest_checkpoint(self, project: str, group: str, name: str) -> Path | None:
        """The newest complete checkpoint of a job (by modification time), if any."""
        base = self.checkpoint_dir(project, group, name)
        best: tuple[float, str] | None = None
        try:
            entries = list(os.scandir(base))
        except OSError:
            return None
        for entry in entries:
            if not is_complete_checkpoint(entry.name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                key = (entry.stat(follow_symlinks=False).st_mtime, entry.name)
            except OSError:
                continue
            if best is None or key > best:
                best = key
        return base / best[1] if best else None
