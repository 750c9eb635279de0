"""Reading a process group's health from /proc (blocking; call from a thread)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from baton.conductor.executors.base import ProcessHealth

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_SECONDS = 0.1


@dataclass(frozen=True)
class _Proc:
    pid: int
    state: str
    ppid: int
    pgid: int
    cpu_ticks: int
    start_ticks: int
    rss_bytes: int


def read(pid: int) -> _Proc | None:
    """One process's /proc/<pid>/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    # After the command: state(0) ppid(1) pgrp(2) ... utime(11) stime(12) ... starttime(19) vsize(20) rss(21)
    return _Proc(
        pid=pid,
        state=fields[0].decode(),
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        cpu_ticks=int(fields[11]) + int(fields[12]),
        start_ticks=int(fields[19]),
        rss_bytes=int(fields[21]) * _PAGE,
    )


def group_members(pgid: int) -> list[_Proc]:
    """Every process whose process group is ``pgid``."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read(int(entry.name))
            if proc is not None and proc.pgid == pgid:
                out.append(proc)
    return out


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def group_health(leader: int) -> ProcessHealth:
    """Health of the process group led by ``leader``, CPU sampled over 100 ms."""
    before = {p.pid: p.cpu_ticks for p in group_members(leader)}
    t0 = time.monotonic()
    time.sleep(SAMPLE_SECONDS)
    members = group_members(leader)
    elapsed = time.monotonic() - t0
    used = sum(p.cpu_ticks - before.get(p.pid, p.cpu_ticks) for p in members)
    lead = next((p for p in members if p.pid == leader), None)
    live = [p for p in members if p.state != "Z"]
    return ProcessHealth(
        pid=leader,
        alive=lead is not None and lead.state != "Z",
        zombie=lead is not None and lead.state == "Z",
        process_count=len(live),
        cpu_percent=round(100.0 * used / _TICKS / elapsed, 1) if elapsed > 0 else 0.0,
        rss_bytes=sum(p.rss_bytes for p in live),
        uptime_seconds=max(0.0, _uptime() - lead.start_ticks / _TICKS) if lead else 0.0,
        stopped=bool(live) and all(p.state in ("T", "t") for p in live),
    )


def self_rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE
