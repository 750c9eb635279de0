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

import grpc
import structlog
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health

from baton.common.jobfile import write_atomic
from baton.common.layout import Layout
from baton.common.rpc import add_service, build_server, stop_serving, stop_signals, until_signalled
from baton.conductor.config import ConductorConfig
from baton.conductor.executors import ExecutorSettings, make_executors
from baton.conductor.feeds import Feeds
from baton.conductor.lifecycle import Lifecycle
from baton.conductor.publisher import Publisher
from baton.conductor.registry import SqliteRegistry
from baton.conductor.servicer import ConductorServicer
from baton.v1 import conductor_pb2

log = structlog.get_logger(__name__)
SERVICE = conductor_pb2.DESCRIPTOR.services_by_name["Conductor"].full_name


class HomeLocked(RuntimeError):
    """Another conductor already runs on this home."""


def _lock_home(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / "conductor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise HomeLocked(f"another conductor (pid {holder}) is running on {state_dir.parent}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


@dataclass
class RunningConductor:
    config: ConductorConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    lifecycle: Lifecycle
    feeds: Feeds
    publisher: Publisher
    registry: SqliteRegistry
    lock_fd: int

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Say NOT_SERVING, stop serving and supervising; running jobs are left running."""
        try:
            await stop_serving(self.server, self.health, grace)
        finally:
            self.feeds.close()
            await self.lifecycle.stop()
            await self.registry.close()
            await asyncio.to_thread(self.publisher.close)
            os.close(self.lock_fd)


async def start(config: ConductorConfig) -> RunningConductor:
    assert config.status_dir is not None and config.checkpoints_dir is not None
    lock_fd = await asyncio.to_thread(_lock_home, config.state_dir)
    try:
        token = config.token()
        credentials = await asyncio.to_thread(config.server_credentials)
        layout = Layout.under(config.status_dir, config.checkpoints_dir)
        await asyncio.to_thread(layout.status_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(layout.checkpoints_dir.mkdir, parents=True, exist_ok=True)
        registry = SqliteRegistry(config.state_dir / "registry.db")
        publisher = Publisher()
        lifecycle = Lifecycle(
            registry,
            make_executors(
                ExecutorSettings(
                    state_dir=config.state_dir,
                    capacity=config.capacity,
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
        )
        await lifecycle.start()
        started = timestamp_pb2.Timestamp()
        started.GetCurrentTime()
        feeds = Feeds(lifecycle, registry, heartbeat=config.feed_heartbeat)
        servicer = ConductorServicer(
            lifecycle, feeds, started, str(layout.status_dir), str(layout.checkpoints_dir)
        )
        server, port, health_servicer = await build_server(
            lambda s: add_service(s, servicer, conductor_pb2.DESCRIPTOR.services_by_name["Conductor"]),
            [SERVICE],
            config.listen,
            token,
            credentials,
        )
    except BaseException:
        os.close(lock_fd)
        raise
    running = RunningConductor(
        config, server, port, health_servicer, lifecycle, feeds, publisher, registry, lock_fd
    )
    info = {"address": running.address, "pid": os.getpid()}
    await asyncio.to_thread(write_atomic, config.state_dir / "conductor.json", json.dumps(info).encode())
    log.info(
        "conductor_serving",
        address=running.address,
        home=str(config.home),
        status_dir=str(layout.status_dir),
        max_running=config.max_running,
    )
    return running


async def serve(config: ConductorConfig) -> None:
    """Run a conductor until SIGTERM or SIGINT; its jobs keep running."""
    async with stop_signals() as stopping:
        running = await start(config)
        await until_signalled(stopping, running.stop)
