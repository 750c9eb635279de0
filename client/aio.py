"""The asyncio clients: ``AsyncConductorClient`` and ``AsyncViewerClient``.

This is the one implementation; the blocking clients in ``client.sync`` run
it on a private event loop. Results are the protobuf messages of
``protos/baton/v1`` (``Job``, ``Checkpoint``...). Every unary call has a
deadline (``timeout``, 10 s unless the client or the call says otherwise);
idempotent ones are retried on UNAVAILABLE. SubmitJob is made idempotent by
always sending a ``request_id`` (one is generated when the caller gives none),
so a retried submission never makes two jobs. Pause, resume, cancel and
delete are tried once. Streams (``stream_logs``, ``watch_jobs``,
``stream_logs``) reconnect by themselves (see ``client.streams``).

    async with AsyncConductorClient("127.0.0.1:50051") as conductor:
        job = await conductor.submit_job(Path("train.yaml").read_text())
        async for chunk in conductor.stream_logs(job.id, follow=True):
            sys.stdout.buffer.write(chunk.data)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any, TypedDict, Unpack

import grpc
from google.protobuf import duration_pb2

from baton.client.connection import Connection
from baton.client.errors import DeadlineExceeded, NotFound, OutOfRange
from baton.client.streams import LogStream, WatchStream
from baton.common.jobs import FINAL_STATES
from baton.v1 import conductor_pb2 as cpb
from baton.v1 import conductor_pb2_grpc, job_pb2, viewer_pb2_grpc
from baton.v1 import viewer_pb2 as vpb


class RunName(TypedDict, total=False):
    """A run named by where it lives instead of by job id (runs written by other programs may have none)."""

    project: str
    group: str
    name: str
    run_id: str


class _Lists(Connection):
    """What both services list the same way: jobs by typed filters, a page at a time."""

    # ListJobsRequest or ViewerListJobsRequest: the same fields.
    _LIST_JOBS_REQUEST: Any = None

    async def list_jobs(
        self,
        *,
        project: str = "",
        group: str = "",
        name: str = "",
        states: Iterable[job_pb2.JobState | str] = (),
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> cpb.ListJobsResponse | vpb.ViewerListJobsResponse:
        """One page of jobs, newest first (``page_size`` 0 means 100)."""
        request = self._LIST_JOBS_REQUEST(
            project=project, group=group, name=name, states=list(states),
            page_size=page_size, page_token=page_token,
        )  # fmt: skip
        return await self.call("ListJobs", request, timeout=timeout)

    def iter_jobs(
        self,
        *,
        project: str = "",
        group: str = "",
        name: str = "",
        states: Iterable[job_pb2.JobState | str] = (),
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[job_pb2.Job]:
        """Every matching job, newest first, fetching page after page."""
        request = self._LIST_JOBS_REQUEST(
            project=project, group=group, name=name, states=list(states), page_size=page_size
        )
        return self._pages("ListJobs", request, "jobs", timeout)

    async def _pages(
        self, method: str, request: Any, field: str, timeout: float | None
    ) -> AsyncIterator[Any]:
        """Every item of a paginated list, page after page."""
        while True:
            response = await self.call(method, request, timeout=timeout)
            for item in getattr(response, field):
                yield item
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token


class AsyncConductorClient(_Lists):
    """The conductor (``baton.v1.Conductor``): submit, control, and follow jobs."""

    SERVICE = "conductor"
    ENV = "BATON_CONDUCTOR"
    DEFAULT_ADDRESS = "127.0.0.1:50051"
    _LIST_JOBS_REQUEST = cpb.ListJobsRequest
    STUB = conductor_pb2_grpc.ConductorStub

    async def submit_job(
        self,
        spec: str | job_pb2.JobSpec,
        *,
        start_step: int = 0,
        request_id: str | None = None,
        dry_run: bool = False,
        resume_from: str = "",
        timeout: float | None = None,
    ) -> job_pb2.Job:
        """Queue a job from a YAML spec (text) or a ``JobSpec``; answered once it is durable.

        The same ``request_id`` again returns the job it made. With ``dry_run``
        the spec is validated and the job that would be made is returned.
        ``resume_from`` names a checkpoint of any run of the job's name to start
        from instead of from scratch: ``SUFFIX``, ``RUN_ID/SUFFIX`` or ``latest``.
        """
        request = cpb.SubmitJobRequest(start_step=start_step, dry_run=dry_run)
        if resume_from:
            request.resume_from = resume_from
        if isinstance(spec, str):
            request.spec_yaml = spec
        else:
            request.spec.CopyFrom(spec)
        if not dry_run:
            request.request_id = request_id or uuid.uuid4().hex
        return await self.call("SubmitJob", request, timeout=timeout)

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> job_pb2.Job:
        """One job by id."""
        return await self.call("GetJob", cpb.GetJobRequest(job_id=job_id), timeout=timeout)

    async def pause_job(
        self,
        job_id: str,
        mode: job_pb2.PauseMode | str = job_pb2.PAUSE_MODE_UNSPECIFIED,
        *,
        timeout: float | None = None,
    ) -> job_pb2.Job:
        """RUNNING to PAUSED (SUSPEND) or PAUSING (CHECKPOINT). Not retried."""
        request = cpb.PauseJobRequest(job_id=job_id, mode=mode)
        return await self.call("PauseJob", request, idempotent=False, timeout=timeout)

    async def resume_job(self, job_id: str, *, timeout: float | None = None) -> job_pb2.Job:
        """PAUSED to RUNNING (or QUEUED when no slot is free). Not retried."""
        request = cpb.ResumeJobRequest(job_id=job_id)
        return await self.call("ResumeJob", request, idempotent=False, timeout=timeout)

    async def cancel_job(
        self,
        job_id: str,
        *,
        grace: float | None = None,
        reason: str = "",
        timeout: float | None = None,
    ) -> job_pb2.Job:
        """SIGTERM to the job, SIGKILL after ``grace`` seconds (server default 10). Not retried."""
        request = cpb.CancelJobRequest(job_id=job_id, reason=reason)
        if grace is not None:
            request.grace_period.CopyFrom(_duration(grace))
        return await self.call("CancelJob", request, idempotent=False, timeout=timeout)

    async def delete_job(self, job_id: str, *, timeout: float | None = None) -> cpb.DeleteJobResponse:
        """Remove an ended job and its run directory (checkpoints stay). Not retried."""
        request = cpb.DeleteJobRequest(job_id=job_id)
        return await self.call("DeleteJob", request, idempotent=False, timeout=timeout)

    async def get_conductor_info(self, *, timeout: float | None = None) -> cpb.GetConductorInfoResponse:
        """Version, pid, job counts by state, executors, the latest revision."""
        return await self.call("GetConductorInfo", cpb.GetConductorInfoRequest(), timeout=timeout)

    async def get_job_health(self, job_id: str, *, timeout: float | None = None) -> cpb.GetJobHealthResponse:
        """The processes of a running or suspended job: alive, stopped, CPU, memory, last output."""
        return await self.call("GetJobHealth", cpb.GetJobHealthRequest(job_id=job_id), timeout=timeout)

    async def get_job_step(
        self, job_id: str, step: int, *, tail_lines: int = 0, timeout: float | None = None
    ) -> cpb.GetJobStepResponse:
        """One step (1-based) of a job, with the last ``tail_lines`` lines of its own output."""
        request = cpb.GetJobStepRequest(job_id=job_id, step=step, tail_lines=tail_lines)
        return await self.call("GetJobStep", request, timeout=timeout)

    async def delete_checkpoints(
        self,
        project: str,
        group: str,
        name: str,
        suffixes: Iterable[str] = (),
        *,
        timeout: float | None = None,
    ) -> cpb.DeleteCheckpointsResponse:
        """Remove a job's checkpoints (all of them when no suffix is given). Not retried."""
        request = cpb.DeleteCheckpointsRequest(
            project=project, group=group, name=name, suffixes=list(suffixes)
        )
        return await self.call("DeleteCheckpoints", request, idempotent=False, timeout=timeout)

    async def clear_jobs(
        self,
        *,
        states: Iterable[job_pb2.JobState | str] = (),
        project: str = "",
        group: str = "",
        name: str = "",
        older_than: float | None = None,
        all: bool = False,
        dry_run: bool = False,
        timeout: float | None = None,
    ) -> cpb.ClearJobsResponse:
        """Delete ended jobs in bulk (those that ended ``older_than`` seconds ago or more).

        With no filter the server refuses (``InvalidArgument``, reason
        ``CLEAR_FILTER_REQUIRED``) unless ``all`` is set. With ``dry_run``,
        the answer names the jobs that would go and nothing is deleted.
        Not retried, but for a dry run.
        """
        request = cpb.ClearJobsRequest(
            states=list(states), project=project, group=group, name=name, all=all, dry_run=dry_run
        )
        if older_than is not None:
            request.older_than.CopyFrom(_duration(older_than))
        # A dry run changes nothing, so repeating it after a lost answer is safe.
        return await self.call("ClearJobs", request, idempotent=dry_run, timeout=timeout)

    def stream_logs(
        self, job_id: str, *, offset: int = 0, tail_lines: int = 0, follow: bool = False
    ) -> LogStream:
        """A job's output.log from ``offset`` (or its last ``tail_lines`` lines).

        With ``follow``, until the job has ended and every byte is sent, through
        reconnects; the last chunk is then the ``complete`` one.
        """
        ref = {"job_id": job_id}
        return LogStream(
            self,
            "StreamLogs",
            cpb.StreamLogsRequest,
            ref,
            offset=offset,
            tail_lines=tail_lines,
            follow=follow,
        )

    def watch_jobs(
        self,
        *,
        since_revision: int = 0,
        project: str = "",
        group: str = "",
        name: str = "",
        progress: bool = False,
    ) -> WatchStream:
        """Every change after ``since_revision`` (exclusive); 0 starts with a snapshot.

        With ``progress``, also the job-less SNAPSHOT_END (after the last
        SNAPSHOT event) and HEARTBEAT events, whose ``revision`` is where a
        watch may resume (``since_revision``).
        """
        filters = {"project": project, "group": group, "name": name}
        return WatchStream(
            self, "WatchJobs", cpb.WatchJobsRequest, filters, since_revision, progress=progress
        )

    async def wait_for_job(
        self, job_id: str, *, states: Collection[int] = FINAL_STATES, timeout: float | None = None
    ) -> job_pb2.Job:
        """Wait (watching, not polling) until the job is in one of ``states``; the job then.

        Raises ``DeadlineExceeded`` after ``timeout`` seconds (default: no limit)
        and ``NotFound`` if the job is deleted meanwhile.
        """
        try:
            return await asyncio.wait_for(self._wait(job_id, states), timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"job {job_id} did not reach {', '.join(job_pb2.JobState.Name(s) for s in states)} "
                f"within {timeout:g} s",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
                address=self.address,
                service=self.SERVICE,
            ) from None

    async def _wait(self, job_id: str, states: Collection[int]) -> job_pb2.Job:
        while True:
            job = await self.get_job(job_id)
            if job.state in states:
                return job
            stream = self.watch_jobs(
                since_revision=job.revision, project=job.project, group=job.group, name=job.name
            )
            try:
                async for event in stream:
                    if event.job.id != job_id:
                        continue
                    if event.type == job_pb2.JOB_EVENT_TYPE_DELETED:
                        raise NotFound(f"job {job_id} was deleted", code=grpc.StatusCode.NOT_FOUND)
                    if event.job.state in states:
                        return event.job
            except OutOfRange:
                continue  # its history is gone: look again
            finally:
                await stream.aclose()


class AsyncViewerClient(_Lists):
    """The viewer (``baton.v1.Viewer``): read-only questions about runs, logs and checkpoints.

    A run is named by ``job_id``, or by ``project``, ``group``, ``name`` and
    ``run_id``. Every call is read-only, so every call is retried.
    """

    SERVICE = "viewer"
    ENV = "BATON_VIEWER"
    DEFAULT_ADDRESS = "127.0.0.1:50052"
    _LIST_JOBS_REQUEST = vpb.ViewerListJobsRequest
    STUB = viewer_pb2_grpc.ViewerStub

    async def get_job(
        self, job_id: str = "", *, timeout: float | None = None, **run: Unpack[RunName]
    ) -> job_pb2.Job:
        """One run, read fresh from its status.json."""
        request = vpb.ViewerGetJobRequest(job_id=job_id, **run)
        return await self.call("GetJob", request, timeout=timeout)

    async def list_job_runs(
        self,
        project: str,
        group: str,
        name: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> vpb.ListJobRunsResponse:
        """Every run of one project/group/name, newest first (one page)."""
        request = vpb.ListJobRunsRequest(
            project=project, group=group, name=name, page_size=page_size, page_token=page_token
        )
        return await self.call("ListJobRuns", request, timeout=timeout)

    async def list_projects(
        self, *, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> vpb.ListProjectsResponse:
        """Each project with counts by state, run count and last activity (one page)."""
        request = vpb.ListProjectsRequest(page_size=page_size, page_token=page_token)
        return await self.call("ListProjects", request, timeout=timeout)

    async def list_running_jobs(
        self,
        *,
        project: str = "",
        include_stale: bool = False,
        stale_after: float | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> vpb.ListRunningJobsResponse:
        """RUNNING runs; stale ones (no heartbeat for ``stale_after`` s) only with ``include_stale``."""
        request = vpb.ListRunningJobsRequest(
            project=project, include_stale=include_stale, page_size=page_size, page_token=page_token
        )
        if stale_after is not None:
            request.stale_after.CopyFrom(_duration(stale_after))
        return await self.call("ListRunningJobs", request, timeout=timeout)

    async def list_recent_jobs(
        self, *, project: str = "", hours: int = 0, limit: int = 0, timeout: float | None = None
    ) -> vpb.ListRecentJobsResponse:
        """Runs started in the last ``hours`` (0: 24), newest first, up to ``limit`` (0: 50)."""
        request = vpb.ListRecentJobsRequest(project=project, hours=hours, limit=limit)
        return await self.call("ListRecentJobs", request, timeout=timeout)

    async def get_dashboard_stats(
        self, *, project: str = "", timeout: float | None = None
    ) -> vpb.GetDashboardStatsResponse:
        """Totals by state, running and stale runs, recent failures, checkpoint count and bytes."""
        request = vpb.GetDashboardStatsRequest(project=project)
        return await self.call("GetDashboardStats", request, timeout=timeout)

    async def list_checkpoints(
        self,
        *,
        project: str = "",
        group: str = "",
        name: str = "",
        run_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> vpb.ListCheckpointsResponse:
        """One page of checkpoints of every run (or of ``run_id``), newest first."""
        request = vpb.ListCheckpointsRequest(
            project=project, group=group, name=name, run_id=run_id, page_size=page_size, page_token=page_token
        )
        return await self.call("ListCheckpoints", request, timeout=timeout)

    def iter_checkpoints(
        self,
        *,
        project: str = "",
        group: str = "",
        name: str = "",
        run_id: str = "",
        page_size: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[vpb.Checkpoint]:
        """Every matching checkpoint, newest first, page after page."""
        request = vpb.ListCheckpointsRequest(
            project=project, group=group, name=name, run_id=run_id, page_size=page_size
        )
        return self._pages("ListCheckpoints", request, "checkpoints", timeout)

    async def get_checkpoint(
        self, project: str, group: str, name: str, suffix: str, *, timeout: float | None = None
    ) -> vpb.Checkpoint:
        """One checkpoint, named by ``suffix``: a ref, SUFFIX or RUN_ID/SUFFIX.

        A bare suffix that more than one run's checkpoint has raises
        InvalidArgument with reason CHECKPOINT_AMBIGUOUS (its ``metadata["matches"]``
        lists the refs that would do).
        """
        request = vpb.GetCheckpointRequest(project=project, group=group, name=name, suffix=suffix)
        return await self.call("GetCheckpoint", request, timeout=timeout)

    async def get_latest_checkpoint(
        self, project: str, group: str, name: str, *, run_id: str = "", timeout: float | None = None
    ) -> vpb.Checkpoint:
        """The newest complete checkpoint of a job, across its runs (or of ``run_id``)."""
        request = vpb.GetLatestCheckpointRequest(project=project, group=group, name=name, run_id=run_id)
        return await self.call("GetLatestCheckpoint", request, timeout=timeout)

    async def get_checkpoint_config(
        self, project: str, group: str, name: str, suffix: str = "", *, timeout: float | None = None
    ) -> vpb.GetCheckpointConfigResponse:
        """A checkpoint's config.yaml (else config.json) as a Struct; ``suffix`` a ref, empty: the latest."""
        request = vpb.GetCheckpointConfigRequest(project=project, group=group, name=name, suffix=suffix)
        return await self.call("GetCheckpointConfig", request, timeout=timeout)

    async def get_checkpoint_job_spec(
        self, project: str, group: str, name: str, suffix: str = "", *, timeout: float | None = None
    ) -> vpb.GetCheckpointJobSpecResponse:
        """A checkpoint's job.json as a Struct; ``suffix`` is a ref, empty: the latest."""
        request = vpb.GetCheckpointJobSpecRequest(project=project, group=group, name=name, suffix=suffix)
        return await self.call("GetCheckpointJobSpec", request, timeout=timeout)

    async def get_checkpoint_stats(
        self, *, project: str = "", group: str = "", name: str = "", timeout: float | None = None
    ) -> vpb.GetCheckpointStatsResponse:
        """Checkpoint count and total bytes, of every run."""
        request = vpb.GetCheckpointStatsRequest(project=project, group=group, name=name)
        return await self.call("GetCheckpointStats", request, timeout=timeout)

    async def read_log(
        self,
        job_id: str = "",
        *,
        offset: int = 0,
        limit: int = 0,
        timeout: float | None = None,
        **run: Unpack[RunName],
    ) -> vpb.ReadLogResponse:
        """Bytes of a run's log from ``offset``, up to ``limit`` (0: 64 KiB), with the next offset."""
        request = vpb.ReadLogRequest(job_id=job_id, offset=offset, limit=limit, **run)
        return await self.call("ReadLog", request, timeout=timeout)

    async def tail_log(
        self, job_id: str = "", *, tail_lines: int = 0, timeout: float | None = None, **run: Unpack[RunName]
    ) -> vpb.TailLogResponse:
        """The last ``tail_lines`` lines (0: 100) of a run's log."""
        request = vpb.TailLogRequest(job_id=job_id, tail_lines=tail_lines, **run)
        return await self.call("TailLog", request, timeout=timeout)

    def stream_logs(
        self,
        job_id: str = "",
        *,
        offset: int = 0,
        tail_lines: int = 0,
        follow: bool = False,
        **run: Unpack[RunName],
    ) -> LogStream:
        """As the conductor's ``stream_logs``, read by the viewer from disk."""
        ref = {"job_id": job_id, **run}
        return LogStream(
            self, "StreamLogs", vpb.ViewerStreamLogsRequest, ref,
            offset=offset, tail_lines=tail_lines, follow=follow,
        )


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d
