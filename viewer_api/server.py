"""The viewer's wiring: index, indexer, service and the gRPC server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from baton.common.auth import Authenticator, reload_on_sighup
from baton.common.rpc import add_service, stop_signals, until_signalled
from baton.common.serving import Listeners, ServedBy, start_listeners
from baton.v1 import viewer_pb2
from baton.viewer_api.config import ViewerConfig
from baton.viewer_api.index import Index
from baton.viewer_api.indexer import Indexer
from baton.viewer_api.metrics import ViewerMetrics
from baton.viewer_api.service import ViewerService
from baton.viewer_api.servicer import ViewerServicer

log = structlog.get_logger(__name__)
SERVICE = viewer_pb2.DESCRIPTOR.services_by_name["Viewer"].full_name


@dataclass
class RunningViewer(ServedBy):
    config: ViewerConfig
    listeners: Listeners
    service: ViewerService
    indexer: Indexer
    auth: Authenticator | None = None
    metrics: ViewerMetrics | None = None

    async def stop(self, grace: float | None = None) -> None:
        """The graceful stop (``common.serving``), then stop indexing.

        ``grace``: seconds for calls in flight (default: the config's shutdown_grace).
        """
        try:
            await self.listeners.stop(self.config.shutdown_grace if grace is None else grace)
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
    # Counted only when served: without a listener nobody could read them.
    metrics = ViewerMetrics() if config.metrics_listen is not None else None
    index = Index()
    indexer = Indexer(
        index,
        str(config.status_dir),
        str(config.checkpoints_dir),
        mode=config.watch,
        poll_interval=config.poll_interval,
        reconcile_interval=config.reconcile_interval,
        scan_workers=config.scan_workers,
        observer=metrics,
        index_cache=config.index_cache_path(),
    )
    if metrics is not None:
        metrics.watch(index, indexer)
    await indexer.start()
    service = ViewerService(
        index, indexer, str(config.status_dir), str(config.checkpoints_dir),
        stale_after=config.stale_after, heartbeat=config.feed_heartbeat, metrics=metrics,
    )  # fmt: skip
    servicer = ViewerServicer(service)
    try:
        listeners = await start_listeners(
            lambda s: add_service(s, servicer, viewer_pb2.DESCRIPTOR.services_by_name["Viewer"]),
            [SERVICE],
            listen=config.listen,
            auth=auth,
            credentials=await asyncio.to_thread(config.server_credentials),
            metrics=metrics,
            metrics_listen=config.metrics_listen,
            health_listen=config.health_listen,
        )
    except BaseException:
        await indexer.stop()
        service.close()
        raise
    running = RunningViewer(config, listeners, service, indexer, auth, metrics)
    log.info(
        "viewer_serving",
        **running.addresses(),
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
