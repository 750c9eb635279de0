"""Executors run a job's steps somewhere: one interface, one module each.

``make_executors`` is the factory: it builds the executors a conductor offers,
by name, from each one's settings, so the lifecycle never imports a concrete
one and adding an executor touches no lifecycle code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from baton.conductor.capacity import Capacity, detect_capacity
from baton.conductor.executors.base import Executor


@dataclass(frozen=True)
class ExecutorSettings:
    """What the conductor's flags say about its executors."""

    state_dir: Path
    # The local executor's resources: --capacity over what was detected (the
    # server detects them off its event loop); None: detected here, blocking.
    capacity: Capacity | None = None
    # --slurm, --slurm-partition, --slurm-account.
    slurm: bool = False
    slurm_partition: str = ""
    slurm_account: str = ""
    # --ray-address: the Ray Jobs API; empty means no Ray executor.
    ray_address: str = ""


def make_executors(settings: ExecutorSettings) -> dict[str, Executor]:
    """The executors this conductor offers, by name."""
    from baton.conductor.executors.local import LocalExecutor

    capacity = settings.capacity if settings.capacity is not None else detect_capacity()
    executors: list[Executor] = [LocalExecutor(settings.state_dir / "launches", capacity)]
    if settings.slurm:
        from baton.conductor.executors.slurm import SlurmExecutor

        executors.append(SlurmExecutor(partition=settings.slurm_partition, account=settings.slurm_account))
    if settings.ray_address:
        from baton.conductor.executors.ray import RayExecutor

        executors.append(RayExecutor(settings.ray_address))
    return {executor.name: executor for executor in executors}
