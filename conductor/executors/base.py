"""The executor interface, shaped for remote engines from the start.

A launch is named before it happens (``prepare``), so the lifecycle can record
the name durably first and, after a conductor restart, ask the executor what
became of it (``reattach``) by that name alone: running, ended (with its exit
status), or never started. That is what lets a restarted conductor neither lose
a job nor run one twice, whether the engine is a local process group, a Ray
job submission or a Slurm job.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from baton.conductor.capacity import Capacity
from baton.v1 import job_pb2


class LaunchError(Exception):
    """The executor could not start the launch; the message says why."""


class Unsupported(Exception):
    """The executor cannot do what was asked (for example, suspend)."""


@dataclass(frozen=True)
class LaunchSpec:
    """One run of one step: what to start, where its output goes."""

    job_id: str
    command: str
    env: Mapping[str, str]
    workdir: str
    log_path: str
    resources: job_pb2.Resources = field(default_factory=job_pb2.Resources)
    # How long the rest of the job may take to finish after its leader was
    # killed by a pause or cancel signal (the conductor normally ends it sooner).
    drain_seconds: int = 60
    # The longest the launch may run, in seconds, for an engine that enforces a
    # limit of its own (Slurm's --time) as a backstop to Baton's max_duration;
    # 0 means none.
    time_limit_seconds: float = 0


@dataclass
class Handle:
    """The executor's durable name for one launch; ``data`` is JSON-safe."""

    executor: str
    launch_id: str
    external_id: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExitStatus:
    """How a launch ended. ``exit_code`` is None when it could not be learned."""

    exit_code: int | None
    signal: int | None = None
    detail: str = ""
    # When the end was recorded (seconds since the epoch), if the executor knows:
    # a job that ended while the conductor was down ended then, not at the restart.
    time: float | None = None


@dataclass(frozen=True)
class ProcessHealth:
    """A snapshot of a launch's processes."""

    pid: int
    alive: bool
    zombie: bool
    process_count: int
    cpu_percent: float
    rss_bytes: int
    uptime_seconds: float
    # Every process of the launch is stopped (suspended).
    stopped: bool


class Presence(enum.Enum):
    RUNNING = "running"
    ENDED = "ended"
    NOT_STARTED = "not_started"


@dataclass(frozen=True)
class Attachment:
    presence: Presence
    status: ExitStatus | None = None


# The GetJobHealthResponse fields an executor can fill (``health_fields``).
ALL_HEALTH_FIELDS = frozenset(
    {"pid", "alive", "zombie", "process_count", "cpu_percent", "rss_bytes", "uptime", "stopped"}
)


class Executor(abc.ABC):
    """Runs launches. Every method is async and never blocks the event loop.

    Requests are stated by what they mean (terminate, request a checkpoint,
    kill, suspend, resume), not as POSIX signals: an engine delivers each its
    own way. The grace between a request and the kill is the lifecycle's, so
    it is the same on every engine and survives a conductor restart.
    """

    name: str
    # The PauseMode values it supports; GetConductorInfo lists them.
    pause_modes: frozenset[int]
    # Which GetJobHealthResponse fields ``health`` fills; GetConductorInfo lists them.
    health_fields: frozenset[str] = frozenset()
    # The engine queues launches itself (Slurm, Ray): a launch may wait there
    # before it runs, and ``wait_started`` says when it does.
    queues: bool = False
    # The resources Baton accounts for on its machine: the lifecycle starts a
    # job only when its request fits what is free. None for an engine that
    # queues jobs against its own resources (Slurm, Ray): Baton holds none back.
    capacity: Capacity | None = None

    @abc.abstractmethod
    def prepare(self, job_id: str, launch_seq: int, run_dir: str) -> Handle:
        """Name a launch without starting anything (no side effects).

        ``run_dir`` is the job's run directory, on storage the engine's nodes
        share with the conductor; an executor may keep the launch's records there.
        """

    @abc.abstractmethod
    async def launch(self, handle: Handle, spec: LaunchSpec) -> Handle:
        """Start the launch named by ``handle``; return it with external ids filled in."""

    @abc.abstractmethod
    async def reattach(self, handle: Handle) -> Attachment:
        """After a restart: is the launch running, ended (and how), or never started?"""

    async def wait_started(self, handle: Handle) -> None:
        """Return once the launch runs (or has ended); at once where launching is running."""

    @abc.abstractmethod
    async def wait(self, handle: Handle) -> ExitStatus:
        """Wait for a running launch to end."""

    @abc.abstractmethod
    async def terminate(self, handle: Handle) -> bool:
        """Ask every process of the launch to end (SIGTERM); False when none was left to ask."""

    @abc.abstractmethod
    async def request_checkpoint(self, handle: Handle, signal_name: str) -> bool:
        """Ask the launch to save a checkpoint and exit, with the spec's pause signal
        (``SIGUSR1``...); False when no process was left to ask."""

    @abc.abstractmethod
    async def kill(self, handle: Handle) -> bool:
        """End every process of the launch now (the end of a grace); False when none was left."""

    async def suspend(self, handle: Handle) -> None:
        """Freeze every process of the launch in place."""
        raise Unsupported(f"the {self.name} executor cannot suspend a job")

    async def resume(self, handle: Handle) -> None:
        """Thaw a suspended launch."""
        raise Unsupported(f"the {self.name} executor cannot suspend a job")

    async def health(self, handle: Handle) -> ProcessHealth:
        """The launch's processes now: count, CPU, memory, whether they run."""
        raise Unsupported(f"the {self.name} executor cannot report process health")

    async def kill_all(self, job_id: str) -> None:
        """End whatever still runs of any launch of the job (its launch record was lost)."""

    async def forget(self, job_id: str) -> None:
        """Drop what the executor keeps for an ended job (called on delete)."""

    async def forget_many(self, job_ids: list[str]) -> None:
        """``forget`` for many jobs at once (a bulk delete)."""
        for job_id in job_ids:
            await self.forget(job_id)

    def ended_records(self, run_dir: str) -> list[str]:
        """Directories under ``run_dir`` that nothing needs once the job's end is durable.

        The conductor removes them then (beneath the status tree, through no
        link): launch records a restart would otherwise read.
        """
        return []

    async def close(self) -> None:
        """Stop watching launches; running ones keep running."""
