"""What the viewer answers, in domain terms: queries on the index, fresh reads
of single runs and checkpoints, and logs through the shared tailer.

Everything here reads; files are opened read-only, and only through
``common.safeopen``: a file a client asks for must resolve inside its tree
(links that stay inside are followed, links that leave are refused with
FAILED_PRECONDITION, reason PATH_OUTSIDE_TREE). JSON and YAML read for a
client are bounded in size and depth (``common.boundedjson``), and no error
quotes a file's content. Errors are domain errors (``common.errors``); the
servicer maps them to status codes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from baton.common import boundedjson
from baton.common.checkpoint_refs import one_checkpoint
from baton.common.errors import FailedPrecondition, NotFound, invalid_field, quote
from baton.common.filewatch import FileWatcher
from baton.common.jobfile import MAX_STATUS_BYTES, job_from_json
from baton.common.jobs import JobFilter
from baton.common.layout import (
    CONFIG_FILES,
    JOB_SPEC_FILE,
    LOG_FILE,
    STATUS_FILE,
    checkpoint_ref,
    checkpoint_ref_problem,
    split_checkpoint_ref,
)
from baton.common.logfollow import log_chunks
from baton.common.metrics import ServiceMetrics
from baton.common.names import name_problem
from baton.common.paging import PageBytes, decode_token, encode_token, page_size
from baton.common.safeopen import UnsafePath, open_beneath, read_beneath, refusal
from baton.common.tailer import CHUNK, offset_of_last_lines
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as pb
from baton.viewer_api.index import Index, RunEntry, sort_key
from baton.viewer_api.indexer import Indexer
from baton.viewer_api.scan import (
    INVALID_NAME,
    INVALID_STATUS,
    OUTSIDE_LINK,
    CheckpointFile,
    RunKey,
)

S = job_pb2
MAX_READ = 4 << 20
# The largest checkpoint config.yaml / config.json / job.json served: what is
# served goes back whole in one reply, which must fit a client's 4 MiB default.
MAX_CHECKPOINT_FILE_BYTES = 4 << 20
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_TAIL_LINES = 100
DEFAULT_RECENT_HOURS = 24
DEFAULT_RECENT_LIMIT = 50
RECENT_FAILURES_SHOWN = 10


def _ts(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _names(**parts: str) -> None:
    for field_name, value in parts.items():
        problem = name_problem(value)
        if problem:
            raise invalid_field(field_name, problem)


def _parse_config(file_name: str, raw: bytes) -> Any:
    """A checkpoint's config.yaml, config.json or job.json, decoded and bounded (blocking).

    FAILED_PRECONDITION (CHECKPOINT_FILE_INVALID) when it is not valid, too
    deep, or (YAML aliases) too many values; the message says where, never
    quoting the file, which may be anything a job wrote.
    """
    Refused = boundedjson.JsonRefused
    try:
        if not file_name.endswith(".yaml"):
            return boundedjson.loads(raw, max_bytes=MAX_CHECKPOINT_FILE_BYTES, what=file_name)
        if len(raw) > MAX_CHECKPOINT_FILE_BYTES:
            raise Refused(f"{file_name} is larger than {MAX_CHECKPOINT_FILE_BYTES >> 20} MiB")
        try:
            data = yaml.load(raw, Loader=_YAML_LOADER)  # a safe loader (C when built)
        except RecursionError:
            raise Refused(f"{file_name} nests deeper than {boundedjson.MAX_DEPTH} levels") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "malformed"
            raise Refused(f"{file_name} is not valid YAML ({where})") from None
        except (yaml.YAMLError, UnicodeDecodeError):
            raise Refused(f"{file_name} is not valid YAML") from None
        # YAML aliases can make a small file a huge tree: values are counted too.
        problem = boundedjson.too_deep(data, max_nodes=boundedjson.MAX_NODES)
        if problem:
            raise Refused(f"{file_name} {problem}")
        return data
    except Refused as exc:
        raise FailedPrecondition(str(exc), reason="CHECKPOINT_FILE_INVALID") from None


def _to_struct(data: Any, what: str) -> struct_pb2.Struct:
    if not isinstance(data, dict):
        raise FailedPrecondition(f"{what} does not hold a mapping", reason="CHECKPOINT_FILE_INVALID")
    # YAML may hold dates and other non-JSON values; their text form is kept.
    plain = json.loads(json.dumps(data, default=str))
    struct = struct_pb2.Struct()
    struct.update(plain)
    return struct


class ViewerService:
    def __init__(
        self,
        index: Index,
        indexer: Indexer,
        status_dir: str,
        checkpoints_dir: str,
        *,
        stale_after: float = 300.0,
        heartbeat: float = 5.0,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.index = index
        self.indexer = indexer
        self._log_bytes = metrics.log_bytes if metrics is not None else None
        self._status_root = Path(os.path.realpath(status_dir))
        self._ckpt_root = Path(os.path.realpath(checkpoints_dir))
        self.stale_after = stale_after
        self._heartbeat = heartbeat
        self.watcher = FileWatcher()
        self.active_streams = 0

    def close(self) -> None:
        self.watcher.close()

    # ------------------------------------------------------------------ runs

    def list_jobs(self, flt: JobFilter, size: int, token: str) -> tuple[list[job_pb2.Job], str, int]:
        return self.index.list_runs(flt, size, token)

    def list_job_runs(
        self, project: str, group: str, name: str, size: int, token: str
    ) -> tuple[list[job_pb2.Job], str]:
        _names(project=project, group=group, name=name)
        jobs, nxt, _ = self.index.list_runs(JobFilter(project, group, name), size, token, scope="viewer.runs")
        return jobs, nxt

    def _resolve(self, job_id: str, project: str, group: str, name: str, run_id: str) -> RunKey:
        if job_id:
            key = self.index.by_id.get(job_id)
            if key is None:
                raise NotFound(
                    f"no run with job id {quote(job_id)}", reason="JOB_NOT_FOUND", metadata={"job_id": job_id}
                )
            return key
        if not (project or group or name or run_id):
            raise invalid_field("job_id", "give job_id, or project, group, name and run_id")
        _names(project=project, group=group, name=name, run_id=run_id)
        return (project, group, name, run_id)

    def _run_dir(self, key: RunKey) -> Path:
        return self._status_root.joinpath(*key)

    async def get_job(self, job_id: str, project: str, group: str, name: str, run_id: str) -> job_pb2.Job:
        key = self._resolve(job_id, project, group, name, run_id)
        path = self._run_dir(key) / STATUS_FILE
        try:
            raw = await asyncio.to_thread(read_beneath, self._status_root, path, MAX_STATUS_BYTES)
            job = job_from_json(raw)
            p, g, n, r = key
            job.project, job.group, job.name, job.run_id = p, g, n, r
            return job
        except UnsafePath as exc:
            raise refusal(exc) from None
        except (OSError, ValueError):
            entry = self.index.runs.get(key)
            if entry is None:
                raise NotFound(
                    f"no run {'/'.join(key)}", reason="JOB_NOT_FOUND", metadata={"run": "/".join(key)}
                ) from None
            return entry.job()

    def _age(self, entry: RunEntry, now: float) -> float:
        return now - (entry.heartbeat_ts or entry.start_ts or entry.create_ts)

    def list_running(
        self, project: str, include_stale: bool, stale_after: float | None, size: int, token: str
    ) -> tuple[list[pb.RunningJob], str]:
        limit = page_size(size)
        if stale_after is not None and stale_after < 0:
            raise invalid_field("stale_after", "must not be negative")
        threshold = self.stale_after if stale_after is None else stale_after
        key_filter = [project, include_stale, threshold]
        after = sort_key(decode_token("viewer.running", key_filter, token))
        now = time.time()
        page_bytes = PageBytes()
        out: list[pb.RunningJob] = []
        last_sort: list[Any] = []
        for entry in self.index.running(project):
            if after is not None and entry.sort <= after:
                continue
            age = self._age(entry, now)
            stale = age > threshold
            if stale and not include_stale:
                continue
            if len(out) == limit:
                return out, encode_token("viewer.running", key_filter, last_sort)
            heartbeat_age = duration_pb2.Duration()
            heartbeat_age.FromNanoseconds(int(max(age, 0.0) * 1e9))
            item = pb.RunningJob(job=entry.job(), stale=stale, heartbeat_age=heartbeat_age)
            if not page_bytes.take(item):
                return out, encode_token("viewer.running", key_filter, last_sort)
            out.append(item)
            last_sort = list(entry.sort)
        return out, ""

    def list_recent(self, project: str, hours: int, limit: int) -> list[job_pb2.Job]:
        if hours < 0:
            raise invalid_field("hours", "must not be negative")
        if limit < 0:
            raise invalid_field("limit", "must not be negative")
        since = time.time() - (hours or DEFAULT_RECENT_HOURS) * 3600
        jobs = self.index.recent(project, since, min(limit or DEFAULT_RECENT_LIMIT, 1000))
        # No page token here: the newest that fit in one page are the answer.
        page_bytes = PageBytes()
        return list(itertools.takewhile(page_bytes.take, jobs))

    def list_projects(self, size: int, token: str) -> tuple[list[pb.ProjectSummary], str]:
        limit = page_size(size)
        after = decode_token("viewer.projects", [], token)
        if after is not None and not isinstance(after, str):
            raise invalid_field("page_token", "is not a page token from this list")
        out: list[pb.ProjectSummary] = []
        for project, runs, counts, last in self.index.projects():
            if after is not None and project <= after:
                continue
            if len(out) == limit:
                return out, encode_token("viewer.projects", [], out[-1].project)
            out.append(
                pb.ProjectSummary(
                    project=project,
                    run_count=runs,
                    state_counts=[
                        job_pb2.JobStateCount(state=s, count=c)  # type: ignore[arg-type]
                        for s, c in sorted(counts.items())
                    ],
                    last_activity_time=_ts(last),
                )
            )
        return out, ""

    def dashboard(self, project: str) -> pb.GetDashboardStatsResponse:
        index = self.index
        counts = index.project_state_counts(project)
        now = time.time()
        running = index.running(project)
        stale = sum(1 for e in running if self._age(e, now) > self.stale_after)
        failures = index.failures_since(project, now - 86400)
        ckpt_count, ckpt_bytes = index.checkpoint_totals(project, "", "")
        problems = list(index.problems.values())
        return pb.GetDashboardStatsResponse(
            total_runs=sum(counts.values()),
            state_counts=[
                job_pb2.JobStateCount(state=s, count=c)  # type: ignore[arg-type]
                for s, c in sorted(counts.items())
            ],
            running=len(running),
            stale=stale,
            recent_failures=[e.job() for e in failures[:RECENT_FAILURES_SHOWN]],
            recent_failure_count=len(failures),
            checkpoint_count=ckpt_count,
            checkpoint_bytes=ckpt_bytes,
            invalid_status_files=problems.count(INVALID_STATUS),
            invalid_names=problems.count(INVALID_NAME),
            outside_links=problems.count(OUTSIDE_LINK),
            last_full_scan_time=_ts(index.last_full_scan),
            watch_mode=self.indexer.mode,
            unwatched_directories=self.indexer.unwatched,
        )

    # ----------------------------------------------------------- checkpoints

    @staticmethod
    def checkpoint_message(cf: CheckpointFile) -> pb.Checkpoint:
        p, g, n = cf.key
        return pb.Checkpoint(
            project=p, group=g, name=n, suffix=cf.suffix, path=cf.path, create_time=_ts(cf.create_ts),
            size_bytes=cf.size_bytes, file_count=cf.file_count, config_file=cf.config_file,
            has_job_spec=cf.has_job_spec, run_id=cf.run_id,
        )  # fmt: skip

    def list_checkpoints(
        self, project: str, group: str, name: str, run_id: str, size: int, token: str
    ) -> tuple[list[pb.Checkpoint], str]:
        found, nxt = self.index.list_checkpoints(project, group, name, run_id, size, token)
        return [self.checkpoint_message(c) for c in found], nxt

    def _latest(self, project: str, group: str, name: str, run_id: str = "") -> CheckpointFile:
        _names(project=project, group=group, name=name)
        if run_id:
            _names(run_id=run_id)
        latest = self.index.latest_checkpoint((project, group, name), run_id or None)
        if latest is None:
            of = f"run {run_id} of " if run_id else ""
            raise NotFound(f"no checkpoints for {of}{project}/{group}/{name}", reason="CHECKPOINT_NOT_FOUND")
        return latest

    def _checkpoint(self, project: str, group: str, name: str, ref: str) -> CheckpointFile:
        """The one checkpoint ``ref`` (in the field ``suffix``) names; the latest when it is empty."""
        if not ref:
            return self._latest(project, group, name)
        _names(project=project, group=group, name=name)
        problem = checkpoint_ref_problem(ref)
        if problem:
            raise invalid_field("suffix", problem)
        run_id, suffix = split_checkpoint_ref(ref)
        found = self.index.find_checkpoints((project, group, name), run_id, suffix)
        return one_checkpoint(
            found, ref, f"{project}/{group}/{name}", "suffix", lambda c: checkpoint_ref(c.run_id, c.suffix)
        )

    def get_checkpoint(self, project: str, group: str, name: str, suffix: str) -> pb.Checkpoint:
        if not suffix:
            raise invalid_field("suffix", "is required")
        return self.checkpoint_message(self._checkpoint(project, group, name, suffix))

    def latest_checkpoint(self, project: str, group: str, name: str, run_id: str = "") -> pb.Checkpoint:
        return self.checkpoint_message(self._latest(project, group, name, run_id))

    async def checkpoint_config(
        self, project: str, group: str, name: str, suffix: str
    ) -> pb.GetCheckpointConfigResponse:
        cf = self._checkpoint(project, group, name, suffix)

        def load() -> tuple[Any, str]:
            for file_name in CONFIG_FILES:
                try:
                    raw = self._checkpoint_file(cf, file_name)
                except FileNotFoundError:
                    continue
                return _parse_config(file_name, raw), file_name
            raise NotFound(
                f"checkpoint {checkpoint_ref(cf.run_id, cf.suffix)!r} has no config.yaml or config.json",
                reason="CHECKPOINT_CONFIG_NOT_FOUND",
            )

        data, source = await asyncio.to_thread(load)
        return pb.GetCheckpointConfigResponse(
            config=_to_struct(data, source), source_file=source, suffix=cf.suffix, run_id=cf.run_id
        )

    async def checkpoint_job_spec(
        self, project: str, group: str, name: str, suffix: str
    ) -> pb.GetCheckpointJobSpecResponse:
        cf = self._checkpoint(project, group, name, suffix)

        def load() -> Any:
            try:
                raw = self._checkpoint_file(cf, JOB_SPEC_FILE)
            except FileNotFoundError:
                raise NotFound(
                    f"checkpoint {checkpoint_ref(cf.run_id, cf.suffix)!r} has no {JOB_SPEC_FILE}",
                    reason="CHECKPOINT_JOB_SPEC_NOT_FOUND",
                ) from None
            return _parse_config(JOB_SPEC_FILE, raw)

        data = await asyncio.to_thread(load)
        return pb.GetCheckpointJobSpecResponse(
            job_spec=_to_struct(data, JOB_SPEC_FILE), suffix=cf.suffix, run_id=cf.run_id
        )

    def _checkpoint_file(self, cf: CheckpointFile, file_name: str) -> bytes:
        """A checkpoint file's bytes (one more than MAX_CHECKPOINT_FILE_BYTES at most), inside the
        checkpoints tree (blocking). FileNotFoundError when absent; FAILED_PRECONDITION otherwise."""
        try:
            raw = read_beneath(self._ckpt_root, Path(cf.path) / file_name, MAX_CHECKPOINT_FILE_BYTES)
        except UnsafePath as exc:
            raise refusal(exc) from None
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise FailedPrecondition(
                f"{file_name} cannot be read ({exc.strerror})", reason="CHECKPOINT_FILE_INVALID"
            ) from None
        return raw

    def checkpoint_stats(self, project: str, group: str, name: str) -> pb.GetCheckpointStatsResponse:
        count, total = self.index.checkpoint_totals(project, group, name)
        return pb.GetCheckpointStatsResponse(checkpoint_count=count, total_bytes=total)

    # ------------------------------------------------------------------ logs

    def _log_path(self, key: RunKey) -> Path:
        return self._run_dir(key) / LOG_FILE

    def _known_run(self, key: RunKey) -> None:
        if key not in self.index.runs:
            raise NotFound(f"no run {'/'.join(key)}", reason="JOB_NOT_FOUND", metadata={"run": "/".join(key)})

    async def read_log(
        self, ref: tuple[str, str, str, str, str], offset: int, limit: int
    ) -> pb.ReadLogResponse:
        key = self._resolve(*ref)
        self._known_run(key)
        if offset < 0:
            raise invalid_field("offset", "must not be negative")
        if limit < 0:
            raise invalid_field("limit", "must not be negative")
        want = min(limit or CHUNK, MAX_READ)
        path = self._log_path(key)

        def read() -> tuple[bytes, int]:
            try:
                fd = open_beneath(self._status_root, path)
            except FileNotFoundError:
                return b"", 0
            try:
                size = os.fstat(fd).st_size
                return (os.pread(fd, min(want, size - offset), offset) if offset < size else b""), size
            finally:
                os.close(fd)

        try:
            data, size = await asyncio.to_thread(read)
        except UnsafePath as exc:
            raise refusal(exc) from None
        if offset > size:
            raise invalid_field("offset", f"is past the end of the log ({size} bytes)")
        return pb.ReadLogResponse(data=data, offset=offset, next_offset=offset + len(data), size_bytes=size)

    async def tail_log(self, ref: tuple[str, str, str, str, str], tail_lines: int) -> pb.TailLogResponse:
        key = self._resolve(*ref)
        self._known_run(key)
        if tail_lines < 0:
            raise invalid_field("tail_lines", "must not be negative")
        path = self._log_path(key)
        wanted = tail_lines or DEFAULT_TAIL_LINES

        def read() -> tuple[bytes, int, int]:
            start = offset_of_last_lines(path, self._status_root, wanted)
            try:
                fd = open_beneath(self._status_root, path)
            except FileNotFoundError:
                return b"", 0, 0
            try:
                data = os.pread(fd, MAX_READ, start)
                return data, start, start + len(data)
            finally:
                os.close(fd)

        try:
            data, start, end = await asyncio.to_thread(read)
        except UnsafePath as exc:
            raise refusal(exc) from None
        return pb.TailLogResponse(data=data, offset=start, next_offset=end)

    async def stream_logs(
        self, ref: tuple[str, str, str, str, str], offset: int, tail_lines: int, follow: bool
    ) -> AsyncIterator[job_pb2.LogChunk]:
        key = self._resolve(*ref)
        self._known_run(key)

        def current() -> job_pb2.Job | None:
            entry = self.index.runs.get(key)
            return None if entry is None else entry.job()

        wake = asyncio.Event()
        stop_listening = self.index.listen(key, wake.set)
        self.active_streams += 1
        try:
            async for chunk in log_chunks(
                self._log_path(key),
                root=self._status_root,
                offset=offset,
                tail_lines=tail_lines,
                follow=follow,
                watcher=self.watcher,
                wake=wake,
                heartbeat=self._heartbeat,
                current=current,
                subject=f"run {'/'.join(key)}",
                metadata={"run": "/".join(key)},
            ):
                if self._log_bytes is not None:
                    self._log_bytes.inc(len(chunk.data))
                yield chunk
        finally:
            stop_listening()
            self.active_streams -= 1
