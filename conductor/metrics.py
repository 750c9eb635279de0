"""The conductor's Prometheus metrics: jobs by state, transitions, queue wait and run time,
and the registry's commit latency, on top of what every service has (``common.metrics``).

Everything here is learnt from durable changes only (``Lifecycle``'s
observer), so the figures match what GetJob and WatchJobs show. States are
named as in ``conductor.transitions`` (QUEUED, RUNNING; a new job comes from
UNSPECIFIED). No label names a job, a project or a user.
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from baton.common.metrics import IO_BUCKETS, ServiceMetrics
from baton.conductor import transitions
from baton.conductor.lifecycle import Observer, state_name
from baton.v1 import job_pb2

S = job_pb2
FINAL = frozenset({S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})
# Jobs wait and run from seconds to days.
JOB_BUCKETS = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0,
)  # fmt: skip


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


class ConductorMetrics(ServiceMetrics, Observer):
    """The conductor's registry of series, kept up to date as the lifecycle's observer."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.jobs = Gauge("baton_jobs", "Jobs the conductor holds, by state.", ("state",), registry=r)
        self.transitions = Counter(
            "baton_job_transitions",
            "Durable changes of a job's state (a new job: from UNSPECIFIED to QUEUED).",
            ("from", "to"),
            registry=r,
        )
        self.queue_wait = Histogram(
            "baton_job_queue_wait_seconds",
            "Time a job waited QUEUED before it went RUNNING (each time it was queued).",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "baton_job_run_seconds",
            "Time from a job's first start to its end (pauses included), for jobs that started.",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.commit = Histogram(
            "baton_registry_commit_seconds",
            "Time of one registry transaction (a group of writes, with its fsync).",
            buckets=IO_BUCKETS,
            registry=r,
        )
        # Every state and every allowed change, at 0 from the start: a rate over
        # a series that appears only at its first event misses that event.
        for state in S.JobState.values():
            if state != S.JOB_STATE_UNSPECIFIED:
                self.jobs.labels(state_name(state))
        for before, after in transitions.table():
            self.transitions.labels(before, after)
        # Queued jobs: when each entered QUEUED (seconds since the epoch).
        self._queued_at: dict[str, float] = {}

    # ------------------------------------------------------------ Observer

    def loaded(self, jobs: list[job_pb2.Job], ended: dict[int, int] | None = None) -> None:
        counts: dict[int, int] = dict(ended or {})
        for job in jobs:
            counts[job.state] = counts.get(job.state, 0) + 1
            if job.state == S.JOB_STATE_QUEUED:
                # A job never started waits since it was made; a requeued one since its last change.
                since = job.update_time if job.HasField("start_time") else job.create_time
                self._queued_at[job.id] = _seconds(since)
        for state, count in counts.items():
            self.jobs.labels(state_name(state)).set(count)

    def transition(self, job: job_pb2.Job, before: int) -> None:
        after = job.state
        self.transitions.labels(state_name(before), state_name(after)).inc()
        if before != S.JOB_STATE_UNSPECIFIED:
            self.jobs.labels(state_name(before)).dec()
        self.jobs.labels(state_name(after)).inc()
        now = _seconds(job.update_time)
        if before == S.JOB_STATE_QUEUED:
            since = self._queued_at.pop(job.id, None)
            if after == S.JOB_STATE_RUNNING and since is not None:
                self.queue_wait.observe(max(now - since, 0.0))
        if after == S.JOB_STATE_QUEUED:
            self._queued_at[job.id] = now
        elif after in FINAL and job.HasField("start_time"):
            end = job.end_time if job.HasField("end_time") else job.update_time
            self.run_time.observe(max(_seconds(end) - _seconds(job.start_time), 0.0))

    def deleted(self, job: job_pb2.Job) -> None:
        self.jobs.labels(state_name(job.state)).dec()
        self._queued_at.pop(job.id, None)

    def committed(self, seconds: float) -> None:
        """A registry transaction took ``seconds`` (called from the registry's writer thread)."""
        self.commit.observe(seconds)
