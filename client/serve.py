"""The ``baton`` verbs that run services in this process: ``conductor``,
``viewer``, and ``up`` (both together on one home, the embedded defaults).

A service runs until SIGINT (Ctrl-C) or SIGTERM, then stops serving and
exits 0; jobs keep running and the next conductor re-attaches to them. Once
every service serves, ``--address-file`` receives their addresses as JSON
(``{"conductor": ..., "viewer": ...}``, written atomically) and ``--json``
prints the same document on stdout, so a caller that asked for port 0 learns
the ports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from baton.client import exitcodes
from baton.common.auth import reload_on_sighup
from baton.common.jobfile import write_atomic
from baton.common.rpc import stop_signals, until_signalled

# The flags each service takes, as (flag, argparse keyword arguments).
_COMMON = [
    ("--home", {"type": Path, "help": "state, status and checkpoints under DIR (default: XDG state dir)"}),
    ("--status-dir", {"type": Path, "help": "runs' status.json and output.log (default HOME/status)"}),
    ("--checkpoints-dir", {"type": Path, "help": "checkpoints (default HOME/checkpoints)"}),
    (
        "--token-file",
        {"type": Path, "help": "callers and roles: named tokens, certificates (YAML; SIGHUP reloads)"},
    ),
    ("--tls-cert-file", {"type": Path, "help": "serve TLS with this certificate chain (PEM)"}),
    ("--tls-key-file", {"type": Path, "help": "the private key of --tls-cert-file (PEM)"}),
    (
        "--tls-client-ca-file",
        {"type": Path, "help": "mutual TLS: require client certificates signed by this CA (PEM)"},
    ),
    (
        "--insecure",
        {"action": "store_true", "help": "allow a non-loopback address with no token or client CA"},
    ),
]
_CONDUCTOR = [
    ("--max-running", {"type": int, "help": "jobs running at once (default: the core count)"}),
    ("--heartbeat", {"type": float, "help": "seconds between job heartbeats (default 30)"}),
    (
        "--capacity",
        {"help": "the local executor's resources, e.g. cpus=8,memory=32G,gpus=0,1 (default: detected)"},
    ),
    (
        "--backfill-window",
        {
            "type": float,
            "help": "seconds a job waiting for resources may be overtaken by later jobs that fit "
            "(default 300; 0: never)",
        },
    ),
    ("--slurm", {"action": "store_true", "help": "offer `executor: slurm` (Slurm tools from PATH)"}),
    ("--slurm-partition", {"help": "the Slurm partition jobs go to (default: the cluster's)"}),
    ("--slurm-account", {"help": "the Slurm account jobs are charged to"}),
    ("--ray-address", {"help": "offer `executor: ray` via the Ray Jobs API at URL (http://HOST:8265)"}),
    (
        "--secrets-dir",
        {"type": Path, "help": "secrets for specs' secret_env: one file per secret, mode 600, in a 700 DIR"},
    ),
    ("--group", {"metavar": "NAME", "help": "a group that may read the status and checkpoint trees"}),
    (
        "--retain-ended",
        {"metavar": "DURATION", "help": "delete ended jobs this long after their end, e.g. 30d"},
    ),
    ("--retain-max", {"type": int, "metavar": "N", "help": "keep only the newest N ended jobs"}),
    (
        "--retain-checkpoints",
        {
            "choices": ["true", "false"],
            "help": "whether jobs deleted by retention keep their checkpoints (default true)",
        },
    ),
]
_VIEWER = [
    ("--watch", {"choices": ["inotify", "poll"], "help": "how to notice changes (default inotify)"}),
    ("--poll-interval", {"type": float, "help": "seconds between scans with --watch poll (default 2)"}),
    (
        "--reconcile-interval",
        {"type": float, "help": "seconds between safety-net rescans with --watch inotify (default 300)"},
    ),
    (
        "--stale-after",
        {"type": float, "help": "seconds without heartbeat before a run is stale (default 300)"},
    ),
]
_OUTPUT = [
    ("--address-file", {"type": Path, "help": "write the addresses served, as JSON, once serving"}),
    ("--json", {"action": "store_true", "help": "print the addresses served as one JSON line"}),
]


def add_flags(parser: argparse.ArgumentParser, service: str) -> None:
    """The flags of ``baton conductor``, ``baton viewer`` or ``baton up``."""
    if service in ("conductor", "up"):
        parser.add_argument("--listen", help="conductor address (default 127.0.0.1:50051)")
    if service == "viewer":
        parser.add_argument("--listen", help="viewer address (default 127.0.0.1:50052)")
    if service == "up":
        parser.add_argument("--viewer-listen", help="viewer address (default 127.0.0.1:50052)")
    flags = (
        _COMMON + (_CONDUCTOR if service != "viewer" else []) + (_VIEWER if service != "conductor" else [])
    )
    for flag, kwargs in [*flags, *_OUTPUT]:
        parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]
    default_level = "warning" if service == "up" else "info"
    parser.add_argument("--log-level", default=default_level, help=f"default {default_level}")


# Config fields both services take from the flags of the same names.
_AUTH = ["token_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file", "insecure"]


def _fields(args: argparse.Namespace, names: list[str], **extra: Any) -> dict[str, Any]:
    found = {name: getattr(args, name, None) for name in names} | extra
    return {k: v for k, v in found.items() if v is not None and v is not False}


def _conductor_config(args: argparse.Namespace) -> Any:
    from baton.conductor.config import ConductorConfig

    names = ["home", "status_dir", "checkpoints_dir", "max_running", "heartbeat", "capacity",
             "backfill_window", "slurm", "slurm_partition", "slurm_account", "ray_address",
             "secrets_dir", "group", "retain_ended", "retain_max", "retain_checkpoints", *_AUTH]  # fmt: skip
    return ConductorConfig(**_fields(args, names, listen=args.listen, log_level=args.log_level))


def _viewer_config(args: argparse.Namespace, listen: str | None) -> Any:
    from baton.viewer_api.config import ViewerConfig

    names = ["home", "status_dir", "checkpoints_dir", "watch", "poll_interval", "reconcile_interval",
             "stale_after", *_AUTH]  # fmt: skip
    return ViewerConfig(**_fields(args, names, listen=listen, log_level=args.log_level))


Starter = Callable[[], Awaitable[Any]]


async def _serve(starters: dict[str, Starter], args: argparse.Namespace, home: Path) -> None:
    """Start each service in order, announce them, and run until a signal; then stop them all."""
    running: list[Any] = []

    async def stop_all() -> None:
        for service in reversed(running):
            with contextlib.suppress(Exception):
                await service.stop()

    async with stop_signals() as stopping:
        try:
            for start in starters.values():
                running.append(await start())
        except BaseException:
            await stop_all()
            raise
        addresses = {name: r.address for name, r in zip(starters, running, strict=True)}
        document = json.dumps(addresses | {"home": str(home)})
        if args.address_file is not None:
            await asyncio.to_thread(write_atomic, args.address_file, document.encode())
        if args.json:
            print(document, flush=True)
        else:
            _announce(addresses, home)
        with reload_on_sighup([r.reload_credentials for r in running]):
            await until_signalled(stopping, stop_all)
    if not args.json:
        print("baton: stopped", file=sys.stderr, flush=True)


def _announce(addresses: dict[str, str], home: Path) -> None:
    env = {"conductor": "BATON_CONDUCTOR", "viewer": "BATON_VIEWER"}
    lines = ["baton: serving"]
    for name, address in addresses.items():
        lines.append(f"  {name:<10} {address}   (export {env[name]}={address})")
    lines += [f"  {'home':<10} {home}", "Press Ctrl-C to stop."]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _config_problem(exc: ValueError) -> str:
    """A settings error as one line naming the flag, not pydantic's report."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return str(exc)
    problems = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"] and not msg.startswith("--"):
            msg = f"--{str(err['loc'][0]).replace('_', '-')}: {msg}"
        problems.append(msg)
    return "; ".join(problems)


def run(args: argparse.Namespace) -> int:
    """``baton conductor``, ``baton viewer`` or ``baton up``."""
    from baton.common.auth import CredentialsError
    from baton.common.logs import configure
    from baton.conductor.secrets import SecretsRefused
    from baton.conductor.server import HomeLocked

    configure(args.log_level, json=args.verb != "up")
    try:
        starters: dict[str, Starter] = {}
        if args.verb in ("conductor", "up"):
            from baton.conductor.server import start as start_conductor

            cconf = _conductor_config(args)
            home = cconf.home
            starters["conductor"] = lambda: start_conductor(cconf)
        if args.verb in ("viewer", "up"):
            from baton.viewer_api.server import start as start_viewer

            vconf = _viewer_config(args, args.viewer_listen if args.verb == "up" else args.listen)
            home = vconf.home
            starters["viewer"] = lambda: start_viewer(vconf)
    except ValueError as exc:
        print(f"baton {args.verb}: {_config_problem(exc)}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        asyncio.run(_serve(starters, args, home))
    except (HomeLocked, OSError, CredentialsError, SecretsRefused) as exc:
        print(f"baton {args.verb}: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    return exitcodes.OK
