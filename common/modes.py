"""Who may read what Baton writes: file modes and the sharing group, in one place.

Runs' files (status.json, output.log, checkpoint markers) are 0640, the
conductor's state (registry, locks, launch env files) 0600, and every
directory Baton makes 0750: nothing is world-readable. A team that shares
reading names a group (``--group``): the status and checkpoint roots are
given that group and the set-group-id bit, so everything made beneath them,
by Baton or by a job, belongs to the group too.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

RUN_FILE_MODE = 0o640
STATE_FILE_MODE = 0o600
DIR_MODE = 0o750
STATE_DIR_MODE = 0o700
# Masks group write and everything for others from whatever the conductor,
# its supervisors and its jobs create without a mode of their own
# (directories 0750, files 0640): set once, for the whole process.
UMASK = 0o027


def restrict_umask() -> None:
    """Set the process umask (the conductor and everything it starts inherit it)."""
    os.umask(UMASK)


def group_id(name: str) -> int:
    """The id of group ``name`` (or a number); ValueError naming it when there is none."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ValueError(f"--group: there is no group named {name!r}") from None


def prepare_root(path: Path, gid: int | None) -> None:
    """Make a tree's root (blocking), 0750, or 2750 with group ``gid`` so the tree inherits it."""
    path.mkdir(parents=True, exist_ok=True)
    mode = DIR_MODE
    if gid is not None:
        os.chown(path, -1, gid)
        mode |= stat.S_ISGID
    st = path.stat()
    # Only a root we own is changed; a shared one is its owner's to set.
    if st.st_uid == os.geteuid():
        os.chmod(path, mode)


def prepare_state_dir(path: Path) -> None:
    """The conductor's own directory: nobody else reads the registry or a launch's env file."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, STATE_DIR_MODE)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (blocking), whatever was there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, STATE_FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        # An existing file keeps its mode through O_CREAT: set it.
        os.fchmod(fd, STATE_FILE_MODE)
        f.write(data)
