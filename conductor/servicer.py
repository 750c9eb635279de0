"""The Conductor servicer: protobuf in, lifecycle calls, protobuf out. Nothing more.

Rules live in ``conductor.lifecycle``; status codes come from the domain
errors it raises (``common.rpc.translate_errors``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from baton.common import auth
from baton.common import spec as specs
from baton.common.durations import seconds_of
from baton.common.errors import invalid_field
from baton.common.jobs import JobFilter
from baton.common.rpc import required, translate_errors
from baton.common.version import VERSION
from baton.common.wire import Encoded
from baton.conductor.admin import Admin
from baton.conductor.executors.base import Executor
from baton.conductor.executors.procfs import self_rss
from baton.conductor.feeds import Feeds
from baton.conductor.inspection import Inspector
from baton.conductor.lifecycle import Lifecycle
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2


class ConductorServicer(conductor_pb2_grpc.ConductorServicer):
    def __init__(
        self,
        lifecycle: Lifecycle,
        feeds: Feeds,
        start_time: timestamp_pb2.Timestamp,
        status_dir: str,
        checkpoints_dir: str,
    ) -> None:
        self._lc = lifecycle
        self._book = lifecycle.book
        self._inspector = Inspector(lifecycle)
        self._admin = Admin(lifecycle)
        self._feeds = feeds
        self._start_time = start_time
        self._status_dir = status_dir
        self._checkpoints_dir = checkpoints_dir

    @translate_errors
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        source = request.WhichOneof("source")
        if source == "spec_yaml":
            model = specs.from_yaml(request.spec_yaml)
        elif source == "spec":
            model = specs.from_proto(request.spec)
        else:
            raise invalid_field("spec", "give the job spec as spec_yaml or spec")
        auth.check_project(model.project)
        return await self._lc.submit(
            model,
            start_step=request.start_step,
            request_id=request.request_id,
            dry_run=request.dry_run,
            resume_from=request.resume_from,
            submitted_by=auth.caller_name(),
        )

    @translate_errors
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        return await self._book.get(required("job_id", request.job_id))

    @translate_errors
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        flt = JobFilter(request.project, request.group, request.name, tuple(request.states))
        jobs, token = await self._book.list_jobs(flt, request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=jobs, next_page_token=token)

    @translate_errors
    async def PauseJob(self, request: pb.PauseJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        return await self._lc.pause(await self._may_act_on(request.job_id), request.mode)

    @translate_errors
    async def ResumeJob(self, request: pb.ResumeJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        return await self._lc.resume(await self._may_act_on(request.job_id))

    @translate_errors
    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        grace = seconds_of(request.grace_period, "grace_period") if request.HasField("grace_period") else None
        return await self._lc.cancel(await self._may_act_on(request.job_id), grace, request.reason)

    async def _may_act_on(self, job_id: str) -> str:
        """``job_id`` if the caller may act on that job's project; else PermissionDenied.

        A job that does not exist is left to the lifecycle's NOT_FOUND: every
        reader may learn that from GetJob, so saying it here leaks nothing.
        """
        required("job_id", job_id)
        if auth.limited_to_projects():
            job = await self._lc.lookup(job_id)
            if job is not None:
                auth.check_project(job.project)
        return job_id

    @translate_errors
    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteJobResponse:
        job_id = required("job_id", request.job_id)
        revision = await self._lc.delete(job_id)
        return pb.DeleteJobResponse(job_id=job_id, revision=revision)

    @translate_errors
    async def GetConductorInfo(
        self, request: pb.GetConductorInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConductorInfoResponse:
        counts = self._book.counts()
        return pb.GetConductorInfoResponse(
            version=VERSION,
            pid=os.getpid(),
            start_time=self._start_time,
            job_counts=[
                job_pb2.JobStateCount(state=s, count=n)  # type: ignore[arg-type]
                for s, n in sorted(counts.items())
            ],
            executors=[self._executor_info(name, ex) for name, ex in sorted(self._lc.executors().items())],
            revision=self._lc.revision,
            status_dir=self._status_dir,
            checkpoints_dir=self._checkpoints_dir,
            max_running=self._lc.max_running,
            rss_bytes=await asyncio.to_thread(self_rss),
            uptime=_duration(time.time() - self._start_time.ToDatetime().timestamp()),
            running_jobs=self._lc.running_count,
            damaged_registry_rows=self._lc.damaged_rows,
            retention_deleted_jobs=self._lc.retention_deleted,
            caller=_caller(),
        )

    def _executor_info(self, name: str, executor: Executor) -> pb.ExecutorInfo:
        info = pb.ExecutorInfo(
            name=name,
            pause_modes=sorted(executor.pause_modes),  # type: ignore[arg-type]
            health_fields=sorted(executor.health_fields),
        )
        resources = self._lc.resources(name)
        if resources is not None:
            capacity, free = resources
            info.capacity.CopyFrom(_resources(capacity.cpus, capacity.memory, len(capacity.gpus)))
            info.free.CopyFrom(_resources(free.cpus, free.memory, len(free.gpus)))
            info.gpu_ids.extend(capacity.gpus)
            info.free_gpu_ids.extend(free.gpus)
        return info

    @translate_errors
    async def GetJobHealth(
        self, request: pb.GetJobHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobHealthResponse:
        health = await self._inspector.health(required("job_id", request.job_id))
        job, proc = health.job, health.process
        out = pb.GetJobHealthResponse(
            job_id=job.id, state=job.state, has_process=proc is not None, detail=health.detail
        )
        if job.HasField("heartbeat_time"):
            out.heartbeat_time.CopyFrom(job.heartbeat_time)
        if health.last_output is not None:
            out.last_output_time.FromNanoseconds(int(health.last_output * 1e9))
        if proc is not None:
            out.pid, out.alive, out.zombie = proc.pid, proc.alive, proc.zombie
            out.process_count, out.cpu_percent, out.rss_bytes = (
                proc.process_count,
                proc.cpu_percent,
                proc.rss_bytes,
            )
            out.stopped = proc.stopped
            out.uptime.CopyFrom(_duration(proc.uptime_seconds))
        return out

    @translate_errors
    async def GetJobStep(
        self, request: pb.GetJobStepRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobStepResponse:
        step, tail = await self._inspector.job_step(
            required("job_id", request.job_id), request.step, request.tail_lines
        )
        return pb.GetJobStepResponse(step=step, tail=tail)

    @translate_errors
    async def DeleteCheckpoints(
        self, request: pb.DeleteCheckpointsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCheckpointsResponse:
        r = request
        count, size = await self._admin.delete_checkpoints(r.project, r.group, r.name, list(r.suffixes))
        return pb.DeleteCheckpointsResponse(deleted_count=count, deleted_bytes=size)

    @translate_errors
    async def ClearJobs(
        self, request: pb.ClearJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClearJobsResponse:
        r = request
        older = seconds_of(r.older_than, "older_than") if r.HasField("older_than") else 0.0
        ids = await self._admin.clear_jobs(
            list(r.states), r.project, r.group, r.name, older, clear_all=r.all, dry_run=r.dry_run
        )
        return pb.ClearJobsResponse(deleted_count=len(ids), job_ids=ids)

    @translate_errors
    async def StreamLogs(
        self, request: pb.StreamLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[job_pb2.LogChunk]:
        async for chunk in self._feeds.logs(
            required("job_id", request.job_id), request.offset, request.tail_lines, request.follow
        ):
            yield chunk

    @translate_errors
    async def WatchJobs(
        self, request: pb.WatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobsResponse | Encoded]:
        flt = JobFilter(request.project, request.group, request.name)
        async for response in self._feeds.watch(request.since_revision, flt):
            yield response


def _resources(cpus: float, memory: int, gpus: int) -> job_pb2.Resources:
    return job_pb2.Resources(cpus=cpus, memory_bytes=memory, gpus=gpus)


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(seconds, 0.0) * 1e9))
    return d


def _caller() -> pb.Caller:
    identity = auth.CALLER.get()
    if identity is None:
        return pb.Caller(role="admin")
    projects = sorted(identity.projects) if identity.projects is not None else []
    return pb.Caller(name=identity.name, role=identity.role.name.lower(), projects=projects)
