import datetime

from baton.v1 import job_pb2 as _job_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec_yaml", "spec", "start_step", "request_id", "dry_run", "resume_from")
    SPEC_YAML_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    spec_yaml: str
    spec: _job_pb2.JobSpec
    start_step: int
    request_id: str
    dry_run: bool
    resume_from: str
    def __init__(self, spec_yaml: _Optional[str] = ..., spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., start_step: _Optional[int] = ..., request_id: _Optional[str] = ..., dry_run: _Optional[bool] = ..., resume_from: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
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

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id", "mode")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mode: _job_pb2.PauseMode
    def __init__(self, job_id: _Optional[str] = ..., mode: _Optional[_Union[_job_pb2.PauseMode, str]] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "grace_period", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    grace_period: _duration_pb2.Duration
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., grace_period: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job_id", "revision")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    revision: int
    def __init__(self, job_id: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("job_id", "offset", "tail_lines", "follow")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    offset: int
    tail_lines: int
    follow: bool
    def __init__(self, job_id: _Optional[str] = ..., offset: _Optional[int] = ..., tail_lines: _Optional[int] = ..., follow: _Optional[bool] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("since_revision", "project", "group", "name")
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    since_revision: int
    project: str
    group: str
    name: str
    def __init__(self, since_revision: _Optional[int] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class WatchJobsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[_job_pb2.JobEvent, _Mapping]]] = ...) -> None: ...

class GetConductorInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExecutorInfo(_message.Message):
    __slots__ = ("name", "pause_modes", "health_fields", "capacity", "free", "gpu_ids", "free_gpu_ids")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAUSE_MODES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FREE_FIELD_NUMBER: _ClassVar[int]
    GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    FREE_GPU_IDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    pause_modes: _containers.RepeatedScalarFieldContainer[_job_pb2.PauseMode]
    health_fields: _containers.RepeatedScalarFieldContainer[str]
    capacity: _job_pb2.Resources
    free: _job_pb2.Resources
    gpu_ids: _containers.RepeatedScalarFieldContainer[str]
    free_gpu_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., pause_modes: _Optional[_Iterable[_Union[_job_pb2.PauseMode, str]]] = ..., health_fields: _Optional[_Iterable[str]] = ..., capacity: _Optional[_Union[_job_pb2.Resources, _Mapping]] = ..., free: _Optional[_Union[_job_pb2.Resources, _Mapping]] = ..., gpu_ids: _Optional[_Iterable[str]] = ..., free_gpu_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetConductorInfoResponse(_message.Message):
    __slots__ = ("version", "pid", "start_time", "job_counts", "executors", "revision", "status_dir", "checkpoints_dir", "max_running", "rss_bytes", "uptime", "running_jobs", "damaged_registry_rows", "caller", "retention_deleted_jobs")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    JOB_COUNTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTORS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_DIR_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_DIR_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_REGISTRY_ROWS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    RETENTION_DELETED_JOBS_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    start_time: _timestamp_pb2.Timestamp
    job_counts: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobStateCount]
    executors: _containers.RepeatedCompositeFieldContainer[ExecutorInfo]
    revision: int
    status_dir: str
    checkpoints_dir: str
    max_running: int
    rss_bytes: int
    uptime: _duration_pb2.Duration
    running_jobs: int
    damaged_registry_rows: int
    caller: Caller
    retention_deleted_jobs: int
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_counts: _Optional[_Iterable[_Union[_job_pb2.JobStateCount, _Mapping]]] = ..., executors: _Optional[_Iterable[_Union[ExecutorInfo, _Mapping]]] = ..., revision: _Optional[int] = ..., status_dir: _Optional[str] = ..., checkpoints_dir: _Optional[str] = ..., max_running: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., running_jobs: _Optional[int] = ..., damaged_registry_rows: _Optional[int] = ..., caller: _Optional[_Union[Caller, _Mapping]] = ..., retention_deleted_jobs: _Optional[int] = ...) -> None: ...

class Caller(_message.Message):
    __slots__ = ("name", "role", "projects")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    projects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., projects: _Optional[_Iterable[str]] = ...) -> None: ...

class GetJobHealthRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobHealthResponse(_message.Message):
    __slots__ = ("job_id", "state", "has_process", "pid", "alive", "zombie", "process_count", "cpu_percent", "rss_bytes", "uptime", "stopped", "heartbeat_time", "last_output_time", "detail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HAS_PROCESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    ALIVE_FIELD_NUMBER: _ClassVar[int]
    ZOMBIE_FIELD_NUMBER: _ClassVar[int]
    PROCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    STOPPED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTPUT_TIME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: _job_pb2.JobState
    has_process: bool
    pid: int
    alive: bool
    zombie: bool
    process_count: int
    cpu_percent: float
    rss_bytes: int
    uptime: _duration_pb2.Duration
    stopped: bool
    heartbeat_time: _timestamp_pb2.Timestamp
    last_output_time: _timestamp_pb2.Timestamp
    detail: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[_job_pb2.JobState, str]] = ..., has_process: _Optional[bool] = ..., pid: _Optional[int] = ..., alive: _Optional[bool] = ..., zombie: _Optional[bool] = ..., process_count: _Optional[int] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., uptime: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., stopped: _Optional[bool] = ..., heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_output_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., detail: _Optional[str] = ...) -> None: ...

class GetJobStepRequest(_message.Message):
    __slots__ = ("job_id", "step", "tail_lines")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    tail_lines: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., tail_lines: _Optional[int] = ...) -> None: ...

class GetJobStepResponse(_message.Message):
    __slots__ = ("step", "tail")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    step: _job_pb2.StepStatus
    tail: bytes
    def __init__(self, step: _Optional[_Union[_job_pb2.StepStatus, _Mapping]] = ..., tail: _Optional[bytes] = ...) -> None: ...

class DeleteCheckpointsRequest(_message.Message):
    __slots__ = ("project", "group", "name", "suffixes")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUFFIXES_FIELD_NUMBER: _ClassVar[int]
    project: str
    group: str
    name: str
    suffixes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., suffixes: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteCheckpointsResponse(_message.Message):
    __slots__ = ("deleted_count", "deleted_bytes")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DELETED_BYTES_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    deleted_bytes: int
    def __init__(self, deleted_count: _Optional[int] = ..., deleted_bytes: _Optional[int] = ...) -> None: ...

class ClearJobsRequest(_message.Message):
    __slots__ = ("states", "project", "group", "name", "older_than", "all", "dry_run")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OLDER_THAN_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_job_pb2.JobState]
    project: str
    group: str
    name: str
    older_than: _duration_pb2.Duration
    all: bool
    dry_run: bool
    def __init__(self, states: _Optional[_Iterable[_Union[_job_pb2.JobState, str]]] = ..., project: _Optional[str] = ..., group: _Optional[str] = ..., name: _Optional[str] = ..., older_than: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., all: _Optional[bool] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ClearJobsResponse(_message.Message):
    __slots__ = ("deleted_count", "job_ids")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted_count: _Optional[int] = ..., job_ids: _Optional[_Iterable[str]] = ...) -> None: ...
