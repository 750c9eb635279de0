"""Facts about jobs that both services use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from baton.v1 import job_pb2

# SUCCEEDED, FAILED and CANCELLED: a job in one never changes again.
FINAL_STATES = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})



@dataclass(frozen=True)
class JobFilter:
    """Which jobs a list or watch wants: each field empty matches all.

    The conductor's ListJobs, WatchJobs and ClearJobs and the viewer's lists
    take the same four fields, with the same meaning.
    """

    project: str = ""
    group: str = ""
    name: str = ""
    states: tuple[int, ...] = ()

    def matches_name(self, project: str, group: str, name: str) -> bool:
        return (
            (not self.project or project == self.project)
            and (not self.group or group == self.group)
            and (not self.name or name == self.name)
        )

    def matches(self, job: job_pb2.Job) -> bool:
        return self.matches_name(job.project, job.group, job.name) and (
            not self.states or job.state in self.states
        )

    def token_key(self) -> list[Any]:
        """What a page token is bound to: a token from other filters is refused."""
        return [self.project, self.group, self.name, sorted(self.states)]


def complete_chunk(offset: int, job: job_pb2.Job) -> job_pb2.LogChunk:
    """The last message of a followed log: every byte is out and the job ended so."""
    chunk = job_pb2.LogChunk(offset=offset, complete=True, state=job.state)
    if job.HasField("exit_code"):
        chunk.exit_code = job.exit_code
    if job.HasField("signal"):
        chunk.signal = job.signal
    return chunk
