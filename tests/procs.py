"""Helpers for lifecycle tests: /proc readings, job logs, specs and waiting."""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from baton.v1 import job_pb2
from tests.harness import REPO

JOBS = REPO / "tests" / "jobs"
# The test's own interpreter, without site-packages (the jobs use the standard
# library only): starts several times faster than `python3` behind a shim.
PY = f"{shlex.quote(sys.executable)} -S"
TRAIN = f"{PY} {shlex.quote(str(JOBS / 'train.py'))}"
TICKER = f"{PY} {shlex.quote(str(JOBS / 'ticker.py'))}"
SPIN = f"{PY} {shlex.quote(str(JOBS / 'spin.py'))}"

T = TypeVar("T")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str
    pgrp: int
    cpu_ticks: int  # utime + stime
    start_time: int  # clock ticks since boot


def proc_stat(pid: int) -> ProcStat | None:
    """Parse /proc/<pid>/stat, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces and parentheses).
    rest = raw[raw.rfind(b")") + 2 :].split()
    # rest[0] is field 3 (state); field N is rest[N - 3].
    return ProcStat(
        pid=pid,
        state=rest[0].decode(),
        pgrp=int(rest[5 - 3]),
        cpu_ticks=int(rest[14 - 3]) + int(rest[15 - 3]),
        start_time=int(rest[22 - 3]),
    )


def group_members(pgid: int) -> list[ProcStat]:
    """Every live process (zombies excluded) whose process group is ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = proc_stat(int(entry))
        if st is not None and st.pgrp == pgid and st.state != "Z":
            out.append(st)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(pred: Callable[[], T], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll ``pred`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def log_text(job: job_pb2.Job) -> str:
    try:
        return (Path(job.run_dir) / "output.log").read_text()
    except FileNotFoundError:
        return ""


def log_lines(job: job_pb2.Job) -> list[str]:
    return log_text(job).splitlines()


def spec_yaml(**fields: Any) -> str:
    """A YAML job spec; the workdir defaults to the repository root."""
    fields.setdefault("workdir", str(REPO))
    return yaml.safe_dump(fields, sort_keys=False)


def train_command(steps: int, interval: float, every: int, *extra: str) -> str:
    return " ".join(
        [TRAIN, "--steps", str(steps), "--interval", str(interval), "--every", str(every), *extra]
    )
