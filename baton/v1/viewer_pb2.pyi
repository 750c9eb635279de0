import datetime

from baton.v1 import job_pb2 as _job_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ViewerListJobsRequest(_message.Message):
    __slots__ = ("project", "group", "name", "states", "page_size", "page_token")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    states: _containers.RepeatedScalarFieldContainer[_job_pb2.JobState]
    page_size: int
    page_token: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_job_pb2.JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ViewerListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token", "total_size")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    total_size: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class ViewerGetJobRequest(_message.Message):
    __slots__ = ("job_id", "project", "group", "name", "run_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    project: str
    group: str
    name: str
    run_id: str
    def __init__(self, job_id: _Optional[str] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListJobRunsRequest(_message.Message):
    __slots__ = ("project", "group", "name", "page_size", "page_token")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    page_size: int
    page_token: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobRunsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ProjectSummary(_message.Message):
    __slots__ = ("project", "run_count", "state_counts", "last_activity_time")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    RUN_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVITY_TIME_FIELD_NUMBER: _ClassVar[int]
    project: str
    run_count: int
    state_counts: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobStateCount]
    last_activity_time: _timestamp_pb2.Timestamp
    def __init__(self, project: _Optional[str] = ..., run_count: _Optional[int] = ..., state_counts: _Optional[_Iterable[_Union[_job_pb2.JobStateCount, _Mapping]]] = ..., last_activity_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects", "next_page_token")
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[ProjectSummary]
    next_page_token: str
    def __init__(self, projects: _Optional[_Iterable[_Union[ProjectSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListRunningJobsRequest(_message.Message):
    __slots__ = ("project", "include_stale", "stale_after", "page_size", "page_token")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_STALE_FIELD_NUMBER: _ClassVar[int]
    STALE_AFTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    project: str
    include_stale: bool
    stale_after: _duration_pb2.Duration
    page_size: int
    page_token: str
    def __init__(self, project: _Optional[str] = ..., include_stale: _Optional[bool] = ..., stale_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class RunningJob(_message.Message):
    __slots__ = ("job", "stale", "heartbeat_age")
    JOB_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AGE_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    stale: bool
    heartbeat_age: _duration_pb2.Duration
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., stale: _Optional[bool] = ..., heartbeat_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ListRunningJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[RunningJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[RunningJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListRecentJobsRequest(_message.Message):
    __slots__ = ("project", "hours", "limit")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    HOURS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    project: str
    hours: int
    limit: int
    def __init__(self, project: _Optional[str] = ..., hours: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRecentJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ...) -> None: ...

class GetDashboardStatsRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: str
    def __init__(self, project: _Optional[str] = ...) -> None: ...

class GetDashboardStatsResponse(_message.Message):
    __slots__ = ("total_runs", "state_counts", "running", "stale", "recent_failures", "recent_failure_count", "checkpoint_count", "checkpoint_bytes", "invalid_status_files", "invalid_names", "outside_links", "last_full_scan_time", "watch_mode", "unwatched_directories")
    TOTAL_RUNS_FIELD_NUMBER: _ClassVar[int]
    STATE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    INVALID_STATUS_FILES_FIELD_NUMBER: _ClassVar[int]
    INVALID_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_LINKS_FIELD_NUMBER: _ClassVar[int]
    LAST_FULL_SCAN_TIME_FIELD_NUMBER: _ClassVar[int]
    WATCH_MODE_FIELD_NUMBER: _ClassVar[int]
    UNWATCHED_DIRECTORIES_FIELD_NUMBER: _ClassVar[int]
    total_runs: int
    state_counts: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobStateCount]
    running: int
    stale: int
    recent_failures: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    recent_failure_count: int
    checkpoint_count: int
    checkpoint_bytes: int
    invalid_status_files: int
    invalid_names: int
    outside_links: int
    last_full_scan_time: _timestamp_pb2.Timestamp
    watch_mode: str
    unwatched_directories: int
    def __init__(self, total_runs: _Optional[int] = ..., state_counts: _Optional[_Iterable[_Union[_job_pb2.JobStateCount, _Mapping]]] = ..., running: _Optional[int] = ..., stale: _Optional[int] = ..., recent_failures: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., recent_failure_count: _Optional[int] = ..., checkpoint_count: _Optional[int] = ..., checkpoint_bytes: _Optional[int] = ..., invalid_status_files: _Optional[int] = ..., invalid_names: _Optional[int] = ..., outside_links: _Optional[int] = ..., last_full_scan_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., watch_mode: _Optional[str] = ..., unwatched_directories: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("project", "group", "name", "suffix", "path", "create_time", "size_bytes", "file_count", "config_file", "has_job_spec", "run_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    HAS_JOB_SPEC_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    suffix: str
    path: str
    create_time: _timestamp_pb2.Timestamp
    size_bytes: int
    file_count: int
    config_file: str
    has_job_spec: bool
    run_id: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., suffix: _Optional[str] = ..., path: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., file_count: _Optional[int] = ..., config_file: _Optional[str] = ..., has_job_spec: _Optional[bool] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("project", "group", "name", "page_size", "page_token", "run_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    page_size: int
    page_token: str
    run_id: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "next_page_token")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    next_page_token: str
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("project", "group", "name", "suffix")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    suffix: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., suffix: _Optional[str] = ...) -> None: ...

class GetLatestCheckpointRequest(_message.Message):
    __slots__ = ("project", "group", "name", "run_id")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    run_id: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class GetCheckpointConfigRequest(_message.Message):
    __slots__ = ("project", "group", "name", "suffix")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    suffix: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., suffix: _Optional[str] = ...) -> None: ...

class GetCheckpointConfigResponse(_message.Message):
    __slots__ = ("config", "source_file", "suffix", "run_id")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FILE_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    config: _struct_pb2.Struct
    source_file: str
    suffix: str
    run_id: str
    def __init__(self, config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., source_file: _Optional[str] = ..., suffix: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class GetCheckpointJobSpecRequest(_message.Message):
    __slots__ = ("project", "group", "name", "suffix")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    suffix: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., suffix: _Optional[str] = ...) -> None: ...

class GetCheckpointJobSpecResponse(_message.Message):
    __slots__ = ("job_spec", "suffix", "run_id")
    JOB_SPEC_FIELD_NUMBER: _ClassVar[int]
    SUFFIX_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    job_spec: _struct_pb2.Struct
    suffix: str
    run_id: str
    def __init__(self, job_spec: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., suffix: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class GetCheckpointStatsRequest(_message.Message):
    __slots__ = ("project", "group", "name")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetCheckpointStatsResponse(_message.Message):
    __slots__ = ("checkpoint_count", "total_bytes")
    CHECKPOINT_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    checkpoint_count: int
    total_bytes: int
    def __init__(self, checkpoint_count: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ReadLogRequest(_message.Message):
    __slots__ = ("job_id", "project", "group", "name", "run_id", "offset", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    project: str
    group: str
    name: str
    run_id: str
    offset: int
    limit: int
    def __init__(self, job_id: _Optional[str] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., run_id: _Optional[str] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ReadLogResponse(_message.Message):
    __slots__ = ("data", "offset", "next_offset", "size_bytes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    next_offset: int
    size_bytes: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., next_offset: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class TailLogRequest(_message.Message):
    __slots__ = ("job_id", "project", "group", "name", "run_id", "tail_lines")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    project: str
    group: str
    name: str
    run_id: str
    tail_lines: int
    def __init__(self, job_id: _Optional[str] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., run_id: _Optional[str] = ..., tail_lines: _Optional[int] = ...) -> None: ...

class TailLogResponse(_message.Message):
    __slots__ = ("data", "offset", "next_offset")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    next_offset: int
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., next_offset: _Optional[int] = ...) -> None: ...

class ViewerStreamLogsRequest(_message.Message):
    __slots__ = ("job_id", "project", "group", "name", "run_id", "offset", "tail_lines", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    project: str
    group: str
    name: str
    run_id: str
    offset: int
    tail_lines: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., run_id: _Optional[str] = ..., offset: _Optional[int] = ..., tail_lines: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...
