"""The ``baton`` command line.

    baton up                          conductor and viewer together, until Ctrl-C
    baton conductor | baton viewer    one service
    baton submit SPEC [--follow]      queue a job (and follow its log to the end)
    baton ls | get JOB | logs JOB [-f] | watch
    baton pause JOB [--checkpoint] | resume JOB | cancel JOB | delete JOB | wait JOB
    baton checkpoints | stats         from the viewer

Addresses come from ``--conductor`` / ``--viewer`` or ``$BATON_CONDUCTOR`` /
``$BATON_VIEWER`` (defaults 127.0.0.1:50051 and 127.0.0.1:50052); a token
from ``--token-file`` or ``$BATON_TOKEN``. Every verb takes ``--json``: one
JSON document, or JSON lines for streams (``logs``, ``watch``, ``submit
--follow``). Exit statuses are listed in ``client.exitcodes``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import shtab

from baton.client import commands, exitcodes, serve
from baton.client.errors import BatonError
from baton.client.output import Output
from baton.common.auth import hash_token
from baton.common.durations import parse_duration
from baton.common.version import VERSION


def duration(text: str) -> float:
    """An argparse type: a duration (5s, 1m30s, 7d); a bare number is seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# Flags every client verb takes, before or after the verb: (flag, default, kwargs).
_CLIENT_FLAGS: list[tuple[str, Any, dict[str, Any]]] = [
    (
        "--conductor",
        None,
        {"metavar": "ADDR", "help": "conductor address ($BATON_CONDUCTOR, 127.0.0.1:50051)"},
    ),
    ("--viewer", None, {"metavar": "ADDR", "help": "viewer address ($BATON_VIEWER, 127.0.0.1:50052)"}),
    ("--token-file", None, {"metavar": "FILE", "help": "bearer token to send ($BATON_TOKEN)"}),
    ("--ca-file", None, {"metavar": "PEM", "help": "use TLS, trusting these roots ($BATON_CA_FILE)"}),
    ("--cert-file", None, {"metavar": "PEM", "help": "TLS client certificate ($BATON_CERT_FILE)"}),
    ("--key-file", None, {"metavar": "PEM", "help": "TLS client key ($BATON_KEY_FILE)"}),
    (
        "--tls-server-name",
        None,
        {"metavar": "NAME", "help": "name expected in the server's certificate ($BATON_TLS_SERVER_NAME)"},
    ),
    ("--timeout", 10.0, {"type": duration, "metavar": "AGE", "help": "deadline of each call (default 10s)"}),
    ("--json", False, {"action": "store_true", "help": "machine-readable output"}),
]


def _client_flags(parser: argparse.ArgumentParser) -> None:
    # A group of their own, which --help lists after the verb's own flags.
    group = parser.add_argument_group("connection (also before the verb; environment in brackets)")
    # SUPPRESS: a flag given before the verb is not overwritten by the verb's default.
    for flag, _, kwargs in _CLIENT_FLAGS:
        group.add_argument(flag, default=argparse.SUPPRESS, **kwargs)


# One example per verb, shown by its --help after what the verb does.
EXAMPLES: dict[str, str] = {
    "submit": "baton submit examples/train.yaml --follow",
    "ls": "baton ls --state running,failed --project demo",
    "get": "baton get 20261129-101500-a1b2c3",
    "logs": "baton logs 20261129-101500-a1b2c3 -f --tail 20",
    "watch": "baton watch --project demo",
    "pause": "baton pause 20261129-101500-a1b2c3 --checkpoint",
    "resume": "baton resume 20261129-101500-a1b2c3",
    "cancel": "baton cancel 20261129-101500-a1b2c3 --grace 30s",
    "delete": "baton delete 20261129-101500-a1b2c3",
    "wait": "baton wait 20261129-101500-a1b2c3 && echo done",
    "checkpoints": "baton checkpoints --project demo --name train",
    "health": "baton health 20261129-101500-a1b2c3",
    "steps": "baton steps 20261129-101500-a1b2c3 train --tail 50",
    "clear": "baton clear --state failed --older-than 7d --dry-run",
    "info": "baton info",
    "projects": "baton projects",
    "running": "baton running --stale",
    "recent": "baton recent --hours 6",
    "runs": "baton runs demo/default/train",
    "checkpoint-config": "baton checkpoint-config demo/default/train step-000050",
    "checkpoint-job-spec": "baton checkpoint-job-spec demo/default/train",
    "stats": "baton stats --project demo",
}


def _filter_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", help="only this project")
    parser.add_argument("--group", help="only this group")
    parser.add_argument("--name", help="only jobs of this name")


def _source_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        choices=["conductor", "viewer"],
        default="conductor",
        help="ask the conductor (default) or the read-only viewer",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baton",
        description="Run long jobs, pause and resume them, follow their logs.",
        epilog="Exit status: 0 ok; 2 usage; 3 not found; 4 wrong state; 5 not allowed; 69 unreachable; "
        "70 server error; 75 timed out; 80 job cancelled; a followed job's own exit code when it failed.",
    )
    parser.add_argument("--version", action="version", version=f"baton {VERSION}")
    _client_flags(parser)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for service, text in (
        ("up", "run conductor, viewer and gateway together until Ctrl-C"),
        ("conductor", "run the conductor (the only writer)"),
        ("viewer", "run the read-only viewer"),
        ("gateway", "serve HTTP, server-sent events and the dashboard in front of both"),
    ):
        p = sub.add_parser(service, help=text, description=text)
        serve.add_flags(p, service)
        p.set_defaults(func=None)

    verbs: list[argparse.ArgumentParser] = []

    def verb(
        name: str, text: str, func: Callable[[argparse.Namespace, Output], int]
    ) -> argparse.ArgumentParser:
        example = EXAMPLES.get(name)
        description = f"{text[0].upper()}{text[1:]}." + (f"\n\nexample:\n  {example}" if example else "")
        p = sub.add_parser(
            name, help=text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        verbs.append(p)  # its connection flags come last, after its own
        p.set_defaults(func=func)
        return p

    p = verb("submit", "submit a job spec (YAML; - for stdin)", commands.submit)
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-f", "--follow", action="store_true", help="follow its log; exit with its outcome")
    p.add_argument("--start-step", type=int, default=0, metavar="N", help="1-based step to start at")
    p.add_argument("--request-id", help="idempotency key (default: a new one)")
    p.add_argument("--dry-run", action="store_true", help="validate and show the job, write nothing")
    p.add_argument(
        "--resume-from",
        default="",
        metavar="REF",
        help="start from this checkpoint of the job's name: SUFFIX, RUN_ID/SUFFIX or latest",
    )

    p = verb("ls", "list jobs, newest first", commands.ls)
    _filter_flags(p)
    p.add_argument("--state", action="append", metavar="STATE", help="only these states (repeat, or a,b)")
    p.add_argument("--limit", type=int, default=50, help="at most N jobs (0: all; default 50)")
    _source_flag(p)

    p = verb("get", "show one job (a job id, or PROJECT/GROUP/NAME/RUN for any run the viewer sees)",
             commands.get)  # fmt: skip
    p.add_argument("job", metavar="JOB")
    _source_flag(p)

    p = verb("logs", "print a job's log", commands.logs)
    p.add_argument("job", metavar="JOB")
    p.add_argument("-f", "--follow", action="store_true", help="until the job ends; exit with its outcome")
    p.add_argument("--tail", type=int, metavar="N", help="start at the last N lines")
    p.add_argument("--offset", type=int, default=0, metavar="BYTES", help="start at this byte")
    _source_flag(p)

    p = verb("watch", "a live table of job changes (JSON lines with --json)", commands.watch)
    _filter_flags(p)
    p.add_argument("--since", type=int, default=0, metavar="REV", help="changes after this revision only")
    p.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="stop after N events (the snapshot's and its end included, heartbeats not)",
    )
    p.add_argument("--rows", type=int, default=30, metavar="N", help="jobs shown (default 30)")

    p = verb("pause", "pause a running job", commands.pause)
    p.add_argument("job", metavar="JOB")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--checkpoint", dest="mode", action="store_const", const="checkpoint",
                      help="ask it to save a checkpoint and exit (frees everything)")  # fmt: skip
    mode.add_argument("--suspend", dest="mode", action="store_const", const="suspend",
                      help="freeze its processes in place")  # fmt: skip
    p.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for PAUSED")

    p = verb("resume", "resume a paused job", commands.resume)
    p.add_argument("job", metavar="JOB")

    p = verb("cancel", "cancel a job: SIGTERM, then SIGKILL after the grace", commands.cancel)
    p.add_argument("job", metavar="JOB")
    p.add_argument("--grace", type=duration, metavar="AGE", help="time before SIGKILL: 5s, 1m (default 10s)")
    p.add_argument("--reason", help="recorded in the job's reason")
    p.add_argument("--no-wait", dest="wait", action="store_false", help="do not wait for the end")

    p = verb("delete", "delete an ended job and its run directory (checkpoints stay)", commands.delete)
    p.add_argument("job", metavar="JOB")

    p = verb("wait", "wait until a job ends; exit with its outcome", commands.wait)
    p.add_argument("job", metavar="JOB")

    p = verb(
        "checkpoints",
        "list checkpoints, newest first (viewer); `checkpoints rm` removes",
        commands.checkpoints,
    )
    _filter_flags(p)
    p.add_argument("--run", metavar="RUN_ID", help="only the checkpoints of this run")
    p.add_argument("--limit", type=int, default=50, help="at most N (0: all; default 50)")
    rm = p.add_subparsers(dest="action", metavar="ACTION").add_parser(
        "rm", help="remove a job's checkpoints (conductor; all when no suffix is given)"
    )
    _client_flags(rm)
    rm.add_argument("job_name", metavar="NAME", help="NAME or PROJECT/GROUP/NAME")
    rm.add_argument("suffixes", nargs="*", metavar="SUFFIX", help="checkpoints to remove (default: all)")
    rm.set_defaults(func=commands.checkpoints_rm)

    p = verb("health", "a running job's processes: pid, CPU, memory, last output", commands.health)
    p.add_argument("job", metavar="JOB")

    p = verb("steps", "a job's steps, or one step with its own last lines", commands.steps)
    p.add_argument("job", metavar="JOB")
    p.add_argument("step", nargs="?", metavar="STEP", help="the step to show: its 1-based number or its name")
    p.add_argument("--tail", type=int, default=20, metavar="N", help="lines of that step (default 20)")

    p = verb("clear", "delete ended jobs in bulk", commands.clear)
    _filter_flags(p)
    p.add_argument("--state", action="append", metavar="STATE", help="succeeded, failed, cancelled")
    p.add_argument(
        "--older-than", type=duration, metavar="AGE", help="ended at least this long ago (7d, 12h)"
    )
    p.add_argument("--all", action="store_true", help="every ended job (needed when no filter is given)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")

    p = verb("info", "the conductor: version, uptime, memory, running jobs, counts", commands.info)

    p = verb("stats", "runs by state, running and stale, checkpoints (viewer)", commands.stats)
    p.add_argument("--project", help="only this project")

    p = verb("projects", "projects with their runs by state (viewer)", commands.projects)
    p.add_argument("--limit", type=int, default=0, help="at most N (default: all)")

    p = verb("running", "runs that are running, stale ones marked (viewer)", commands.running)
    p.add_argument("--project", help="only this project")
    p.add_argument("--stale", action="store_true", help="only stale ones (no heartbeat for --stale-after)")
    p.add_argument("--stale-after", type=duration, metavar="AGE", help="(default: the viewer's, 300s)")
    p.add_argument("--limit", type=int, default=50, help="at most N (0: all; default 50)")

    p = verb("recent", "runs started lately, newest first (viewer)", commands.recent)
    p.add_argument("--project", help="only this project")
    p.add_argument(
        "--hours", type=int, default=0, metavar="N", help="started in the last N hours (default 24)"
    )
    p.add_argument("--limit", type=int, default=0, help="at most N (default 50)")

    p = verb("runs", "every run of one job name, newest first (viewer)", commands.runs)
    p.add_argument("job_name", metavar="NAME", help="NAME or PROJECT/GROUP/NAME")
    p.add_argument("--limit", type=int, default=50, help="at most N (0: all; default 50)")

    for action, text in (
        ("config", "a checkpoint's config.yaml or config.json"),
        ("job-spec", "its job.json"),
    ):
        p = verb(f"checkpoint-{action}", f"{text} (viewer)", commands.checkpoint_file)
        p.add_argument("job_name", metavar="NAME", help="NAME or PROJECT/GROUP/NAME")
        p.add_argument("ref", nargs="?", metavar="REF", help="SUFFIX or RUN_ID/SUFFIX (default: the latest)")
        p.set_defaults(action=action)
    for p in verbs:
        _client_flags(p)

    p = sub.add_parser(
        "completion",
        help="print shell completion for baton",
        description="Print shell completion for baton.\n\nexample:\n  source <(baton completion bash)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=lambda args, out: _completion(parser, args.shell))

    p = sub.add_parser("token", help="token file helpers", description="Token file helpers.")
    tokens = p.add_subparsers(dest="token_verb", required=True, metavar="ACTION")
    text = "read a bearer token on stdin, print the token file's sha256 line for it"
    h = tokens.add_parser(
        "hash",
        help=text,
        description=f"{text[0].upper()}{text[1:]}.\n\nexample:\n  head -c 32 /dev/urandom | base64 | "
        "tee my.token | baton token hash",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    h.set_defaults(func=lambda args, out: _token_hash())
    return parser


def _token_hash() -> int:
    # The token is the first line, without its line ending (as a client sends it).
    token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        print("baton token hash: no token on stdin", file=sys.stderr)
        return exitcodes.USAGE
    print(f"sha256: {hash_token(token)}")
    return exitcodes.OK


def _completion(parser: argparse.ArgumentParser, shell: str) -> int:
    sys.stdout.write(shtab.complete(parser, shell=shell))
    return exitcodes.OK


def _fill_defaults(args: argparse.Namespace) -> None:
    for flag, default, _ in _CLIENT_FLAGS:
        name = flag.lstrip("-").replace("-", "_")
        if not hasattr(args, name):
            setattr(args, name, default)
    args.conductor = args.conductor or os.environ.get("BATON_CONDUCTOR") or "127.0.0.1:50051"
    args.viewer = args.viewer or os.environ.get("BATON_VIEWER") or "127.0.0.1:50052"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``baton`` with ``argv``; the exit status."""
    args = build_parser().parse_args(argv)
    _fill_defaults(args)
    if args.func is None:
        return serve.run(args)
    out = Output(args.json)
    try:
        return args.func(args, out)
    except BatonError as err:
        out.error(args.verb, err)
        return exitcodes.for_status(err.code)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except BrokenPipeError:
        return exitcodes.OK  # `baton logs JOB | head`
    except (OSError, ValueError) as exc:
        # An unreadable spec or token file, a bad TLS setting.
        print(f"baton {args.verb}: {exc}", file=sys.stderr)
        return exitcodes.USAGE


if __name__ == "__main__":
    sys.exit(main())
