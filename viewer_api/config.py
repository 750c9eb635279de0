"""The viewer's settings (from ``baton viewer`` flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from baton.common.config import ServiceConfig
from baton.viewer_api.snapshot import OFF, default_path


class ViewerConfig(ServiceConfig):
    listen: str = "127.0.0.1:50052"
    # inotify, or poll for filesystems without it (NFS).
    watch: Literal["inotify", "poll"] = "inotify"
    poll_interval: float = Field(default=2.0, gt=0)
    # The safety-net rescan in inotify mode.
    reconcile_interval: float = Field(default=300.0, gt=0)
    # A RUNNING run with no heartbeat for this long is stale.
    stale_after: float = Field(default=300.0, gt=0)
    # Processes for the cold scan; 0 means one per core, and at least four (indexer.MIN_SCAN_WORKERS).
    scan_workers: int = Field(default=0, ge=0)
    # The index snapshot a restart serves from at once (viewer_api.snapshot):
    # a file path, "off" for none, or None for the default under ~/.cache.
    index_cache: str | None = None

    def index_cache_path(self) -> Path | None:
        """Where the index snapshot is kept; None when it is off."""
        if self.index_cache == OFF:
            return None
        if self.index_cache:
            return Path(self.index_cache).expanduser().resolve()
        assert self.status_dir is not None and self.checkpoints_dir is not None
        return default_path(str(self.status_dir), str(self.checkpoints_dir))
