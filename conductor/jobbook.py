"""The job book: the conductor's published record of every job, in memory.

The book holds each job as the registry last durably stored it, and nothing
else: the lifecycle writes into it only once a change is on disk, so GetJob,
ListJobs and WatchJobs snapshots never show a job or a state that a crash or
a failed write could take back. List queries and their paging live here.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable

from baton.common.errors import NotFound, invalid_field, quote
from baton.common.jobs import JobFilter
from baton.common.paging import PageBytes, decode_token, encode_token, page_size
from baton.v1 import job_pb2


class JobBook:
    def __init__(self) -> None:
        self._jobs: dict[str, job_pb2.Job] = {}
        self._seq: dict[str, int] = {}
        self._order: list[int] = []  # seqs, ascending
        self._by_seq: dict[int, str] = {}
        # The highest revision whose change is in the book.
        self.revision = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> job_pb2.Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {quote(job_id)}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id})
        return job

    def find(self, job_id: str) -> job_pb2.Job | None:
        """The job, or None when there is no such job (any more)."""
        return self._jobs.get(job_id)

    def put(self, seq: int, job: job_pb2.Job) -> None:
        """Record a job's newest durable version (a new job or a change to one)."""
        if job.id not in self._jobs:
            self._seq[job.id] = seq
            self._by_seq[seq] = job.id
            insort(self._order, seq)
        self._jobs[job.id] = job
        self.revision = max(self.revision, job.revision)

    def remove(self, job_id: str, revision: int) -> None:
        if self._jobs.pop(job_id, None) is None:
            return
        seq = self._seq.pop(job_id)
        del self._by_seq[seq]
        del self._order[bisect_left(self._order, seq)]
        self.revision = max(self.revision, revision)

    def list_jobs(self, flt: JobFilter, size: int, token: str) -> tuple[list[job_pb2.Job], str]:
        """Matching jobs, newest first, one page at a time."""
        limit = page_size(size)
        key = flt.token_key()
        after = decode_token("conductor.jobs", key, token)
        if after is not None and not isinstance(after, int):
            raise invalid_field("page_token", "is not a page token from this list")
        # Newest first: walk the seqs downwards from just below the last one sent.
        idx = len(self._order) if after is None else bisect_left(self._order, after)
        out: list[job_pb2.Job] = []
        page_bytes = PageBytes()
        while idx > 0:
            idx -= 1
            job = self._jobs[self._by_seq[self._order[idx]]]
            if flt.matches(job):
                if len(out) == limit or not page_bytes.take(job):
                    return out, encode_token("conductor.jobs", key, self._seq[out[-1].id])
                out.append(job)
        return out, ""

    def jobs(self, flt: JobFilter) -> Iterable[job_pb2.Job]:
        """Every matching job, oldest first (for snapshots)."""
        for seq in list(self._order):
            job = self._jobs.get(self._by_seq.get(seq, ""))
            if job is not None and flt.matches(job):
                yield job

    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for job in self._jobs.values():
            out[job.state] = out.get(job.state, 0) + 1
        return out
