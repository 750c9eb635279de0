"""What the ``baton`` command prints: tables with coloured states, durations
and sizes for people, and JSON for scripts.

JSON output is the proto3 JSON mapping of the messages (the same as
``status.json``; ``bytes`` fields are base64), with fields at their default
values included. A verb prints either one document, or, for streams, one JSON
object per line whose single key names what it holds (``job``, ``log`` or
``event``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import yaml
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from baton.client.errors import BatonError
from baton.common.durations import format_duration
from baton.v1 import job_pb2

STATE_STYLES: dict[int, str] = {
    job_pb2.JOB_STATE_QUEUED: "blue",
    job_pb2.JOB_STATE_RUNNING: "cyan",
    job_pb2.JOB_STATE_PAUSING: "yellow",
    job_pb2.JOB_STATE_PAUSED: "yellow",
    job_pb2.JOB_STATE_CANCELLING: "magenta",
    job_pb2.JOB_STATE_SUCCEEDED: "green",
    job_pb2.JOB_STATE_FAILED: "bold red",
    job_pb2.JOB_STATE_CANCELLED: "magenta",
}
# Width used when output is not a terminal (a pipe or a file): wide enough that
# ids and paths are never folded.
PIPE_WIDTH = 200
# In the jobs table: the widest reason shown, and the narrowest path and reason
# worth a column at all.
REASON_WIDTH = 60
MIN_JOB_WIDTH = 8
MIN_REASON_WIDTH = 6


def state_name(state: int) -> str:
    """SUCCEEDED for JOB_STATE_SUCCEEDED."""
    return job_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


def state_text(state: int) -> Text:
    return Text(state_name(state), style=STATE_STYLES.get(state, ""))


def format_size(n: int) -> str:
    """1.5 MiB for 1572864."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def format_time(ts: timestamp_pb2.Timestamp, now: float | None = None) -> str:
    """ "42s ago" for recent times, the local date and time for older ones; "" when unset."""
    if ts.seconds == 0 and ts.nanos == 0:
        return ""
    now = time.time() if now is None else now
    age = now - _seconds(ts)
    if 0 <= age < 86400:
        return f"{format_duration(age)} ago"
    return datetime.datetime.fromtimestamp(_seconds(ts)).strftime("%Y-%m-%d %H:%M")


def job_duration(job: job_pb2.Job, now: float | None = None) -> str:
    """How long the job has run (until now, or until it ended)."""
    if not job.HasField("start_time") or job.start_time.seconds == 0:
        return ""
    end = _seconds(job.end_time) if job.HasField("end_time") and job.end_time.seconds else None
    return format_duration(
        max(0.0, (end if end is not None else now or time.time()) - _seconds(job.start_time))
    )


def job_path(job: job_pb2.Job) -> str:
    return f"{job.project}/{job.group}/{job.name}"


def exit_text(job: job_pb2.Job) -> str:
    if job.HasField("signal") and job.signal:
        try:
            return signal.Signals(job.signal).name
        except ValueError:
            return f"signal {job.signal}"
    return str(job.exit_code) if job.HasField("exit_code") else ""


def step_text(job: job_pb2.Job) -> str:
    """ "2/3" for the second of three steps, "try 2" for a second attempt; "" for a plain job."""
    parts = [f"{job.step}/{job.step_count}"] if job.step_count > 1 else []
    if job.attempt > 1:
        parts.append(f"try {job.attempt}")
    return " ".join(parts)


def jobs_table(jobs: Iterable[job_pb2.Job], title: str | None = None, width: int | None = None) -> Table:
    """One row per job: id, name, coloured state, step, age, duration, exit, reason.

    The id is what a person copies into the next command, so it is never
    cut: within ``width`` the reason gives way first, then the job's path,
    each shortened with an ellipsis.
    """
    now = time.time()
    rows = [
        (job.id, job_path(job), state_text(job.state), step_text(job),
         format_time(job.create_time, now), job_duration(job, now), exit_text(job), job.reason)
        for job in jobs
    ]  # fmt: skip
    headers = ("ID", "JOB", "STATE", "STEP", "CREATED", "DURATION", "EXIT", "REASON")
    natural = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    job_width, reason_width = natural[1], min(natural[7], REASON_WIDTH)
    if width is not None:
        room = width - sum(natural[i] for i in (0, 2, 3, 4, 5, 6)) - 2 * (len(headers) - 1)
        job_width = max(MIN_JOB_WIDTH, min(job_width, room - min(reason_width, MIN_REASON_WIDTH)))
        reason_width = room - job_width
    table = Table(title=title, title_justify="left", header_style="bold", box=None, pad_edge=False)
    table.add_column("ID", no_wrap=True, min_width=natural[0])
    table.add_column("JOB", no_wrap=True, overflow="ellipsis", max_width=job_width)
    for header in ("STATE", "STEP", "CREATED"):
        table.add_column(header, no_wrap=True)
    table.add_column("DURATION", no_wrap=True, justify="right")
    table.add_column("EXIT", no_wrap=True, justify="right")
    if reason_width >= MIN_REASON_WIDTH:
        table.add_column("REASON", no_wrap=True, overflow="ellipsis", max_width=reason_width)
    for row in rows:
        table.add_row(*row[: len(table.columns)])
    return table


def projects_table(projects: Iterable[Any]) -> Table:
    """One row per project: its runs, by state, and when anything last happened."""
    table = Table(header_style="bold", box=None, pad_edge=False)
    for header in ("PROJECT", "RUNS", "BY STATE", "LAST ACTIVITY"):
        table.add_column(
            header, no_wrap=header != "BY STATE", justify="right" if header == "RUNS" else "left"
        )
    now = time.time()
    for p in projects:
        by_state = ", ".join(f"{state_name(c.state)} {c.count}" for c in p.state_counts)
        table.add_row(p.project, str(p.run_count), by_state, format_time(p.last_activity_time, now))
    return table


def running_table(rows: Iterable[Any], width: int | None = None) -> Group:
    """Running runs with their heartbeat's age; a stale one (its conductor may be gone) says so."""
    rows = list(rows)
    table = jobs_table([r.job for r in rows], width=width)
    stale = [r for r in rows if r.stale]
    notes = [
        Text(f"stale: {r.job.id} (no heartbeat for {_duration_text(r.heartbeat_age)})", style="yellow")
        for r in stale
    ]
    return Group(table, *notes)


def _grid() -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    return grid


def job_details(job: job_pb2.Job) -> Table:
    """Every field a person asks about one job, as a two-column grid."""
    grid = _grid()
    state = state_text(job.state)
    if job.reason:
        state.append(f"  {job.reason}", style="dim")
    rows: list[tuple[str, RenderableType]] = [
        ("id", job.id),
        ("job", job_path(job)),
        ("run", job.run_id),
        ("state", state),
        ("step", f"{job.step}/{job.step_count} {job.step_name}" if job.step_count > 1 else ""),
        ("attempt", str(job.attempt) if job.attempt else ""),
        ("executor", job.executor),
        ("created", format_time(job.create_time)),
        ("started", format_time(job.start_time)),
        ("ended", format_time(job.end_time)),
        ("duration", job_duration(job)),
        ("heartbeat", format_time(job.heartbeat_time)),
        ("exit code", exit_text(job)),
        ("command", job.spec.command or "; ".join(f"{s.name}: {s.command}" for s in job.spec.steps)),
        ("workdir", job.spec.workdir),
        ("run dir", job.run_dir),
        ("checkpoints", job.checkpoint_dir),
        ("last checkpoint", job.last_checkpoint),
        ("result", result_text(job)),
        ("resumed from", job.resume_from),
        ("resume dir", job.resume_dir),
        ("request id", job.request_id),
        ("revision", str(job.revision) if job.revision else ""),
    ]
    for key, value in rows:
        if value:
            grid.add_row(key, value)
    return grid


def resolved_spec_yaml(job: job_pb2.Job) -> str:
    """The job's spec as the conductor resolved it, in the YAML a person writes."""
    spec = json_format.MessageToDict(job.spec, preserving_proto_field_name=True)
    extra = {k: v for k, v in (("start_step", job.start_step), ("resume_from", job.resume_from)) if v}
    return yaml.safe_dump({**spec, **extra}, sort_keys=False).rstrip()


def result_text(job: job_pb2.Job) -> str:
    """What the job wrote to BATON_RESULT_FILE, as compact JSON ("" when nothing)."""
    if not job.HasField("result"):
        return ""
    return json.dumps(json_format.MessageToDict(job.result), sort_keys=True, separators=(", ", ": "))


def job_line(job: job_pb2.Job, verb: str = "") -> Text:
    """ "paused 2026…-ab12cd (demo/default/train): PAUSED  reason"."""
    text = Text(f"{verb} " if verb else "")
    text.append(job.id, style="bold")
    text.append(f" ({job_path(job)}): ")
    text.append_text(state_text(job.state))
    extra = [exit_text(job) and f"exit {exit_text(job)}", job_duration(job), job.reason]
    if any(extra):
        text.append("  " + "  ".join(e for e in extra if e), style="dim")
    return text


def checkpoints_table(checkpoints: Iterable[Any]) -> Table:
    """One row per checkpoint: job, run, suffix, age, size, files, config file, job spec.

    RUN is the run whose directory holds it, "-" for the plain layout; RUN/CHECKPOINT
    (or CHECKPOINT alone for the plain layout) names it to the other verbs.
    """
    table = Table(header_style="bold", box=None, pad_edge=False)
    for name in ("JOB", "RUN", "CHECKPOINT", "CREATED", "SIZE", "FILES", "CONFIG", "SPEC"):
        table.add_column(name, no_wrap=True, justify="right" if name in ("SIZE", "FILES") else "left")
    now = time.time()
    for cp in checkpoints:
        table.add_row(
            f"{cp.project}/{cp.group}/{cp.name}", cp.run_id or "-", cp.suffix,
            format_time(cp.create_time, now), format_size(cp.size_bytes), str(cp.file_count), cp.config_file,
            "job.json" if cp.has_job_spec else "",
        )  # fmt: skip
    return table


def stats_view(stats: Any) -> Group:
    """The viewer's dashboard: totals, states, checkpoints, the index, recent failures."""
    grid = _grid()
    grid.add_row("runs", str(stats.total_runs))
    states = Text()
    for count in stats.state_counts:
        states.append_text(state_text(count.state))
        states.append(f" {count.count}   ")
    grid.add_row("by state", states)
    grid.add_row("running", f"{stats.running} ({stats.stale} stale)")
    grid.add_row("checkpoints", f"{stats.checkpoint_count} ({format_size(stats.checkpoint_bytes)})")
    grid.add_row("failed, 24 h", str(stats.recent_failure_count))
    skipped = stats.invalid_status_files + stats.invalid_names + stats.outside_links
    grid.add_row("index", f"{stats.watch_mode}, last full scan {format_time(stats.last_full_scan_time)}")
    if stats.unwatched_directories:
        grid.add_row(
            "unwatched",
            f"{stats.unwatched_directories} directories (out of inotify watches: "
            "raise fs.inotify.max_user_watches; until then they refresh at each rescan)",
        )
    if skipped:
        grid.add_row(
            "skipped",
            f"{stats.invalid_status_files} invalid status files, {stats.invalid_names} bad names, "
            f"{stats.outside_links} links outside",
        )
    parts: list[RenderableType] = [grid]
    if stats.recent_failures:
        parts.append(Text())
        parts.append(jobs_table(stats.recent_failures, title="Recent failures"))
    return Group(*parts)


def to_dict(message: Message) -> dict[str, Any]:
    """The proto3 JSON mapping of ``message``, default values included."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


class Output:
    """Where a verb prints: people get rich renderables, scripts get JSON."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        # A terminal's width, or the one COLUMNS says; a pipe gets room for whole lines.
        sized = sys.stdout.isatty() or bool(os.environ.get("COLUMNS"))
        self.out = Console(highlight=False, soft_wrap=False, width=None if sized else PIPE_WIDTH)
        self.err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else PIPE_WIDTH)

    def show(self, renderable: RenderableType) -> None:
        """For people: print to stdout (nothing in JSON mode)."""
        if not self.json:
            self.out.print(renderable)

    def note(self, renderable: RenderableType) -> None:
        """For people, beside the data: print to stderr (nothing in JSON mode)."""
        if not self.json:
            self.err.print(renderable, soft_wrap=True)

    def document(self, data: Message | dict[str, Any]) -> None:
        """For scripts: one JSON document on stdout."""
        doc = to_dict(data) if isinstance(data, Message) else data
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        sys.stdout.flush()

    def line(self, kind: str, message: Message) -> None:
        """For scripts: one JSON line ``{kind: message}`` on stdout."""
        sys.stdout.write(json.dumps({kind: to_dict(message)}, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def raw(self, data: bytes) -> None:
        """Bytes to stdout as they are (a log)."""
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    @contextlib.contextmanager
    def spinner(self, text: str) -> Iterator[None]:
        """A spinner on stderr while waiting, when a person is watching."""
        if self.json or not self.err.is_terminal:
            yield
            return
        with self.err.status(text):
            yield

    def error(self, verb: str, err: BatonError) -> None:
        """A failed call: a JSON document on stderr for scripts, a plain line for people."""
        if self.json:
            doc = {
                "error": {
                    "code": err.code.name,
                    "message": err.message,
                    "reason": err.reason,
                    "fieldViolations": [
                        {"field": v.field, "description": v.description} for v in err.field_violations
                    ],
                    "metadata": err.metadata,
                    "address": err.address,
                }
            }
            sys.stderr.write(json.dumps(doc) + "\n")
            return
        message = err.message
        if len(err.field_violations) > 1:
            # The message lists the violations too: say each one once, a line each.
            message = message.split(":", 1)[0] + ":"
        self.err.print(Text(f"baton {verb}: ", style="bold red") + Text(message), soft_wrap=True)
        if len(err.field_violations) > 1:
            for v in err.field_violations:
                self.err.print(Text(f"  {v.field}: {v.description}"), soft_wrap=True)


def _duration_text(d: Any) -> str:
    return format_duration(d.seconds + d.nanos / 1e9) if (d.seconds or d.nanos) else ""


def health_view(h: Any) -> Table:
    """A job's processes: pid, alive or stopped, count, CPU, memory, uptime, last output."""
    grid = _grid()
    grid.add_row("job", h.job_id)
    grid.add_row("state", state_text(h.state))
    if not h.has_process:
        grid.add_row("process", h.detail or "none")
    else:
        status = "zombie" if h.zombie else "stopped" if h.stopped else "alive" if h.alive else "gone"
        grid.add_row("pid", f"{h.pid} ({status})")
        grid.add_row("processes", str(h.process_count))
        grid.add_row("cpu", f"{h.cpu_percent:.1f}%")
        grid.add_row("memory", format_size(h.rss_bytes))
        grid.add_row("uptime", _duration_text(h.uptime))
    if h.HasField("heartbeat_time"):
        grid.add_row("heartbeat", format_time(h.heartbeat_time))
    if h.HasField("last_output_time"):
        grid.add_row("last output", format_time(h.last_output_time))
    return grid


def steps_table(job: job_pb2.Job) -> Table:
    """One row per step: index, name, state, attempts, exit code, duration, output bytes."""
    table = Table(header_style="bold", box=None, pad_edge=False)
    for name in ("STEP", "NAME", "STATE", "ATTEMPTS", "EXIT", "DURATION", "OUTPUT"):
        table.add_column(name, no_wrap=True, justify="right" if name in ("STEP", "OUTPUT") else "left")
    now = time.time()
    for s in job.steps:
        end = _seconds(s.end_time) if s.HasField("end_time") else now
        took = format_duration(max(0.0, end - _seconds(s.start_time))) if s.HasField("start_time") else ""
        exit_code = str(s.exit_code) if s.HasField("exit_code") else ""
        if s.HasField("signal"):
            exit_code = f"{exit_code} (signal {s.signal})"
        size = (s.log_end or 0) - s.log_start if s.log_end else 0
        table.add_row(
            str(s.index), s.name, Text(job_pb2.StepState.Name(s.state).removeprefix("STEP_STATE_")),
            str(s.attempts or ""), exit_code, took, format_size(size) if size else "",
        )  # fmt: skip
    return table


def resources_text(e: Any) -> str:
    """What of an executor's capacity is free: "1.5 of 2 CPUs, 6.0 GiB of 7.8 GiB, GPU 1 of 0,1"."""
    cap, free = e.capacity, e.free
    gpus = f"GPU {','.join(e.free_gpu_ids) or 'none'} of {','.join(e.gpu_ids)}" if e.gpu_ids else "no GPUs"
    return (
        f"{free.cpus:g} of {cap.cpus:g} CPUs, {format_size(free.memory_bytes)} of "
        f"{format_size(cap.memory_bytes)} memory, {gpus}"
    )


def info_view(info: Any) -> Table:
    """The conductor: version, pid, uptime, memory, running jobs, counts, executors, dirs."""
    grid = _grid()
    grid.add_row("version", info.version)
    grid.add_row("pid", str(info.pid))
    grid.add_row("uptime", _duration_text(info.uptime))
    grid.add_row("memory", format_size(info.rss_bytes))
    grid.add_row("running", f"{info.running_jobs} (at most {info.max_running} at once)")
    counts = Text()
    for count in info.job_counts:
        counts.append_text(state_text(count.state))
        counts.append(f" {count.count}   ")
    grid.add_row("jobs", counts)
    executors = []
    for e in info.executors:
        modes = ", ".join(
            job_pb2.PauseMode.Name(m).removeprefix("PAUSE_MODE_").lower() for m in e.pause_modes
        )
        executors.append(f"{e.name} ({modes})")
    grid.add_row("executors", "; ".join(executors))
    for e in info.executors:
        if e.HasField("capacity"):
            grid.add_row(f"{e.name} free", resources_text(e))
    grid.add_row("revision", str(info.revision))
    grid.add_row("status dir", info.status_dir)
    grid.add_row("checkpoints", info.checkpoints_dir)
    return grid
