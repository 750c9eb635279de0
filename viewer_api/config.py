"""The viewer's settings (from ``baton viewer`` flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from baton.common.config import ServiceConfig


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
