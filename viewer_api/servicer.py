"""The Viewer servicer: protobuf in, ViewerService calls, protobuf out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from baton.common.durations import seconds_of
from baton.common.jobs import JobFilter
from baton.common.rpc import translate_errors
from baton.v1 import job_pb2, viewer_pb2_grpc
from baton.v1 import viewer_pb2 as pb
from baton.viewer_api.service import ViewerService

Ctx: TypeAlias = grpc.aio.ServicerContext


class ViewerServicer(viewer_pb2_grpc.ViewerServicer):
    def __init__(self, service: ViewerService) -> None:
        self._svc = service

    @translate_errors
    async def ListJobs(self, request: pb.ViewerListJobsRequest, context: Ctx) -> pb.ViewerListJobsResponse:
        flt = JobFilter(request.project, request.group, request.name, tuple(request.states))
        jobs, token, total = await self._svc.list_jobs(flt, request.page_size, request.page_token)
        return pb.ViewerListJobsResponse(jobs=jobs, next_page_token=token, total_size=total)

    @translate_errors
    async def GetJob(self, request: pb.ViewerGetJobRequest, context: Ctx) -> job_pb2.Job:
        r = request
        return await self._svc.get_job(r.job_id, r.project, r.group, r.name, r.run_id)

    @translate_errors
    async def ListJobRuns(self, request: pb.ListJobRunsRequest, context: Ctx) -> pb.ListJobRunsResponse:
        r = request
        jobs, token = await self._svc.list_job_runs(r.project, r.group, r.name, r.page_size, r.page_token)
        return pb.ListJobRunsResponse(jobs=jobs, next_page_token=token)

    @translate_errors
    async def ListProjects(self, request: pb.ListProjectsRequest, context: Ctx) -> pb.ListProjectsResponse:
        projects, token = self._svc.list_projects(request.page_size, request.page_token)
        return pb.ListProjectsResponse(projects=projects, next_page_token=token)

    @translate_errors
    async def ListRunningJobs(
        self, request: pb.ListRunningJobsRequest, context: Ctx
    ) -> pb.ListRunningJobsResponse:
        r = request
        stale_after = seconds_of(r.stale_after, "stale_after") if r.HasField("stale_after") else None
        jobs, token = await self._svc.list_running(
            r.project, r.include_stale, stale_after, r.page_size, r.page_token
        )
        return pb.ListRunningJobsResponse(jobs=jobs, next_page_token=token)

    @translate_errors
    async def ListRecentJobs(
        self, request: pb.ListRecentJobsRequest, context: Ctx
    ) -> pb.ListRecentJobsResponse:
        return pb.ListRecentJobsResponse(
            jobs=await self._svc.list_recent(request.project, request.hours, request.limit)
        )

    @translate_errors
    async def GetDashboardStats(
        self, request: pb.GetDashboardStatsRequest, context: Ctx
    ) -> pb.GetDashboardStatsResponse:
        return await self._svc.dashboard(request.project)

    @translate_errors
    async def ListCheckpoints(
        self, request: pb.ListCheckpointsRequest, context: Ctx
    ) -> pb.ListCheckpointsResponse:
        r = request
        found, token = self._svc.list_checkpoints(
            r.project, r.group, r.name, r.run_id, r.page_size, r.page_token
        )
        return pb.ListCheckpointsResponse(checkpoints=found, next_page_token=token)

    @translate_errors
    async def GetCheckpoint(self, request: pb.GetCheckpointRequest, context: Ctx) -> pb.Checkpoint:
        return self._svc.get_checkpoint(request.project, request.group, request.name, request.suffix)

    @translate_errors
    async def GetLatestCheckpoint(
        self, request: pb.GetLatestCheckpointRequest, context: Ctx
    ) -> pb.Checkpoint:
        r = request
        return self._svc.latest_checkpoint(r.project, r.group, r.name, r.run_id)

    @translate_errors
    async def GetCheckpointConfig(
        self, request: pb.GetCheckpointConfigRequest, context: Ctx
    ) -> pb.GetCheckpointConfigResponse:
        r = request
        return await self._svc.checkpoint_config(r.project, r.group, r.name, r.suffix)

    @translate_errors
    async def GetCheckpointJobSpec(
        self, request: pb.GetCheckpointJobSpecRequest, context: Ctx
    ) -> pb.GetCheckpointJobSpecResponse:
        r = request
        return await self._svc.checkpoint_job_spec(r.project, r.group, r.name, r.suffix)

    @translate_errors
    async def GetCheckpointStats(
        self, request: pb.GetCheckpointStatsRequest, context: Ctx
    ) -> pb.GetCheckpointStatsResponse:
        return self._svc.checkpoint_stats(request.project, request.group, request.name)

    @translate_errors
    async def ReadLog(self, request: pb.ReadLogRequest, context: Ctx) -> pb.ReadLogResponse:
        r = request
        ref = (r.job_id, r.project, r.group, r.name, r.run_id)
        return await self._svc.read_log(ref, r.offset, r.limit)

    @translate_errors
    async def TailLog(self, request: pb.TailLogRequest, context: Ctx) -> pb.TailLogResponse:
        r = request
        return await self._svc.tail_log((r.job_id, r.project, r.group, r.name, r.run_id), r.tail_lines)

    @translate_errors
    async def StreamLogs(
        self, request: pb.ViewerStreamLogsRequest, context: Ctx
    ) -> AsyncIterator[job_pb2.LogChunk]:
        r = request
        ref = (r.job_id, r.project, r.group, r.name, r.run_id)
        async for chunk in self._svc.stream_logs(ref, r.offset, r.tail_lines, r.follow):
            yield chunk

    # Deprecated: the first name of StreamLogs, still served for released clients.
    StreamLog = StreamLogs
