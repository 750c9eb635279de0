"""The ``baton`` verbs that talk to running services (everything but ``up``,
``conductor`` and ``viewer``). Each takes the parsed arguments and an
``Output`` and returns the exit status (see ``client.exitcodes``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import yaml
from google.protobuf import json_format
from rich.console import Group
from rich.live import Live
from rich.text import Text

from baton.client import exitcodes
from baton.client.aio import FINAL_STATES
from baton.client.connection import ClientOptions, TlsSettings
from baton.client.errors import InvalidArgument
from baton.client.output import (
    Output,
    checkpoints_table,
    format_size,
    health_view,
    info_view,
    job_details,
    job_line,
    jobs_table,
    projects_table,
    resolved_spec_yaml,
    running_table,
    state_name,
    stats_view,
    steps_table,
    to_dict,
)
from baton.client.specfile import read_spec
from baton.client.sync import BlockingLogStream, BlockingStream, ConductorClient, ViewerClient
from baton.v1 import job_pb2

PAUSED_OR_ENDED = FINAL_STATES | {job_pb2.JOB_STATE_PAUSED}


def _options(args: argparse.Namespace) -> ClientOptions:
    options: ClientOptions = {"timeout": args.timeout}
    if args.token_file:
        options["token"] = Path(args.token_file).read_text().strip()
    if args.ca_file or args.cert_file:
        options["tls"] = TlsSettings.from_files(
            args.ca_file, args.cert_file, args.key_file, args.tls_server_name
        )
    return options


def conductor(args: argparse.Namespace) -> ConductorClient:
    return ConductorClient(args.conductor, **_options(args))


def viewer(args: argparse.Namespace) -> ViewerClient:
    return ViewerClient(args.viewer, **_options(args))


def _states(names: list[str] | None) -> list[str]:
    """JOB_STATE_ names from what a person types ("running", "failed,cancelled")."""
    known = [v.name for v in job_pb2.JobState.DESCRIPTOR.values if v.number]
    states = []
    for name in names or ():
        for part in name.split(","):
            key = "JOB_STATE_" + part.strip().upper().removeprefix("JOB_STATE_")
            if key not in known:
                choices = ", ".join(k.removeprefix("JOB_STATE_").lower() for k in known)
                raise ValueError(f"--state {part.strip()[:40]!r} is not a state; choose from {choices}")
            states.append(key)
    return states


class NameFilter(TypedDict):
    """The project/group/name flags of a list verb, as client keyword arguments."""

    project: str
    group: str
    name: str


def _filters(args: argparse.Namespace) -> NameFilter:
    return {"project": args.project or "", "group": args.group or "", "name": args.name or ""}


# ---------------------------------------------------------------- submit, logs


def follow(out: Output, stream: BlockingLogStream, waiting: str) -> job_pb2.LogChunk | None:
    """Print a log stream (raw bytes, or JSON lines) until it ends; its ``complete`` chunk."""
    chunks = iter(stream)
    with out.spinner(waiting):
        first = next(chunks, None)
    for chunk in itertools.chain([] if first is None else [first], chunks):
        if out.json:
            out.line("log", chunk)
        elif chunk.truncated:
            out.note(
                Text(f"-- the log was truncated; reading on from byte {chunk.offset} --", style="yellow")
            )
        elif chunk.data:
            out.raw(chunk.data)
    if stream.reconnects:
        out.note(Text(f"(the stream was resumed {stream.reconnects} time(s); nothing was lost)", style="dim"))
    return stream.result


def _outcome(out: Output, client: ConductorClient | ViewerClient, job_id: str, end: Any) -> int:
    """Say how a followed job ended; its exit status."""
    if end is None:
        return exitcodes.OK
    code = exitcodes.for_outcome(end)
    if not out.json:
        job = client.get_job(job_id)
        mark = Text("✔ " if code == exitcodes.OK else "✘ ", style="green" if code == exitcodes.OK else "red")
        out.note(mark + job_line(job))
    return code


def submit(args: argparse.Namespace, out: Output) -> int:
    with conductor(args) as client:
        job = client.submit_job(
            read_spec(args.spec),
            start_step=args.start_step,
            request_id=args.request_id,
            dry_run=args.dry_run,
            resume_from=args.resume_from,
        )
        if not args.follow or args.dry_run:
            if out.json:
                out.document(job)
            else:
                out.show(job_line(job, "would submit" if args.dry_run else "submitted"))
                if args.dry_run:
                    # The spec as the conductor resolved it: defaults filled in, durations normalised.
                    out.show(Text(resolved_spec_yaml(job), style="dim"))
            return exitcodes.OK
        if out.json:
            out.line("job", job)
        else:
            out.note(job_line(job, "submitted"))
        stream = client.stream_logs(job.id, follow=True)
        try:
            end = follow(out, stream, f"waiting for {job.name} to start…")
        except KeyboardInterrupt:
            # Following is only watching: the job is the conductor's and goes on.
            out.note(f"stopped following; job {job.id} goes on (baton logs {job.id} -f to follow again)")
            return exitcodes.INTERRUPTED
        return _outcome(out, client, job.id, end)


def logs(args: argparse.Namespace, out: Output) -> int:
    kwargs = {"offset": args.offset, "tail_lines": args.tail or 0, "follow": args.follow}
    client: ConductorClient | ViewerClient
    if args.source == "viewer":
        client = viewer(args)
        stream = client.stream_logs(args.job, **kwargs)
    else:
        client = conductor(args)
        stream = client.stream_logs(args.job, **kwargs)
    with client:
        end = follow(out, stream, f"waiting for output of {args.job}…")
        return _outcome(out, client, args.job, end) if args.follow else exitcodes.OK


# ---------------------------------------------------------------- reading


def get(args: argparse.Namespace, out: Output) -> int:
    if "/" in args.job:
        # PROJECT/GROUP/NAME/RUN: a run found where it lives, by the viewer,
        # whether or not a conductor knows it.
        parts = args.job.split("/")
        if len(parts) != 4:
            raise ValueError(f"{args.job[:80]!r} is not a job id or PROJECT/GROUP/NAME/RUN")
        with viewer(args) as v:
            job = v.get_job(project=parts[0], group=parts[1], name=parts[2], run_id=parts[3])
    else:
        with viewer(args) if args.source == "viewer" else conductor(args) as client:
            job = client.get_job(args.job)
    if out.json:
        out.document(job)
    else:
        out.show(job_details(job))
        if len(job.steps) > 1:
            out.show(steps_table(job))
    return exitcodes.OK


def _listing(
    out: Output, key: str, items: BlockingStream[Any], limit: int, table: Callable[[list[Any]], Any]
) -> int:
    """Print up to ``limit`` items (0: all) of a paged list: a table, or ``{key: [...]}``."""
    with items:
        found = list(itertools.islice(items, limit or None))
    return _show_list(out, key, found, table)


def _page_size(limit: int) -> int:
    return min(limit, 1000) if limit > 0 else 1000


def ls(args: argparse.Namespace, out: Output) -> int:
    with viewer(args) if args.source == "viewer" else conductor(args) as client:
        jobs = client.iter_jobs(
            **_filters(args), states=_states(args.state), page_size=_page_size(args.limit)
        )
        return _listing(out, "jobs", jobs, args.limit, lambda found: jobs_table(found, width=out.out.width))


def watch(args: argparse.Namespace, out: Output) -> int:
    """Every change as it happens: a live table on a terminal, a line per change
    when printing to a pipe or file, JSON lines with ``--json`` (one per event,
    the job-less SNAPSHOT_END and HEARTBEAT ones included, so a script knows
    when the snapshot is whole and where to resume with ``--since``)."""
    jobs: dict[str, job_pb2.Job] = {}
    seen = 0
    watching = True
    with (
        conductor(args) as client,
        client.watch_jobs(since_revision=args.since, progress=True, **_filters(args)) as stream,
    ):

        def table(live: bool) -> Group:
            # list() first: the live display's refresh thread renders while events arrive.
            newest = sorted(
                list(jobs.values()), key=lambda j: (j.create_time.seconds, j.create_time.nanos, j.id)
            )
            caption = f"{client.address} · revision {stream.revision} · {len(jobs)} job(s)"
            return Group(
                jobs_table(reversed(newest[-args.rows :]), width=out.out.width),
                Text(caption + (" · Ctrl-C to stop" if live else ""), style="dim"),
            )

        live = None
        if out.out.is_terminal and not out.json:
            # Re-rendered twice a second, so ages and durations keep moving between events.
            live = Live(console=out.out, get_renderable=lambda: table(watching), refresh_per_second=2)
        try:
            if live is not None:
                live.start(refresh=True)
            for event in stream:
                if out.json:
                    out.line("event", event)
                if event.type == job_pb2.JOB_EVENT_TYPE_HEARTBEAT:
                    continue  # the live table's caption shows its revision; --count skips it
                if event.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END:
                    if live is None:
                        out.show(Text(f"{event.revision:>6} end of snapshot", style="dim"))
                else:
                    if live is None:
                        kind = job_pb2.JobEventType.Name(event.type).removeprefix("JOB_EVENT_TYPE_").lower()
                        out.show(Text(f"{event.revision:>6} {kind:<8} ") + job_line(event.job))
                    if event.type == job_pb2.JOB_EVENT_TYPE_DELETED:
                        jobs.pop(event.job.id, None)
                    else:
                        jobs[event.job.id] = event.job
                if live is not None:
                    live.refresh()
                seen += 1
                if seen == args.count:
                    break
        except KeyboardInterrupt:
            return exitcodes.INTERRUPTED  # the way to stop watching, as the exit-code table says
        finally:
            if live is not None:
                watching = False
                live.stop()
    return exitcodes.OK


# ---------------------------------------------------------------- control


def _wait(out: Output, client: ConductorClient, job: job_pb2.Job, states: frozenset[int], what: str) -> Any:
    if job.state in states:
        return job
    with out.spinner(f"{what} {job.id}…"):
        return client.wait_for_job(job.id, states=states, timeout=None)


def _report(out: Output, job: job_pb2.Job, verb: str) -> int:
    if out.json:
        out.document(job)
    else:
        out.show(job_line(job, verb))
    return exitcodes.OK


def pause(args: argparse.Namespace, out: Output) -> int:
    mode = {
        "checkpoint": job_pb2.PAUSE_MODE_CHECKPOINT,
        "suspend": job_pb2.PAUSE_MODE_SUSPEND,
        None: job_pb2.PAUSE_MODE_UNSPECIFIED,
    }[args.mode]
    with conductor(args) as client:
        job = client.pause_job(args.job, mode)
        if args.wait:
            job = _wait(out, client, job, PAUSED_OR_ENDED, "waiting for a checkpoint from")
    return _report(out, job, "paused" if job.state == job_pb2.JOB_STATE_PAUSED else "pausing")


def resume(args: argparse.Namespace, out: Output) -> int:
    with conductor(args) as client:
        job = client.resume_job(args.job)
    return _report(out, job, "resumed")


def cancel(args: argparse.Namespace, out: Output) -> int:
    with conductor(args) as client:
        job = client.cancel_job(args.job, grace=args.grace, reason=args.reason or "")
        if args.wait:
            job = _wait(out, client, job, FINAL_STATES, "waiting for the end of")
    return _report(out, job, state_name(job.state).lower())


def delete(args: argparse.Namespace, out: Output) -> int:
    with conductor(args) as client:
        response = client.delete_job(args.job)
    if out.json:
        out.document(response)
    else:
        out.show(Text(f"deleted {response.job_id} (revision {response.revision}); its checkpoints stay"))
    return exitcodes.OK


# ---------------------------------------------------------------- viewer


def checkpoints(args: argparse.Namespace, out: Output) -> int:
    with viewer(args) as client:
        found = client.iter_checkpoints(
            **_filters(args), run_id=args.run or "", page_size=_page_size(args.limit)
        )
        return _listing(out, "checkpoints", found, args.limit, checkpoints_table)


def _pages(fetch: Callable[[str], Any], key: str, limit: int) -> list[Any]:
    """Up to ``limit`` items (0: all) of a paged viewer list, page after page."""
    found: list[Any] = []
    token = ""
    while True:
        page = fetch(token)
        found.extend(getattr(page, key))
        token = page.next_page_token
        if not token or (limit and len(found) >= limit):
            return found[:limit] if limit else found


def _show_list(out: Output, key: str, found: list[Any], table: Callable[[list[Any]], Any]) -> int:
    """Print listed items: a table, or ``{key: [...]}``."""
    if out.json:
        out.document({key: [to_dict(item) for item in found]})
    elif found:
        out.show(table(found))
    else:
        out.note(Text(f"no {key}", style="dim"))
    return exitcodes.OK


def _job_key(text: str) -> tuple[str, str, str]:
    """PROJECT/GROUP/NAME, or NAME alone in the default project and group."""
    parts = text.split("/")
    if len(parts) == 1:
        return "default", "default", parts[0]
    if len(parts) != 3:
        raise ValueError(f"{text[:80]!r} is not NAME or PROJECT/GROUP/NAME")
    return parts[0], parts[1], parts[2]


def projects(args: argparse.Namespace, out: Output) -> int:
    with viewer(args) as client:
        found = _pages(lambda t: client.list_projects(page_size=_page_size(args.limit), page_token=t),
                       "projects", args.limit)  # fmt: skip
    return _show_list(out, "projects", found, projects_table)


def running(args: argparse.Namespace, out: Output) -> int:
    with viewer(args) as client:
        found = _pages(
            lambda t: client.list_running_jobs(
                project=args.project or "", include_stale=True, stale_after=args.stale_after,
                page_size=_page_size(args.limit), page_token=t,
            ),
            "jobs",
            args.limit,
        )  # fmt: skip
    if args.stale:
        found = [r for r in found if r.stale]
    return _show_list(out, "jobs", found, lambda rows: running_table(rows, width=out.out.width))


def recent(args: argparse.Namespace, out: Output) -> int:
    with viewer(args) as client:
        response = client.list_recent_jobs(project=args.project or "", hours=args.hours, limit=args.limit)
    return _show_list(out, "jobs", list(response.jobs), lambda jobs: jobs_table(jobs, width=out.out.width))


def runs(args: argparse.Namespace, out: Output) -> int:
    project, group, name = _job_key(args.job_name)
    with viewer(args) as client:
        found = _pages(
            lambda t: client.list_job_runs(
                project, group, name, page_size=_page_size(args.limit), page_token=t
            ),
            "jobs",
            args.limit,
        )
    return _show_list(out, "jobs", found, lambda jobs: jobs_table(jobs, width=out.out.width))


def checkpoint_file(args: argparse.Namespace, out: Output) -> int:
    """A checkpoint's config (config.yaml, else config.json) or its job.json."""
    project, group, name = _job_key(args.job_name)
    with viewer(args) as client:
        if args.action == "config":
            response: Any = client.get_checkpoint_config(project, group, name, args.ref or "")
            data, source = response.config, response.source_file
        else:
            response = client.get_checkpoint_job_spec(project, group, name, args.ref or "")
            data, source = response.job_spec, "job.json"
    if out.json:
        out.document(response)
    else:
        out.note(Text(f"{source} of {project}/{group}/{name} {response.suffix}", style="dim"))
        out.show(Text(yaml.safe_dump(json_format.MessageToDict(data), sort_keys=False).rstrip()))
    return exitcodes.OK


def stats(args: argparse.Namespace, out: Output) -> int:
    with viewer(args) as client:
        response = client.get_dashboard_stats(project=args.project or "")
    if out.json:
        out.document(response)
    else:
        out.show(stats_view(response))
    return exitcodes.OK


def wait(args: argparse.Namespace, out: Output) -> int:
    """Wait until a job has ended; exit with its outcome."""
    with conductor(args) as client:
        job = _wait(out, client, client.get_job(args.job), FINAL_STATES, "waiting for")
    if out.json:
        out.document(job)
    else:
        out.show(job_line(job))
    return exitcodes.for_outcome(job)


# ---------------------------------------------------------------- inspection and clean-up


def health(args: argparse.Namespace, out: Output) -> int:
    """The job's processes now (GetJobHealth)."""
    with conductor(args) as client:
        response = client.get_job_health(args.job)
    if out.json:
        out.document(response)
    else:
        out.show(health_view(response))
    return exitcodes.OK


def _step_number(client: ConductorClient, job_id: str, step: str) -> int:
    """A step given by its 1-based number or by its name."""
    if step.isdigit():
        return int(step)
    names = [s.name for s in client.get_job(job_id).steps]
    if step not in names:
        raise ValueError(f"job {job_id} has no step {step[:40]!r}; its steps: {', '.join(names)}")
    return names.index(step) + 1


def steps(args: argparse.Namespace, out: Output) -> int:
    """All steps of a job, or one step with the last lines of its own output."""
    with conductor(args) as client:
        if args.step is None:
            job = client.get_job(args.job)
            if out.json:
                out.document({"steps": [to_dict(s) for s in job.steps]})
            else:
                out.show(steps_table(job))
            return exitcodes.OK
        response = client.get_job_step(
            args.job, _step_number(client, args.job, args.step), tail_lines=args.tail
        )
    if out.json:
        out.document(response)
    else:
        single = job_pb2.Job(steps=[response.step])
        out.show(steps_table(single))
        if response.tail:
            sys.stdout.write(response.tail.decode(errors="replace"))
            sys.stdout.flush()
    return exitcodes.OK


def checkpoints_rm(args: argparse.Namespace, out: Output) -> int:
    """Remove a job's checkpoints (all of them when no suffix is given)."""
    project, group, name = _job_key(args.job_name)
    with conductor(args) as client:
        response = client.delete_checkpoints(project, group, name, args.suffixes)
    if out.json:
        out.document(response)
    else:
        out.show(
            f"removed {response.deleted_count} checkpoint(s) of {project}/{group}/{name}, "
            f"{format_size(response.deleted_bytes)}"
        )
    return exitcodes.OK


def clear(args: argparse.Namespace, out: Output) -> int:
    """Delete ended jobs in bulk (or, with --dry-run, list what would go)."""
    older = args.older_than
    with conductor(args) as client:
        try:
            response = client.clear_jobs(
                states=_states(args.state),
                older_than=older,
                all=args.all,
                dry_run=args.dry_run,
                **_filters(args),  # type: ignore[arg-type]
            )
        except InvalidArgument as err:
            if err.reason != "CLEAR_FILTER_REQUIRED" or out.json:
                raise
            # The conductor makes the rule; a person is told it in flags, not request fields.
            raise InvalidArgument(
                "no filter given: pass --state, --project, --group, --name or --older-than, "
                "or --all to delete every ended job",
                code=err.code,
                reason=err.reason,
                metadata=err.metadata,
                address=err.address,
                service=err.service,
            ) from None
    if out.json:
        out.document(response)
    elif args.dry_run:
        out.show(f"would delete {response.deleted_count} ended job(s)")
        for job_id in response.job_ids:
            out.show(f"  {job_id}")
    else:
        out.show(f"deleted {response.deleted_count} ended job(s)")
    return exitcodes.OK


def info(args: argparse.Namespace, out: Output) -> int:
    """The conductor itself (GetConductorInfo)."""
    with conductor(args) as client:
        response = client.get_conductor_info()
    if out.json:
        out.document(response)
    else:
        out.show(info_view(response))
    return exitcodes.OK
