"""Facts about jobs that both services use."""

from __future__ import annotations

from baton.v1 import job_pb2

TERMINAL = frozenset({job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED})


def complete_chunk(offset: int, job: job_pb2.Job) -> job_pb2.LogChunk:
    """The last message of a followed log: every byte is out and the job ended so."""
    chunk = job_pb2.LogChunk(offset=offset, complete=True, state=job.state)
    if job.HasField("exit_code"):
        chunk.exit_code = job.exit_code
    if job.HasField("signal"):
        chunk.signal = job.signal
    return chunk
