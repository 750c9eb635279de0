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

from client import commands, exitcodes, serve
from client.errors import BatonError
from client.output import Output

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
    ("--timeout", 10.0, {"type": float, "metavar": "S", "help": "deadline of each call (default 10 s)"}),
    ("--json", False, {"action": "store_true", "help": "machine-readable output"}),
]


def _client_flags(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a flag given before the verb is not overwritten by the verb's default.
    for flag, _, kwargs in _CLIENT_FLAGS:
        parser.add_argument(flag, default=argparse.SUPPRESS, **kwargs)


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
    _client_flags(parser)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    for service, text in (
        ("up", "run conductor and viewer together until Ctrl-C"),
        ("conductor", "run the conductor (the only writer)"),
        ("viewer", "run the read-only viewer"),
    ):
        p = sub.add_parser(service, help=text, description=text)
        serve.add_flags(p, service)
        p.set_defaults(func=None)

    def verb(
        name: str, text: str, func: Callable[[argparse.Namespace, Output], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text)
        _client_flags(p)
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

    p = verb("get", "show one job", commands.get)
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
    p.add_argument("--grace", type=float, metavar="S", help="seconds before SIGKILL (default 10)")
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
    p.add_argument("step", nargs="?", type=int, metavar="STEP", help="1-based step to show")
    p.add_argument("--tail", type=int, default=20, metavar="N", help="lines of that step (default 20)")

    p = verb("clear", "delete ended jobs in bulk", commands.clear)
    _filter_flags(p)
    p.add_argument("--state", action="append", metavar="STATE", help="succeeded, failed, cancelled")
    p.add_argument("--older-than", metavar="AGE", help="ended at least this long ago (7d, 12h)")
    p.add_argument("--all", action="store_true", help="every ended job (needed when no filter is given)")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")

    p = verb("info", "the conductor: version, uptime, memory, running jobs, counts", commands.info)

    p = verb("stats", "runs by state, running and stale, checkpoints (viewer)", commands.stats)
    p.add_argument("--project", help="only this project")
    return parser


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
