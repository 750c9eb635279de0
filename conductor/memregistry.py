"""A registry kept in memory: the same contract as the SQLite one, nothing durable.

For tests and throwaway conductors (``make_registry(IN_MEMORY)``). Every write
takes effect when it is made and settles its future in the order written, as
the SQLite registry's group commit does; reads see every write made before
them. The contract both keep is tests/test_registry_contract.py.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass
from typing import Any

from baton.common.jobs import FINAL_STATES, JobFilter
from baton.conductor.registry import (
    DEFAULT_EVENT_HISTORY,
    STALE_FALLBACK_SECONDS,
    DamagedRow,
    Opened,
    Registry,
    Snapshot,
    Stale,
    StorageError,
    StoredEvent,
    StoredJob,
    end_ns,
    ended_states,
)
from baton.v1 import job_pb2


@dataclass
class _Row:
    seq: int
    job: job_pb2.Job
    runtime: str | None


def _copy(job: job_pb2.Job) -> job_pb2.Job:
    out = job_pb2.Job()
    out.CopyFrom(job)
    return out


class _MemorySnapshot(Snapshot):
    def __init__(self, jobs: list[job_pb2.Job], revision: int) -> None:
        self._jobs = jobs
        self.revision = revision
        self._at = 0

    async def page(self, limit: int) -> list[bytes]:
        out = self._jobs[self._at : self._at + limit]
        self._at += len(out)
        return [job.SerializeToString() for job in out]

    async def close(self) -> None:
        self._jobs = []


class InMemoryRegistry(Registry):
    def __init__(self, event_history: int = DEFAULT_EVENT_HISTORY) -> None:
        self._history = event_history
        self._rows: dict[str, _Row] = {}
        self._seqs: list[int] = []  # ascending
        self._by_seq: dict[int, str] = {}
        self._requests: dict[str, str] = {}
        self._events: list[StoredEvent] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._published: int | None = None
        self._max_revision = 0

    async def open(self) -> Opened:
        self._loop = asyncio.get_running_loop()
        live: list[StoredJob] = []
        counts: dict[int, int] = {}
        for seq in self._seqs:
            row = self._rows[self._by_seq[seq]]
            if row.job.state in FINAL_STATES:
                counts[int(row.job.state)] = counts.get(int(row.job.state), 0) + 1
            else:
                live.append(StoredJob(seq, _copy(row.job), row.runtime))
        return Opened(
            live=live,
            ended_counts=counts,
            max_revision=self._max_revision,
            next_seq=(self._seqs[-1] + 1) if self._seqs else 1,
            published_revision=self._published,
        )

    @property
    def damaged(self) -> list[DamagedRow]:
        return []

    @property
    def degraded(self) -> StorageError | None:
        return None

    def _done(self, error: BaseException | None = None, result: Any = None) -> asyncio.Future[Any]:
        assert self._loop is not None, "registry not open"
        fut: asyncio.Future[Any] = self._loop.create_future()
        # Settled on the next turn, in the order written, as a group commit is.
        self._loop.call_soon(_settle, fut, error, result)
        return fut

    def _log(self, job: job_pb2.Job, kind: int) -> None:
        self._events.append(StoredEvent(job.revision, kind, _copy(job)))
        self._max_revision = max(self._max_revision, job.revision)
        if len(self._events) > 2 * self._history:
            del self._events[: -self._history]

    def insert(self, seq: int, job: job_pb2.Job, runtime: str | None) -> asyncio.Future[None]:
        if job.id in self._rows or seq in self._by_seq:
            return self._done(ValueError(f"job {job.id} or seq {seq} is already recorded"))
        if job.request_id and job.request_id in self._requests:
            return self._done(ValueError(f"request_id {job.request_id!r} is already recorded"))
        self._rows[job.id] = _Row(seq, _copy(job), runtime)
        bisect.insort(self._seqs, seq)
        self._by_seq[seq] = job.id
        if job.request_id:
            self._requests[job.request_id] = job.id
        self._log(job, job_pb2.JOB_EVENT_TYPE_UPDATED)
        return self._done()

    def put(self, seq: int, job: job_pb2.Job, runtime: str | None, event: int | None) -> asyncio.Future[None]:
        row = self._rows.get(job.id)
        if row is None:
            return self.insert(seq, job, runtime) if event is not None else self._done()
        row.job, row.runtime = _copy(job), runtime
        if event is not None:
            self._log(job, event)
        return self._done()

    def delete(self, jobs: list[job_pb2.Job]) -> asyncio.Future[set[str]]:
        removed = set()
        for job in jobs:
            row = self._rows.pop(job.id, None)
            if row is None:
                continue
            del self._seqs[bisect.bisect_left(self._seqs, row.seq)]
            del self._by_seq[row.seq]
            if row.job.request_id:
                self._requests.pop(row.job.request_id, None)
            self._log(job, job_pb2.JOB_EVENT_TYPE_DELETED)
            removed.add(job.id)
        return self._done(result=removed)

    def note_published(self, revision: int) -> None:
        if self._published is None or revision > self._published:
            self._published = revision

    async def get(self, job_id: str) -> job_pb2.Job | None:
        row = self._rows.get(job_id)
        return None if row is None else row.job

    async def find_request(self, request_id: str) -> str | None:
        return self._requests.get(request_id)

    def contains_blocking(self, job_id: str) -> bool:
        return job_id in self._rows

    def ids_blocking(self, project: str, group: str, name: str) -> set[str]:
        # A copy first: the loop may change the rows while a worker thread reads.
        rows = list(self._rows.items())
        return {i for i, r in rows if (r.job.project, r.job.group, r.job.name) == (project, group, name)}

    async def ended(
        self, flt: JobFilter, after: int | None, limit: int, *, newest_first: bool = True
    ) -> list[tuple[int, job_pb2.Job]]:
        states = ended_states(flt)
        if not states or limit <= 0:
            return []
        if newest_first:
            hi = len(self._seqs) if after is None else bisect.bisect_left(self._seqs, after)
            order = range(hi - 1, -1, -1)
        else:
            lo = 0 if after is None else bisect.bisect_right(self._seqs, after)
            order = range(lo, len(self._seqs))
        out = []
        for i in order:
            row = self._rows[self._by_seq[self._seqs[i]]]
            if row.job.state in states and flt.matches_name(row.job.project, row.job.group, row.job.name):
                out.append((row.seq, row.job))
                if len(out) == limit:
                    break
        return out

    async def ended_by_end(
        self, flt: JobFilter, through_ns: int, after: tuple[int, int] | None, limit: int
    ) -> list[tuple[int, job_pb2.Job]]:
        states = ended_states(flt)
        if not states or limit <= 0:
            return []
        found = []
        for r in self._rows.values():
            key = (end_ns(r.job), r.seq)
            if (
                r.job.state in states
                and key[0] <= through_ns
                and (after is None or key > after)
                and flt.matches_name(r.job.project, r.job.group, r.job.name)
            ):
                found.append((key, r.job))
        found.sort(key=lambda t: t[0])
        return [(key[1], job) for key, job in found[:limit]]

    async def snapshot(self, flt: JobFilter) -> Snapshot:
        jobs = []
        for seq in self._seqs:
            job = self._rows[self._by_seq[seq]].job
            if flt.matches_name(job.project, job.group, job.name):
                jobs.append(job)
        revision = self._events[-1].revision if self._events else 0
        return _MemorySnapshot(jobs, revision)

    async def stale(self, published: int | None) -> Stale:
        mark = 0 if published is None else published
        if published is None:
            since = time.time_ns() - int(STALE_FALLBACK_SECONDS * 1e9)
            jobs = [
                r.job for r in self._rows.values() if r.job.state not in FINAL_STATES or end_ns(r.job) > since
            ]
        else:
            jobs = [r.job for r in self._rows.values() if r.job.revision > mark]
        jobs.sort(key=lambda j: self._rows[j.id].seq)
        deleted = {}
        for e in self._events if published is not None else ():
            if e.revision > mark and e.type == job_pb2.JOB_EVENT_TYPE_DELETED:
                deleted[e.job.id] = e.job
        return Stale(jobs, list(deleted.values()))

    async def events_after(self, revision: int, limit: int) -> list[StoredEvent]:
        revs = [e.revision for e in self._events]
        i = bisect.bisect_right(revs, revision)
        return self._events[i : i + limit]

    async def oldest_revision(self) -> int:
        return self._events[0].revision if self._events else 0

    async def close(self) -> None:
        self._loop = None


def _settle(fut: asyncio.Future[Any], error: BaseException | None, result: Any) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)
