"""What an executor's machine has, and what its running jobs hold of it.

The local executor runs jobs on one machine, so Baton itself must keep them
within that machine: a job asking for 8 GPUs must not start on a box with
none. (Slurm and Ray queue jobs against their own resources; their executors
have no capacity here and Baton holds none of their jobs back.)

- ``parse_capacity`` reads ``--capacity cpus=N,memory=SIZE,gpus=ID,ID``: each
  part given replaces what ``detect_capacity`` finds (cores this process may
  run on, MemTotal, the GPUs ``nvidia-smi -L`` lists).
- A ``Ledger`` is the accounting: whether a request ``fits`` what is free, and
  if not, the ``shortfall`` said plainly; ``take`` holds a request for a job
  and picks its GPUs (by id: each job sees only its own); ``release`` gives it
  all back. A request of nothing always fits and holds nothing, so jobs that
  ask for no resources run as before, limited only by ``max_running``.

CPUs are counted in thousandths, so fractions add up exactly (0.1 + 0.2 is
0.3 here). Nothing in this module knows about jobs' states: the lifecycle
decides when to take and release.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from baton.common.spec import parse_size
from baton.v1 import job_pb2

log = structlog.get_logger(__name__)

_MILLI = 1000
_GPU_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_.-]{0,127}")
_NVIDIA_GPU_LINE = re.compile(r"GPU (\d+):")
# nvidia-smi answers in well under a second; a hung driver must not hold up the start.
NVIDIA_SMI_TIMEOUT = 10.0


def _milli(cpus: float) -> int:
    return round(cpus * _MILLI)


def format_cpus(cpus: float) -> str:
    """ "1 CPU", "2 CPUs", "0.5 CPUs"."""
    text = f"{cpus:g}"
    return f"{text} CPU" if text == "1" else f"{text} CPUs"


def format_memory(size: int) -> str:
    """Bytes as the spec writes them (decimal units): "500G", "7.79G", "512M"."""
    for unit, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if size >= scale:
            return f"{size / scale:.3g}{unit}"
    return f"{size}B"


def format_gpus(count: int) -> str:
    return "1 GPU" if count == 1 else f"{count} GPUs"


@dataclass(frozen=True)
class Request:
    """What one job asks for; zero in a field means it asks none of it."""

    cpus: float = 0.0
    memory: int = 0
    gpus: int = 0

    @classmethod
    def of(cls, resources: job_pb2.Resources) -> Request:
        return cls(cpus=resources.cpus, memory=resources.memory_bytes, gpus=resources.gpus)

    @property
    def empty(self) -> bool:
        return _milli(self.cpus) == 0 and self.memory == 0 and self.gpus == 0

    def describe(self) -> str:
        parts = []
        if _milli(self.cpus):
            parts.append(format_cpus(self.cpus))
        if self.memory:
            parts.append(f"{format_memory(self.memory)} memory")
        if self.gpus:
            parts.append(format_gpus(self.gpus))
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class Excess:
    """One part of a request larger than the whole capacity: it could never start."""

    # The spec's field name under ``resources`` ("cpus", "memory", "gpus").
    field: str
    asked: str
    has: str


@dataclass(frozen=True)
class Capacity:
    """What an executor's machine has in all."""

    cpus: float
    memory: int
    # GPU ids as CUDA_VISIBLE_DEVICES names them ("0", "1", or UUIDs).
    gpus: tuple[str, ...] = ()

    def describe(self) -> str:
        gpus = f"GPUs {','.join(self.gpus)}" if self.gpus else "no GPUs"
        return f"{format_cpus(self.cpus)}, {format_memory(self.memory)} memory, {gpus}"

    def excess(self, request: Request) -> list[Excess]:
        """The parts of ``request`` this capacity could never give, even idle."""
        out = []
        if _milli(request.cpus) > _milli(self.cpus):
            out.append(Excess("cpus", format_cpus(request.cpus), format_cpus(self.cpus)))
        if request.memory > self.memory:
            out.append(Excess("memory", format_memory(request.memory), format_memory(self.memory)))
        if request.gpus > len(self.gpus):
            out.append(Excess("gpus", format_gpus(request.gpus), format_gpus(len(self.gpus))))
        return out


@dataclass(frozen=True)
class CapacityOverride:
    """The parts of ``--capacity`` that were given; None means detect it."""

    cpus: float | None = None
    memory: int | None = None
    gpus: tuple[str, ...] | None = None


def parse_capacity(text: str) -> CapacityOverride:
    """Read ``cpus=N,memory=SIZE,gpus=ID,ID`` (any of the three, in any order).

    GPUs are ids, not a count: ``gpus=0,1`` is the two GPUs 0 and 1, and
    ``gpus=`` or ``gpus=none`` is none. ValueError says what is wrong.
    """
    values: dict[str, list[str]] = {}
    key = ""
    for raw in text.split(","):
        token = raw.strip()
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip().lower()
            if key not in ("cpus", "memory", "gpus"):
                raise ValueError(f"unknown resource {key!r}; give cpus=, memory= or gpus=")
            if key in values:
                raise ValueError(f"{key} is given twice")
            values[key] = [value.strip()]
        elif key == "gpus":
            # gpus=0,1: the ids after the first follow it, comma-separated.
            values[key].append(token)
        elif token or key:
            raise ValueError(f"{token!r} is not NAME=VALUE (cpus=8,memory=32G,gpus=0,1)")
    cpus = memory = None
    gpus: tuple[str, ...] | None = None
    if "cpus" in values:
        cpus = _positive_cpus(values["cpus"][0])
    if "memory" in values:
        try:
            memory = parse_size(values["memory"][0])
        except ValueError as exc:
            raise ValueError(f"memory: {exc}") from None
        if memory <= 0:
            raise ValueError("memory must be more than 0")
    if "gpus" in values:
        ids = [i for i in values["gpus"] if i]
        if ids == ["none"]:
            ids = []
        for gpu in ids:
            if not _GPU_ID.fullmatch(gpu):
                raise ValueError(f"gpus: {gpu!r} is not a GPU id such as 0 or GPU-5a1c...")
        if len(set(ids)) != len(ids):
            raise ValueError("gpus: an id is given twice")
        gpus = tuple(ids)
    return CapacityOverride(cpus=cpus, memory=memory, gpus=gpus)


def _positive_cpus(value: str) -> float:
    try:
        cpus = float(value)
    except ValueError:
        raise ValueError(f"cpus: {value!r} is not a number") from None
    if not _milli(cpus) > 0 or cpus != cpus or cpus == float("inf"):
        raise ValueError("cpus must be a number more than 0")
    return cpus


def detect_cpus() -> float:
    """The cores this process may run on (its affinity, which a container or taskset narrows)."""
    return float(len(os.sched_getaffinity(0)))


def detect_memory(meminfo: str = "/proc/meminfo") -> int:
    """MemTotal in bytes (blocking)."""
    with open(meminfo) as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo} has no MemTotal")


def detect_gpus() -> tuple[str, ...]:
    """The GPU indices ``nvidia-smi -L`` lists; none without it (blocking: runs a process)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return ()
    try:
        out = subprocess.run(
            [tool, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        # A driver that is not loaded: the machine has no GPU Baton can give.
        log.warning("gpu_detection_failed", error=repr(exc)[:200])
        return ()
    return tuple(m.group(1) for line in out.splitlines() if (m := _NVIDIA_GPU_LINE.match(line.strip())))


def detect_capacity(override: CapacityOverride | None = None) -> Capacity:
    """The machine's capacity, with what ``override`` gives in place of detection (blocking)."""
    override = override or CapacityOverride()
    return Capacity(
        cpus=override.cpus if override.cpus is not None else detect_cpus(),
        memory=override.memory if override.memory is not None else detect_memory(),
        gpus=override.gpus if override.gpus is not None else detect_gpus(),
    )


@dataclass(frozen=True)
class Free:
    """What is not held now (never below zero, even when a restart found more held than there is)."""

    cpus: float
    memory: int
    gpus: tuple[str, ...]


@dataclass(frozen=True)
class Allocation:
    """What one holder holds: its request and the GPUs picked for it."""

    request: Request
    gpus: tuple[str, ...]


class Ledger:
    """The accounting of one capacity: who holds what, and what is free."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._held: dict[str, Allocation] = {}
        self._cpus_milli = 0
        self._memory = 0

    def holding(self, holder: str) -> Allocation | None:
        return self._held.get(holder)

    def free(self) -> Free:
        taken = {g for a in self._held.values() for g in a.gpus}
        return Free(
            cpus=max(0, _milli(self.capacity.cpus) - self._cpus_milli) / _MILLI,
            memory=max(0, self.capacity.memory - self._memory),
            gpus=tuple(g for g in self.capacity.gpus if g not in taken),
        )

    def shortfall(self, request: Request) -> str:
        """What ``request`` waits for, e.g. "1 GPU (0 of 2 free)"; empty when it fits now."""
        free = self.free()
        cap = self.capacity
        short = []
        if _milli(request.cpus) > _milli(free.cpus):
            short.append(f"{format_cpus(request.cpus)} ({free.cpus:g} of {cap.cpus:g} free)")
        if request.memory > free.memory:
            short.append(
                f"{format_memory(request.memory)} memory "
                f"({format_memory(free.memory)} of {format_memory(cap.memory)} free)"
            )
        if request.gpus > len(free.gpus):
            short.append(f"{format_gpus(request.gpus)} ({len(free.gpus)} of {len(cap.gpus)} free)")
        return ", ".join(short)

    def fits(self, request: Request) -> bool:
        return not self.shortfall(request)

    def take(self, holder: str, request: Request, gpus: Sequence[str] | None = None) -> tuple[str, ...]:
        """Hold ``request`` for ``holder`` and return the GPU ids it gets.

        Without ``gpus`` it must fit (ValueError otherwise) and the lowest free
        ids are picked. With ``gpus`` (what a job already running was given
        before a conductor restart) those are recorded as they are, fitting or
        not: the job holds them whatever the ledger thinks, so the ledger
        follows. A holder that holds already keeps what it has.
        """
        held = self._held.get(holder)
        if held is not None:
            return held.gpus
        if request.empty and not gpus:
            return ()
        if gpus is None:
            if not self.fits(request):
                raise ValueError(f"{request.describe()} does not fit: {self.shortfall(request)}")
            picked = self.free().gpus[: request.gpus]
        else:
            picked = tuple(gpus)
            if len(picked) < request.gpus:
                # Recorded before GPUs were assigned: count it as holding free ones.
                spare = [g for g in self.free().gpus if g not in picked]
                picked += tuple(spare[: request.gpus - len(picked)])
        self._held[holder] = Allocation(request, picked)
        self._cpus_milli += _milli(request.cpus)
        self._memory += request.memory
        return picked

    def release(self, holder: str) -> None:
        held = self._held.pop(holder, None)
        if held is not None:
            self._cpus_milli -= _milli(held.request.cpus)
            self._memory -= held.request.memory
