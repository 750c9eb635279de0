"""The ``baton`` command line.

Server verbs start a service in this process; the other verbs talk to a
conductor at ``--conductor`` (or ``$BATON_CONDUCTOR``, default 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import yaml
from google.protobuf import duration_pb2, json_format

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2

DEFAULT_CONDUCTOR = "127.0.0.1:50051"


def _conductor_cmd(args: argparse.Namespace) -> int:
    from common.logs import configure
    from conductor.config import ConductorConfig
    from conductor.server import HomeLocked, serve

    configure(args.log_level)
    fields = {
        "listen": args.listen,
        "home": args.home,
        "status_dir": args.status_dir,
        "checkpoints_dir": args.checkpoints_dir,
        "max_running": args.max_running,
        "heartbeat": args.heartbeat,
        "token_file": args.token_file,
        "insecure": args.insecure,
        "log_level": args.log_level,
    }
    try:
        config = ConductorConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        print(f"baton conductor: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(config))
    except HomeLocked as exc:
        print(f"baton conductor: {exc}", file=sys.stderr)
        return 1
    return 0


def _viewer_cmd(args: argparse.Namespace) -> int:
    from common.logs import configure
    from viewer_api.config import ViewerConfig
    from viewer_api.server import serve

    configure(args.log_level)
    fields = {
        "listen": args.listen,
        "home": args.home,
        "status_dir": args.status_dir,
        "checkpoints_dir": args.checkpoints_dir,
        "watch": args.watch,
        "poll_interval": args.poll_interval,
        "stale_after": args.stale_after,
        "token_file": args.token_file,
        "insecure": args.insecure,
        "log_level": args.log_level,
    }
    try:
        config = ViewerConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:
        print(f"baton viewer: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve(config))
    return 0


def _stub(args: argparse.Namespace) -> conductor_pb2_grpc.ConductorStub:
    channel = grpc.insecure_channel(args.conductor)
    return conductor_pb2_grpc.ConductorStub(channel)


def _metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    token = os.environ.get("BATON_TOKEN")
    if args.token_file:
        token = Path(args.token_file).read_text().strip()
    return [("authorization", f"Bearer {token}")] if token else []


def _print_job(job: job_pb2.Job, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(job, indent=1))
    else:
        state = job_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
        extra = f"  exit {job.exit_code}" if job.HasField("exit_code") else ""
        print(f"{job.id}  {job.project}/{job.group}/{job.name}  {state}{extra}  {job.reason}")


def _submit_cmd(args: argparse.Namespace) -> int:
    text = Path(args.spec).read_text() if args.spec != "-" else sys.stdin.read()
    data = yaml.safe_load(text)
    if isinstance(data, dict) and isinstance(data.get("workdir"), str) and args.spec != "-":
        # A relative workdir means relative to where the spec was written.
        data["workdir"] = str((Path(args.spec).parent / data["workdir"]).resolve())
        text = yaml.safe_dump(data)
    req = pb.SubmitJobRequest(
        spec_yaml=text, start_step=args.start_step, request_id=args.request_id or "", dry_run=args.dry_run
    )
    job = _stub(args).SubmitJob(req, metadata=_metadata(args), timeout=30)
    _print_job(job, args.json)
    return 0


def _get_cmd(args: argparse.Namespace) -> int:
    _print_job(
        _stub(args).GetJob(pb.GetJobRequest(job_id=args.job), metadata=_metadata(args), timeout=10), args.json
    )
    return 0


def _ls_cmd(args: argparse.Namespace) -> int:
    states = [job_pb2.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state or []]
    resp = _stub(args).ListJobs(
        pb.ListJobsRequest(
            project=args.project or "",
            group=args.group or "",
            name=args.name or "",
            states=states,  # type: ignore[arg-type]
            page_size=args.limit,
        ),
        metadata=_metadata(args),
        timeout=10,
    )
    for job in resp.jobs:
        _print_job(job, args.json)
    return 0


def _cancel_cmd(args: argparse.Namespace) -> int:
    req = pb.CancelJobRequest(job_id=args.job, reason=args.reason or "")
    if args.grace is not None:
        req.grace_period.CopyFrom(duration_pb2.Duration(seconds=int(args.grace)))
    _print_job(_stub(args).CancelJob(req, metadata=_metadata(args), timeout=30), args.json)
    return 0


def _pause_cmd(args: argparse.Namespace) -> int:
    mode = job_pb2.PAUSE_MODE_CHECKPOINT if args.checkpoint else job_pb2.PAUSE_MODE_UNSPECIFIED
    _print_job(
        _stub(args).PauseJob(
            pb.PauseJobRequest(job_id=args.job, mode=mode), metadata=_metadata(args), timeout=30
        ),
        args.json,
    )
    return 0


def _resume_cmd(args: argparse.Namespace) -> int:
    _print_job(
        _stub(args).ResumeJob(pb.ResumeJobRequest(job_id=args.job), metadata=_metadata(args), timeout=30),
        args.json,
    )
    return 0


def _delete_cmd(args: argparse.Namespace) -> int:
    resp = _stub(args).DeleteJob(pb.DeleteJobRequest(job_id=args.job), metadata=_metadata(args), timeout=30)
    print(json_format.MessageToJson(resp) if args.json else f"deleted {resp.job_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baton", description="Run long jobs and follow them.")
    sub = parser.add_subparsers(dest="verb", required=True)

    c = sub.add_parser("conductor", help="run the conductor")
    c.add_argument("--listen", help="address to listen on (default 127.0.0.1:50051)")
    c.add_argument("--home", type=Path, help="state, status and checkpoints (default: XDG state dir)")
    c.add_argument("--status-dir", type=Path)
    c.add_argument("--checkpoints-dir", type=Path)
    c.add_argument("--max-running", type=int, help="jobs running at once (default: core count)")
    c.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 30)")
    c.add_argument("--token-file", type=Path, help="require this bearer token")
    c.add_argument("--insecure", action="store_true", help="allow a non-loopback address with no token")
    c.add_argument("--log-level", default="info")
    c.set_defaults(func=_conductor_cmd)

    v = sub.add_parser("viewer", help="run the read-only viewer")
    v.add_argument("--listen", help="address to listen on (default 127.0.0.1:50052)")
    v.add_argument("--home", type=Path, help="read <home>/status and <home>/checkpoints")
    v.add_argument("--status-dir", type=Path)
    v.add_argument("--checkpoints-dir", type=Path)
    v.add_argument("--watch", choices=["inotify", "poll"], help="how to notice changes (default inotify)")
    v.add_argument("--poll-interval", type=float, help="seconds between scans with --watch poll")
    v.add_argument("--stale-after", type=float, help="seconds without heartbeat before a run is stale")
    v.add_argument("--token-file", type=Path, help="require this bearer token")
    v.add_argument("--insecure", action="store_true", help="allow a non-loopback address with no token")
    v.add_argument("--log-level", default="info")
    v.set_defaults(func=_viewer_cmd)

    def client_verb(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--conductor", default=os.environ.get("BATON_CONDUCTOR", DEFAULT_CONDUCTOR))
        p.add_argument("--token-file")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = client_verb("submit", "submit a job spec (YAML)")
    p.add_argument("spec")
    p.add_argument("--start-step", type=int, default=0)
    p.add_argument("--request-id")
    p.add_argument("--dry-run", action="store_true")
    p.set_defaults(func=_submit_cmd)
    p = client_verb("get", "show one job")
    p.add_argument("job")
    p.set_defaults(func=_get_cmd)
    p = client_verb("ls", "list jobs")
    p.add_argument("--project")
    p.add_argument("--group")
    p.add_argument("--name")
    p.add_argument("--state", action="append")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=_ls_cmd)
    p = client_verb("cancel", "cancel a job")
    p.add_argument("job")
    p.add_argument("--grace", type=float)
    p.add_argument("--reason")
    p.set_defaults(func=_cancel_cmd)
    p = client_verb("pause", "pause a job")
    p.add_argument("job")
    p.add_argument("--checkpoint", action="store_true")
    p.set_defaults(func=_pause_cmd)
    p = client_verb("resume", "resume a paused job")
    p.add_argument("job")
    p.set_defaults(func=_resume_cmd)
    p = client_verb("delete", "delete an ended job")
    p.add_argument("job")
    p.set_defaults(func=_delete_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except grpc.RpcError as err:
        print(f"baton {args.verb}: {err.code().name}: {err.details()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
