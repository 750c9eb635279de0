"""The viewer's wiring: index, indexer, service and the gRPC server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import structlog
from grpc_health.v1 import health

from baton.common.auth import Authenticator, reload_on_sighup
from baton.common.rpc import add_service, build_server, stop_serving, stop_signals, until_signalled
from baton.v1 import viewer_pb2
from baton.viewer_api.config import ViewerConfig
from baton.viewer_api.index import Index
from baton.viewer_api.indexer import Indexer
from baton.viewer_api.service import ViewerService
from baton.viewer_api.servicer import ViewerServicer

log = structlog.get_logger(__name__)
SERVICE = viewer_pb2.DESCRIPTOR.services_by_name["Viewer"].full_name


@dataclass
class RunningViewer:
    config: ViewerConfig
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service: ViewerService
    indexer: Indexer
    auth: Authenticator | None = None

    @property
    def address(self) -> str:
        return f"{self.config.listen.rsplit(':', 1)[0]}:{self.port}"

    async def stop(self, grace: float = 2.0) -> None:
        """Say NOT_SERVING, then stop serving and indexing."""
        try:
            await stop_serving(self.server, self.health, grace)
        finally:
            await self.indexer.stop()
            self.service.close()

    async def reload_credentials(self) -> None:
        """Read the token file again (SIGHUP); calls in flight keep going."""
        if self.auth is not None:
            await asyncio.to_thread(self.auth.reload)


async def start(config: ViewerConfig) -> RunningViewer:
    assert config.status_dir is not None and config.checkpoints_dir is not None
    for event, detail in config.exposure_warnings():
        log.warning(event, detail=detail)
    auth = await asyncio.to_thread(config.authenticator)
    index = Index()
    indexer = Indexer(
        index,
        str(config.status_dir),
        str(config.checkpoints_dir),
        mode=config.watch,
        poll_interval=config.poll_interval,
        reconcile_interval=config.reconcile_interval,
        scan_workers=config.scan_workers,
    )
    await indexer.start()
    service = ViewerService(
        index, indexer, str(config.status_dir), str(config.checkpoints_dir),
        stale_after=config.stale_after, heartbeat=config.feed_heartbeat,
    )  # fmt: skip
    servicer = ViewerServicer(service)
    try:
        server, port, health_servicer = await build_server(
            lambda s: add_service(s, servicer, viewer_pb2.DESCRIPTOR.services_by_name["Viewer"]),
            [SERVICE],
            config.listen,
            auth,
            await asyncio.to_thread(config.server_credentials),
        )
    except BaseException:
        await indexer.stop()
        service.close()
        raise
    running = RunningViewer(config, server, port, health_servicer, service, indexer, auth)
    log.info(
        "viewer_serving",
        address=running.address,
        status_dir=str(config.status_dir),
        checkpoints_dir=str(config.checkpoints_dir),
        watch=config.watch,
    )
    return running


async def serve(config: ViewerConfig) -> None:
    """Run a viewer until SIGTERM or SIGINT."""
    async with stop_signals() as stopping:
        running = await start(config)
        with reload_on_sighup([running.reload_credentials]):
            await until_signalled(stopping, running.stop)
