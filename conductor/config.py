"""The conductor's settings (from ``baton conductor`` flags)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from baton.common.config import ServiceConfig, default_home
from baton.common.durations import parse_duration
from baton.common.modes import group_id
from baton.conductor.capacity import CapacityOverride, parse_capacity

__all__ = ["ConductorConfig", "default_home"]


class ConductorConfig(ServiceConfig):
    listen: str = "127.0.0.1:50051"
    # Jobs running at once; the rest wait QUEUED in submission order.
    max_running: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    # Seconds between refreshes of a running job's heartbeat_time.
    heartbeat: float = Field(default=30.0, gt=0)
    # The local executor's capacity, "cpus=N,memory=SIZE,gpus=0,1" (parsed at
    # startup, so a bad value stops it there); each part not given is detected.
    capacity: CapacityOverride = Field(default_factory=CapacityOverride)
    # Seconds a job waiting for resources may be overtaken by later jobs that
    # fit; past it, no later job of its executor starts before it (0: none ever).
    backfill_window: float = Field(default=300.0, ge=0)
    # Offer the Slurm executor (sbatch, squeue, scontrol, scancel, sacct from PATH).
    slurm: bool = False
    slurm_partition: str = ""
    slurm_account: str = ""
    # Offer the Ray executor, through the Ray Jobs API of the head at this URL.
    ray_address: str = ""
    # Secrets for jobs' secret_env: one file per secret, private to this user.
    secrets_dir: Path | None = None
    # A group that shares reading the status and checkpoint trees (a name or gid).
    group: str | None = None
    # Retention: ended jobs are deleted (record and run directory) once they
    # ended longer ago than this (seconds; a duration such as 30d on the
    # command line), and beyond the newest ``retain_max`` ended ones. None: kept.
    retain_ended: float | None = None
    retain_max: int | None = Field(default=None, ge=0)
    # Whether a job deleted by retention keeps its checkpoints (the work, not the record).
    retain_checkpoints: bool = True
    # Seconds between retention passes (no flag: tests shorten it).
    retain_interval: float = Field(default=60.0, gt=0)

    @field_validator("retain_ended", mode="before")
    @classmethod
    def _retain_ended(cls, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"--retain-ended {str(value)[:200]!r}: {exc}") from None

    @field_validator("group")
    @classmethod
    def _group(cls, value: str | None) -> str | None:
        if value is not None:
            group_id(value)  # unknown: refused now, with the flag's name
        return value

    @field_validator("capacity", mode="before")
    @classmethod
    def _capacity(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return parse_capacity(value)
            except ValueError as exc:
                raise ValueError(f"--capacity {value[:200]!r}: {exc}") from None
        return value

    @property
    def state_dir(self) -> Path:
        """The registry, the launch records and the home lock."""
        return self.home / "state"
