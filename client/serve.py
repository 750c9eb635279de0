"""The ``baton`` verbs that run services in this process: ``conductor``,
``viewer``, ``gateway`` (HTTP, SSE and the dashboard in front of both), and
``up`` (all three together on one home, the embedded defaults).

A service runs until SIGINT (Ctrl-C) or SIGTERM, then stops gracefully
(``common.serving``: NOT_SERVING, new calls refused, open streams ended with
UNAVAILABLE, exit within ``--shutdown-grace``) and exits 0; jobs keep running
and the next conductor re-attaches to them. Once every service serves,
``--address-file`` receives their addresses as JSON (``{"conductor": ...,
"viewer": ..., "gateway": ..., "home": ...}``, with ``"health"`` and ``"metrics"`` when
``--health-listen`` and ``--metrics-listen`` are given; under ``baton up``
the viewer's are ``"viewer_health"`` and ``"viewer_metrics"``, the gateway's
``"gateway_metrics"``), written
atomically, and ``--json`` prints the same document on stdout, so a caller
that asked for port 0 learns the ports.

``baton up`` runs two services, each with its own metrics registry: a
listener serves one registry, so the conductor's go to ``--metrics-listen``
and the viewer's to ``--viewer-metrics-listen`` (and health likewise), as
``--listen`` and ``--viewer-listen`` split their gRPC addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from baton.client import exitcodes
from baton.common.auth import reload_on_sighup
from baton.common.jobfile import write_atomic
from baton.common.rpc import stop_signals, until_signalled

log = structlog.get_logger("baton.serve")

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
    (
        "--index-cache",
        {
            "metavar": "PATH",
            "help": "the index snapshot a restart serves from at once, then reconciles with the trees; "
            "'off' for none (default under ~/.cache/baton/viewer)",
        },
    ),
]
# Operating a service: probes, metrics, logs, stopping.
_OPS = [
    (
        "--health-listen",
        {
            "metavar": "ADDR",
            "help": "also serve grpc.health.v1 alone, in plaintext, at ADDR (kubelet probes; default off)",
        },
    ),
    (
        "--metrics-listen",
        {"metavar": "ADDR", "help": "serve Prometheus metrics over HTTP at ADDR/metrics (default off)"},
    ),
    (
        "--shutdown-grace",
        {
            "type": float,
            "metavar": "SECONDS",
            "help": "on SIGTERM, exit within SECONDS; calls in flight get all but the last one (default 5)",
        },
    ),
]
_UP_OPS = [
    ("--viewer-health-listen", {"metavar": "ADDR", "help": "the viewer's --health-listen (default off)"}),
    ("--viewer-metrics-listen", {"metavar": "ADDR", "help": "the viewer's --metrics-listen (default off)"}),
    ("--gateway-metrics-listen", {"metavar": "ADDR", "help": "the gateway's --metrics-listen (default off)"}),
]
_GATEWAY = [
    ("--conductor", {"metavar": "ADDR", "help": "the conductor to call (default 127.0.0.1:50051)"}),
    ("--viewer", {"metavar": "ADDR", "help": "the viewer to call (default 127.0.0.1:50052)"}),
    ("--ca-file", {"type": Path, "help": "call the services over TLS, trusting these roots (PEM)"}),
    ("--cert-file", {"type": Path, "help": "client certificate for the services' mutual TLS (PEM)"}),
    ("--key-file", {"type": Path, "help": "the private key of --cert-file (PEM)"}),
    ("--tls-server-name", {"metavar": "NAME", "help": "name expected in the services' certificates"}),
    ("--tls-cert-file", {"type": Path, "help": "serve HTTPS with this certificate chain (PEM)"}),
    ("--tls-key-file", {"type": Path, "help": "the private key of --tls-cert-file (PEM)"}),
    (
        "--insecure",
        {"action": "store_true", "help": "allow a non-loopback address before services needing no token"},
    ),
]
_OUTPUT = [
    ("--address-file", {"type": Path, "help": "write the addresses served, as JSON, once serving"}),
    ("--json", {"action": "store_true", "help": "print the addresses served as one JSON line"}),
]


def add_flags(parser: argparse.ArgumentParser, service: str) -> None:
    """The flags of ``baton conductor``, ``baton viewer``, ``baton gateway`` or ``baton up``."""
    if service == "gateway":
        parser.add_argument("--listen", help="HTTP address (default 127.0.0.1:8080)")
        gateway_ops = [op for op in _OPS if op[0] != "--health-listen"]  # HTTP: /healthz serves probes
        for flag, kwargs in [*_GATEWAY, *gateway_ops, *_OUTPUT]:
            parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]
        add_log_flags(parser, *_LOG_DEFAULTS[service])
        return
    if service in ("conductor", "up"):
        parser.add_argument("--listen", help="conductor address (default 127.0.0.1:50051)")
    if service == "viewer":
        parser.add_argument("--listen", help="viewer address (default 127.0.0.1:50052)")
    if service == "up":
        parser.add_argument("--viewer-listen", help="viewer address (default 127.0.0.1:50052)")
        parser.add_argument(
            "--gateway-listen", help="HTTP, SSE and dashboard address (default 127.0.0.1:8080; 'off': none)"
        )
    flags = (
        _COMMON + (_CONDUCTOR if service != "viewer" else []) + (_VIEWER if service != "conductor" else [])
    )
    ops = _OPS + (_UP_OPS if service == "up" else [])
    for flag, kwargs in [*flags, *ops, *_OUTPUT]:
        parser.add_argument(flag, **kwargs)  # type: ignore[arg-type]
    add_log_flags(parser, *_LOG_DEFAULTS[service])


# (level, format) by verb: `baton up` is run at a terminal and keeps it quiet
# (one line per RPC is at info); a lone service writes JSON lines for a collector.
_LOG_DEFAULTS = {
    "up": ("warning", "console"),
    "conductor": ("info", "json"),
    "viewer": ("info", "json"),
    "gateway": ("info", "json"),
}


def add_log_flags(parser: argparse.ArgumentParser, level: str, fmt: str) -> None:
    """``--log-level`` and ``--log-format`` with these defaults (``common.logs.configure`` takes them)."""
    parser.add_argument("--log-level", default=level, help=f"default {level}")
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=fmt,
        help=f"JSON lines (one per RPC and per job state change, at info) or plain text (default {fmt})",
    )


# Config fields both services take from the flags of the same names.
_SHARED = ["token_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file", "insecure", "shutdown_grace"]


def _fields(args: argparse.Namespace, names: list[str], **extra: Any) -> dict[str, Any]:
    found = {name: getattr(args, name, None) for name in names} | extra
    return {k: v for k, v in found.items() if v is not None and v is not False}


def _conductor_config(args: argparse.Namespace) -> Any:
    from baton.conductor.config import ConductorConfig

    names = ["home", "status_dir", "checkpoints_dir", "max_running", "heartbeat", "capacity",
             "backfill_window", "slurm", "slurm_partition", "slurm_account", "ray_address",
             "secrets_dir", "group", "retain_ended", "retain_max", "retain_checkpoints",
             *_SHARED]  # fmt: skip
    return ConductorConfig(
        **_fields(
            args,
            names,
            listen=args.listen,
            log_level=args.log_level,
            metrics_listen=args.metrics_listen,
            health_listen=args.health_listen,
        )
    )


def _viewer_config(args: argparse.Namespace) -> Any:
    from baton.viewer_api.config import ViewerConfig

    names = ["home", "status_dir", "checkpoints_dir", "watch", "poll_interval", "reconcile_interval",
             "stale_after", "index_cache", *_SHARED]  # fmt: skip
    if args.verb == "up":
        side = {"listen": args.viewer_listen, "metrics_listen": args.viewer_metrics_listen,
                "health_listen": args.viewer_health_listen}  # fmt: skip
    else:
        side = {"listen": args.listen, "metrics_listen": args.metrics_listen,
                "health_listen": args.health_listen}  # fmt: skip
    try:
        return ViewerConfig(**_fields(args, names, log_level=args.log_level, **side))
    except ValueError as exc:
        if args.verb != "up":
            raise
        # The viewer's side listeners have flags of their own under `baton up`.
        text = _config_problem(exc)
        for flag in ("--metrics-listen", "--health-listen"):
            text = text.replace(flag, "--viewer-" + flag.removeprefix("--"))
        raise ValueError(text) from None


def _gateway_config(args: argparse.Namespace, listen: str | None, **services: str) -> Any:
    from baton.client.connection import TlsSettings
    from baton.gateway.server import GatewayConfig

    tls = None
    if getattr(args, "ca_file", None) or getattr(args, "cert_file", None):
        tls = TlsSettings.from_files(args.ca_file, args.cert_file, args.key_file, args.tls_server_name)
    names = ["conductor", "viewer", "tls_cert_file", "tls_key_file", "insecure", "shutdown_grace"]
    # Under `baton up` --metrics-listen is the conductor's; the gateway's has a flag of its own.
    metrics = args.gateway_metrics_listen if args.verb == "up" else args.metrics_listen
    found = _fields(args, names, listen=listen, metrics_listen=metrics)
    found |= {k: v for k, v in services.items() if v}
    return GatewayConfig(backend_tls=tls, **found)


Starter = Callable[[], Awaitable[Any]]


async def _serve(starters: dict[str, Starter], args: argparse.Namespace, home: Path) -> None:
    """Start each service in order, announce them, and run until a signal; then stop them all."""
    running: list[Any] = []

    async def stop_all() -> None:
        # At once, not one after the other: together they must fit in one grace period.
        await asyncio.gather(*(service.stop() for service in running), return_exceptions=True)

    async with stop_signals() as stopping:
        try:
            for start in starters.values():
                running.append(await start())
        except BaseException:
            await stop_all()
            raise
        addresses = {name: r.address for name, r in zip(starters, running, strict=True)}
        side: dict[str, str] = {}
        for name, r in zip(starters, running, strict=True):
            prefix = f"{name}_" if args.verb == "up" and name != "conductor" else ""
            listed = r.addresses() if hasattr(r, "addresses") else {}
            side.update({prefix + k: v for k, v in listed.items() if k != "address"})
        document = json.dumps(addresses | side | {"home": str(home)})
        if args.address_file is not None:
            await asyncio.to_thread(write_atomic, args.address_file, document.encode())
        if args.json:
            print(document, flush=True)
        elif args.log_format == "json":
            # Stderr is a stream of JSON lines for a collector: no banner in it.
            log.info("serving", **addresses, **side, home=str(home))
        else:
            _announce(addresses, side, home)
        with reload_on_sighup([r.reload_credentials for r in running]):
            await until_signalled(stopping, stop_all)
    if args.log_format == "json":
        log.info("stopped")
    elif not args.json:
        print("baton: stopped", file=sys.stderr, flush=True)


def _announce(addresses: dict[str, str], side: dict[str, str], home: Path) -> None:
    env = {"conductor": "BATON_CONDUCTOR", "viewer": "BATON_VIEWER"}
    lines = ["baton: serving"]
    for name, address in addresses.items():
        hint = f"(export {env[name]}={address})" if name in env else f"(dashboard: http://{address}/)"
        lines.append(f"  {name:<10} {address}   {hint}")
    for name, address in side.items():
        what = "http://" + address + "/metrics" if name.endswith("metrics") else address + " (plaintext)"
        lines.append(f"  {name:<10} {what}")
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
    """``baton conductor``, ``baton viewer``, ``baton gateway`` or ``baton up``."""
    from baton.common.auth import CredentialsError
    from baton.common.logs import configure
    from baton.conductor.secrets import SecretsRefused
    from baton.conductor.server import HomeLocked
    from baton.gateway.server import GatewayRefused
    from baton.gateway.server import start as start_gateway

    configure(args.log_level, json=args.log_format == "json")
    home = Path.cwd()
    try:
        starters: dict[str, Starter] = {}
        if args.verb in ("conductor", "up"):
            from baton.conductor.server import start as start_conductor

            cconf = _conductor_config(args)
            home = cconf.home
            starters["conductor"] = lambda: start_conductor(cconf)
        if args.verb in ("viewer", "up"):
            from baton.viewer_api.server import start as start_viewer

            vconf = _viewer_config(args)
            home = vconf.home
            starters["viewer"] = lambda: start_viewer(vconf)
        if args.verb == "gateway":
            gconf = _gateway_config(args, args.listen)
            starters["gateway"] = lambda: start_gateway(gconf)
    except ValueError as exc:
        print(f"baton {args.verb}: {_config_problem(exc)}", file=sys.stderr)
        return exitcodes.USAGE
    try:
        if args.verb == "up" and args.gateway_listen != "off":
            _gateway_after(starters, args)
        asyncio.run(_serve(starters, args, home))
    except (HomeLocked, OSError, CredentialsError, SecretsRefused, GatewayRefused) as exc:
        print(f"baton {args.verb}: {exc}", file=sys.stderr)
        return exitcodes.FAILED
    return exitcodes.OK


def _gateway_after(starters: dict[str, Starter], args: argparse.Namespace) -> None:
    """``baton up``'s gateway, started once the conductor and viewer serve, pointed at them."""
    from baton.gateway.server import start as start_gateway

    start_conductor, start_viewer = starters["conductor"], starters["viewer"]
    addresses: dict[str, str] = {}

    async def conductor() -> Any:
        started = await start_conductor()
        addresses["conductor"] = started.address
        return started

    async def viewer() -> Any:
        started = await start_viewer()
        addresses["viewer"] = started.address
        return started

    async def gateway() -> Any:
        # `up` serves its own services over plaintext loopback or with its own TLS;
        # the gateway calls them at the addresses they got.
        config = _gateway_config(args, args.gateway_listen, **addresses)
        return await start_gateway(config)

    starters.update(conductor=conductor, viewer=viewer, gateway=gateway)
