"""The conductor's wiring: storage, executors, lifecycle and the gRPC server.

``start`` builds everything and returns a running conductor (tests use it
in-process on port 0); ``serve`` runs one until SIGTERM or SIGINT. Jobs keep
running when the conductor stops; the next one re-attaches to them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf import timestamp_pb2

from baton.common.auth import Authenticator, reload_on_sighup
from baton.common.jobfile import write_atomic
from baton.common.layout import Layout
from baton.common.modes import STATE_FILE_MODE, group_id, prepare_root, prepare_state_dir, restrict_umask
from baton.common.rpc import add_service, stop_signals, until_signalled
from baton.common.serving import Listeners, ServedBy, start_listeners
from baton.conductor.capacity import detect_capacity
from baton.conductor.config import ConductorConfig
from baton.conductor.executors import ExecutorSettings, make_executors
from baton.conductor.feeds import Feeds
from baton.conductor.lifecycle import Lifecycle
from baton.conductor.metrics import ConductorMetrics
from baton.conductor.publisher import Publisher
from baton.conductor.registry import Registry, make_registry
from baton.conductor.retention import RetentionPolicy
from baton.conductor.secrets import SecretStore
from baton.conductor.servicer import ConductorServicer
from baton.v1 import conductor_pb2

log = structlog.get_logger(__name__)
SERVICE = conductor_pb2.DESCRIPTOR.services_by_name["Conductor"].full_name


class HomeLocked(RuntimeError):
    """Another conductor already runs on this home, or on its status or checkpoint directory."""


def _lock_home(state_dir: Path) -> int:
    prepare_state_dir(state_dir)
    fd = os.open(state_dir / "conductor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise HomeLocked(f"another conductor (pid {holder}) is running on {state_dir.parent}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _lock_trees(trees: dict[str, Path]) -> list[int]:
    """Hold the status and checkpoint directories as the home is held (blocking).

    Two conductors with different homes writing one tree would publish over
    each other's runs. The lock is a flock on the directory itself, so it
    leaves nothing in the tree for the viewer to index; it goes with the
    process, as the home's does. A filesystem that cannot lock a directory
    (some NFS) is served unlocked, with a warning.
    """
    fds: list[int] = []
    seen: set[Path] = set()
    try:
        for what, path in trees.items():
            path = path.resolve()
            if path in seen:  # one directory for both trees: one lock (flock is per open file)
                continue
            seen.add(path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise HomeLocked(
                    f"another conductor (with another home) already uses {path} as its {what} directory; "
                    "each conductor needs its own"
                ) from None
            except OSError as exc:
                os.close(fd)
                log.warning("tree_lock_unavailable", directory=str(path), error=exc.strerror)
                continue
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@dataclass
class RunningConductor(ServedBy):
    config: ConductorConfig
    listeners: Listeners
    lifecycle: Lifecycle
    feeds: Feeds
    publisher: Publisher
    registry: Registry
    lock_fd: int
    tree_fds: list[int]
    auth: Authenticator | None = None
    metrics: ConductorMetrics | None = None

    async def stop(self, grace: float | None = None) -> None:
        """The graceful stop (``common.serving``), then stop supervising; running jobs are left running.

        ``grace``: seconds for calls in flight (default: the config's shutdown_grace).
        """
        try:
            await self.listeners.stop(self.config.shutdown_grace if grace is None else grace)
        finally:
            self.feeds.close()
            await self.lifecycle.stop()
            await self.registry.close()
            await asyncio.to_thread(self.publisher.close)
            for fd in self.tree_fds:
                os.close(fd)
            os.close(self.lock_fd)

    async def reload_credentials(self) -> None:
        """Read the token file again (SIGHUP); calls in flight keep going."""
        if self.auth is not None:
            await asyncio.to_thread(self.auth.reload)


async def start(config: ConductorConfig) -> RunningConductor:
    assert config.status_dir is not None and config.checkpoints_dir is not None
    # Before anything is made: nothing the conductor or its jobs write is world-readable.
    restrict_umask()
    lock_fd = await asyncio.to_thread(_lock_home, config.state_dir)
    tree_fds: list[int] = []
    try:
        for event, detail in config.exposure_warnings():
            log.warning(event, detail=detail)
        auth = await asyncio.to_thread(config.authenticator)
        secrets = await asyncio.to_thread(SecretStore.open, config.secrets_dir)
        credentials = await asyncio.to_thread(config.server_credentials)
        layout = Layout.under(config.status_dir, config.checkpoints_dir)
        gid = group_id(config.group) if config.group is not None else None
        await asyncio.to_thread(prepare_root, layout.status_dir, gid)
        await asyncio.to_thread(prepare_root, layout.checkpoints_dir, gid)
        tree_fds = await asyncio.to_thread(
            _lock_trees, {"status": layout.status_dir, "checkpoints": layout.checkpoints_dir}
        )
        # Counted only when served: without a listener nobody could read them.
        metrics = ConductorMetrics() if config.metrics_listen is not None else None
        registry = make_registry(config.state_dir / "registry.db")
        if metrics is not None:
            registry.on_commit = metrics.committed
        publisher = Publisher(layout.status_dir, checkpoints_root=layout.checkpoints_dir)
        # Detection reads /proc and may run nvidia-smi: not on the event loop.
        capacity = await asyncio.to_thread(detect_capacity, config.capacity)
        log.info("local_capacity", capacity=capacity.describe())
        lifecycle = Lifecycle(
            registry,
            make_executors(
                ExecutorSettings(
                    state_dir=config.state_dir,
                    capacity=capacity,
                    slurm=config.slurm,
                    slurm_partition=config.slurm_partition,
                    slurm_account=config.slurm_account,
                    ray_address=config.ray_address,
                )
            ),
            layout,
            publisher,
            max_running=config.max_running,
            heartbeat_interval=config.heartbeat,
            backfill_window=config.backfill_window,
            secrets=secrets,
            retention=RetentionPolicy(
                config.retain_ended, config.retain_max, config.retain_checkpoints, config.retain_interval
            ),
            observer=metrics,
        )
        await lifecycle.start()
        started = timestamp_pb2.Timestamp()
        started.GetCurrentTime()
        feeds = Feeds(lifecycle, registry, heartbeat=config.feed_heartbeat, metrics=metrics)
        servicer = ConductorServicer(
            lifecycle, feeds, started, str(layout.status_dir), str(layout.checkpoints_dir)
        )
        listeners = await start_listeners(
            lambda s: add_service(s, servicer, conductor_pb2.DESCRIPTOR.services_by_name["Conductor"]),
            [SERVICE],
            listen=config.listen,
            auth=auth,
            credentials=credentials,
            metrics=metrics,
            metrics_listen=config.metrics_listen,
            health_listen=config.health_listen,
        )
    except BaseException:
        for fd in tree_fds:
            os.close(fd)
        os.close(lock_fd)
        raise
    running = RunningConductor(
        config, listeners, lifecycle, feeds, publisher, registry, lock_fd, tree_fds, auth, metrics
    )
    info = {**running.addresses(), "pid": os.getpid()}
    await asyncio.to_thread(
        write_atomic, config.state_dir / "conductor.json", json.dumps(info).encode(), mode=STATE_FILE_MODE
    )
    log.info(
        "conductor_serving",
        **running.addresses(),
        home=str(config.home),
        status_dir=str(layout.status_dir),
        max_running=config.max_running,
    )
    return running


async def serve(config: ConductorConfig) -> None:
    """Run a conductor until SIGTERM or SIGINT; its jobs keep running."""
    async with stop_signals() as stopping:
        running = await start(config)
        with reload_on_sighup([running.reload_credentials]):
            await until_signalled(stopping, running.stop)
