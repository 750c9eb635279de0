"""The job book: what reads see of every job, from memory or from the registry.

The book holds each job as the registry last durably stored it, and nothing
else: the lifecycle writes into it only once a change is on disk, so GetJob,
ListJobs and WatchJobs snapshots never show a job or a state that a crash or
a failed write could take back.

Only live jobs, and jobs that ended a moment ago, are kept in memory: once
the lifecycle is done with an ended job it ``evict``s it, and from then on it
is read back from the registry, whose indexes serve every filter in the
list's order. A list page merges the two, newest submission first; its page
token is the seq it stopped at, so pages stay stable whatever changes
between them. Counts by state are kept as jobs change, never counted.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import AsyncIterator

from baton.common.errors import NotFound, invalid_field, quote
from baton.common.jobs import FINAL_STATES, JobFilter
from baton.common.paging import PageBytes, decode_token, encode_token, page_size
from baton.conductor.registry import Registry, end_ns, merge_streams
from baton.v1 import job_pb2


def not_found(job_id: str) -> NotFound:
    return NotFound(f"no job {quote(job_id)}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})


class JobBook:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._jobs: dict[str, job_pb2.Job] = {}
        self._seq: dict[str, int] = {}
        self._order: list[int] = []  # seqs in memory, ascending
        self._by_seq: dict[int, str] = {}
        # Every job's state, counted: those in memory and those only in the registry.
        self._counts: dict[int, int] = {}
        # The highest revision whose change is in the book.
        self.revision = 0

    def __len__(self) -> int:
        """Jobs in memory (live ones and those not yet evicted)."""
        return len(self._jobs)

    def load_counts(self, ended: dict[int, int]) -> None:
        """Count the ended jobs that only the registry holds (at start)."""
        for state, n in ended.items():
            self._counts[state] = self._counts.get(state, 0) + n

    def find(self, job_id: str) -> job_pb2.Job | None:
        """The job if it is in memory (every live job is); None otherwise."""
        return self._jobs.get(job_id)

    async def lookup(self, job_id: str) -> job_pb2.Job | None:
        """The job, from memory or the registry; None when there is no such job (any more)."""
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        stored = await self._registry.get(job_id)
        if stored is None or stored.state not in FINAL_STATES:
            # A live job not in memory is one whose creation is not yet shown.
            return None
        return stored

    async def get(self, job_id: str) -> job_pb2.Job:
        job = await self.lookup(job_id)
        if job is None:
            raise not_found(job_id)
        return job

    def put(self, seq: int, job: job_pb2.Job) -> None:
        """Record a job's newest durable version (a new job or a change to one)."""
        old = self._jobs.get(job.id)
        if old is None:
            self._seq[job.id] = seq
            self._by_seq[seq] = job.id
            insort(self._order, seq)
        else:
            self._counts[old.state] -= 1
        self._counts[job.state] = self._counts.get(job.state, 0) + 1
        self._jobs[job.id] = job
        self.revision = max(self.revision, job.revision)

    def evict(self, job_id: str) -> None:
        """Forget an ended job held in memory: the registry serves it from now on."""
        if self._jobs.pop(job_id, None) is None:
            return
        seq = self._seq.pop(job_id)
        del self._by_seq[seq]
        del self._order[bisect_left(self._order, seq)]

    def remove(self, job: job_pb2.Job, revision: int) -> None:
        """A job was deleted (``job`` as it was)."""
        held = self._jobs.get(job.id)
        if held is not None:
            self.evict(job.id)
            state = held.state
        else:
            state = job.state
        self._counts[state] = self._counts.get(state, 0) - 1
        if not self._counts[state]:
            del self._counts[state]
        self.revision = max(self.revision, revision)

    def counts(self) -> dict[int, int]:
        return {s: n for s, n in self._counts.items() if n > 0}

    def _memory_page(self, flt: JobFilter, after: int | None, limit: int) -> list[tuple[int, job_pb2.Job]]:
        """Matching jobs in memory below seq ``after``, newest first, at most ``limit``."""
        idx = len(self._order) if after is None else bisect_left(self._order, after)
        out: list[tuple[int, job_pb2.Job]] = []
        while idx > 0 and len(out) < limit:
            idx -= 1
            seq = self._order[idx]
            job = self._jobs[self._by_seq[seq]]
            if flt.matches(job):
                out.append((seq, job))
        return out

    async def page(
        self, flt: JobFilter, after: int | None, limit: int
    ) -> tuple[list[tuple[int, job_pb2.Job]], int | None]:
        """Matching jobs below seq ``after``, newest first, and where the next page starts (None: the end).

        Memory and the registry, merged. A job in both (it ended a moment
        ago, or is ending now) is taken from memory, which is what reads see.
        """
        mem = self._memory_page(flt, after, limit)
        in_memory = {job.id for _, job in mem}
        stored = await self._registry.ended(flt, after, limit)
        # After the wait: whatever memory holds now is served from memory.
        fresh = [(seq, job) for seq, job in stored if job.id not in in_memory and job.id not in self._jobs]
        merged = merge_streams([mem, fresh], limit, newest_first=True)
        # A stream that came back full may have more below where it stopped.
        full = [s[-1][0] for s in (mem, stored) if len(s) >= limit and s]
        bound = max(full) if full else None
        if bound is not None:
            merged = [(seq, job) for seq, job in merged if seq >= bound]
        if len(merged) >= limit:
            return merged[:limit], merged[limit - 1][0]
        if bound is not None:
            return merged, bound
        return merged, None

    async def list_jobs(self, flt: JobFilter, size: int, token: str) -> tuple[list[job_pb2.Job], str]:
        """Matching jobs, newest first, one page at a time."""
        limit = page_size(size)
        key = flt.token_key()
        after = decode_token("conductor.jobs", key, token)
        if after is not None and not isinstance(after, int):
            raise invalid_field("page_token", "is not a page token from this list")
        # One more than a page: a next token only when another job matches.
        want = limit + 1
        found: list[tuple[int, job_pb2.Job]] = []
        while True:
            rows, after = await self.page(flt, after, want - len(found))
            found += rows
            if after is None or len(found) >= want:
                break
        out: list[job_pb2.Job] = []
        page_bytes = PageBytes()
        for seq, job in found[:limit]:
            if not page_bytes.take(job):
                # Cut short for size: the next page starts with this job.
                return out, encode_token("conductor.jobs", key, seq + 1)
            out.append(job)
        if len(found) > limit:
            return out, encode_token("conductor.jobs", key, found[limit - 1][0])
        return out, ""

    async def all_pages(self, flt: JobFilter, batch: int = 500) -> AsyncIterator[list[job_pb2.Job]]:
        """Every matching job, newest first, a batch at a time (for bulk work)."""
        after: int | None = None
        while True:
            rows, after = await self.page(flt, after, batch)
            if rows:
                yield [job for _, job in rows]
            if after is None:
                return

    async def ended_through(
        self, flt: JobFilter, through_ns: int, batch: int = 500
    ) -> AsyncIterator[list[job_pb2.Job]]:
        """Every ended job matching ``flt`` that ended at or before ``through_ns``, in
        the order they ended, a batch at a time (for bulk work by age: its cost goes
        with what it finds, not with the history)."""
        after: tuple[int, int] | None = None
        while True:
            rows = await self._registry.ended_by_end(flt, through_ns, after, batch)
            if rows:
                yield [self._jobs.get(job.id, job) for _, job in rows]
            if len(rows) < batch:
                return
            after = (end_ns(rows[-1][1]), rows[-1][0])
