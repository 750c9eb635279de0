"""The conductor's settings (from ``baton conductor`` flags)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from baton.common.config import ServiceConfig, default_home

__all__ = ["ConductorConfig", "default_home"]


class ConductorConfig(ServiceConfig):
    listen: str = "127.0.0.1:50051"
    # Jobs running at once; the rest wait QUEUED in submission order.
    max_running: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Seconds between refreshes of a running job's heartbeat_time.
    heartbeat: float = Field(default=30.0, gt=0)
    # The local executor's capacity, "cpus=N,memory=SIZE,gpus=0,1"; empty: detected.
    capacity: str = ""
    # Offer the Slurm executor (sbatch, squeue, scontrol, scancel, sacct from PATH).
    slurm: bool = False
    slurm_partition: str = ""
    slurm_account: str = ""
    # Offer the Ray executor, through the Ray Jobs API of the head at this URL.
    ray_address: str = ""

    @property
    def state_dir(self) -> Path:
        """The registry, the launch records and the home lock."""
        return self.home / "state"
