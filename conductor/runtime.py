"""What the lifecycle keeps about one job beyond its Job message.

Some of it lives only in memory (the lock, the timers, the exit watcher);
the rest is the job's runtime notes, stored with the job in the registry so a
restarted conductor can finish what was started: the launch handle, a cancel
under way, a retry or a deferred start that was due.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from baton.common import boundedjson
from baton.conductor.executors.base import Handle

# Notes are a few hundred bytes; a launch handle's data keeps them far below this.
MAX_NOTES_BYTES = 1 << 20


@dataclass
class Run:
    seq: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handle: Handle | None = None
    launch_seq: int = 0
    holds_slot: bool = False
    waiter: asyncio.Task[None] | None = None
    timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    # Persisted notes, so a restarted conductor can finish what was started.
    cancel_reason: str = ""
    kill_at: float | None = None
    killed: bool = False
    # Whether the pause signal reached a process (a step that had already
    # finished by then ended at a step boundary, not because of the pause).
    pause_delivered: bool = True
    retry_at: float | None = None
    resuming: bool = False
    paused_at: float | None = None
    paused_seconds: float = 0.0
    # A launch put off for want of storage: (step, attempt, resume) to start again.
    deferred: tuple[int, int, bool] | None = None
    # The GPU ids it holds (with its slot): recorded before its process starts,
    # so a restarted conductor gives a re-attached job the same ones and no
    # other job gets them.
    gpus: tuple[str, ...] = ()
    # Since when (epoch seconds) it has waited QUEUED for resources that were
    # not free: past the backfill window, no later job overtakes it.
    waiting_since: float | None = None

    def to_json(self) -> str:
        h = self.handle
        return json.dumps(
            {
                "handle": None
                if h is None
                else {
                    "executor": h.executor,
                    "launch_id": h.launch_id,
                    "external_id": h.external_id,
                    "data": h.data,
                },
                "launch_seq": self.launch_seq,
                "cancel_reason": self.cancel_reason,
                "kill_at": self.kill_at,
                "killed": self.killed,
                "retry_at": self.retry_at,
                "resuming": self.resuming,
                "paused_at": self.paused_at,
                "paused_seconds": self.paused_seconds,
                "deferred": self.deferred,
                "gpus": list(self.gpus),
                "waiting_since": self.waiting_since,
            }
        )

    @classmethod
    def from_json(cls, seq: int, text: str | None) -> Run:
        """The notes as stored; ValueError (or KeyError, TypeError) when they are damaged."""
        run = cls(seq=seq)
        if not text:
            return run
        # Bounded: a damaged row (or one written by hand) must fail this job's
        # recovery alone, never the conductor's start with a RecursionError.
        d = boundedjson.loads(text, max_bytes=MAX_NOTES_BYTES, what="runtime notes")
        if not isinstance(d, dict):
            raise ValueError("runtime notes are not a JSON object")
        h = d.get("handle")
        if h:
            run.handle = Handle(h["executor"], h["launch_id"], h.get("external_id", ""), dict(h["data"]))
        run.launch_seq = int(d.get("launch_seq", 0))
        run.cancel_reason = str(d.get("cancel_reason", ""))
        run.kill_at = d.get("kill_at")
        run.killed = bool(d.get("killed", False))
        run.retry_at = d.get("retry_at")
        run.resuming = bool(d.get("resuming", False))
        run.paused_at = d.get("paused_at")
        run.paused_seconds = float(d.get("paused_seconds", 0.0))
        deferred = d.get("deferred")
        if deferred:
            step, attempt, resume = deferred
            run.deferred = (int(step), int(attempt), bool(resume))
        run.gpus = tuple(str(g) for g in d.get("gpus") or ())
        waiting = d.get("waiting_since")
        run.waiting_since = None if waiting is None else float(waiting)
        return run


# The notes of every new run (its seq is not among them): written with each
# submission, so made once rather than per job.
NEW_RUN_NOTES = Run(seq=0).to_json()
