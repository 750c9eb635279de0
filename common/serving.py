"""A service's listeners, started together and stopped in order.

Every Baton service serves its gRPC API (plaintext or TLS) and may also
serve, on request, a plaintext health listener (``--health-listen``: only
``grpc.health.v1.Health``, for kubelet probes) and Prometheus metrics
(``--metrics-listen``). ``start_listeners`` starts them; ``Listeners.stop``
is the graceful stop every service uses:

1. health says NOT_SERVING on both listeners at once, so load balancers and
   probes turn away;
2. new calls are refused with UNAVAILABLE, and every open stream ends with
   UNAVAILABLE and a message saying the server is shutting down;
3. the server stops, giving calls in flight what is left of the grace;
4. the health and metrics listeners close last.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from baton.common.calls import CallTracker
from baton.common.metrics import MetricsEndpoint, ServiceMetrics, serve_metrics
from baton.common.rpc import build_health_server, build_server

DEFAULT_SHUTDOWN_GRACE = 5.0
# Of the grace, what stopping the rest and leaving the process takes (measured:
# about half a second): calls in flight get the remainder, or half the grace at least.
EXIT_RESERVE_SECONDS = 1.0
# After NOT_SERVING and before streams are ended: time for health watchers to hear it.
HEALTH_NOTICE_SECONDS = 0.05


def _host_port(listen: str, port: int) -> str:
    return f"{listen.rsplit(':', 1)[0]}:{port}"


@dataclass
class Listeners:
    """The running listeners of one service (see the module docstring)."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    tracker: CallTracker
    listen: str
    health_server: grpc.aio.Server | None = None
    health_address: str | None = None
    metrics_endpoint: MetricsEndpoint | None = None

    @property
    def address(self) -> str:
        return _host_port(self.listen, self.port)

    @property
    def metrics_address(self) -> str | None:
        return self.metrics_endpoint.address if self.metrics_endpoint is not None else None

    async def stop(self, grace: float) -> None:
        """The graceful stop: NOT_SERVING, refuse and end calls, stop within ``grace`` seconds.

        Calls in flight get the grace less ``EXIT_RESERVE_SECONDS``, so that the
        process, not only the server, is gone within ``grace``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace - EXIT_RESERVE_SECONDS, grace / 2)
        try:
            # set() is ignored from now on: nothing says SERVING again.
            await self.health.enter_graceful_shutdown()
            if self.tracker.health_watches:
                await asyncio.sleep(min(HEALTH_NOTICE_SECONDS, grace))
            await self.tracker.drain(deadline - loop.time())
            await self.server.stop(max(deadline - loop.time(), 0.0))
        finally:
            await self.close_side_listeners()

    async def close_side_listeners(self) -> None:
        if self.health_server is not None:
            with contextlib.suppress(Exception):
                await self.health_server.stop(0)
        if self.metrics_endpoint is not None:
            with contextlib.suppress(Exception):
                await self.metrics_endpoint.close()


async def start_listeners(
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    listen: str,
    auth: grpc.aio.ServerInterceptor | None,
    credentials: grpc.ServerCredentials | None,
    metrics: ServiceMetrics | None,
    metrics_listen: str | None,
    health_listen: str | None,
) -> Listeners:
    """Start the gRPC server, then the health listener and the metrics listener when asked for.

    ``metrics`` is counted whether or not it is served here (None: nothing counted).
    """
    tracker = CallTracker(metrics)
    server, port, health_servicer = await build_server(
        register, service_names, listen, auth, credentials, tracker
    )
    running = Listeners(server, port, health_servicer, tracker, listen)
    try:
        if health_listen is not None:
            running.health_server, health_port = await build_health_server(
                health_servicer, health_listen, tracker
            )
            running.health_address = _host_port(health_listen, health_port)
        if metrics_listen is not None and metrics is not None:
            running.metrics_endpoint = await serve_metrics(metrics.registry, metrics_listen)
    except BaseException:
        await running.close_side_listeners()
        await server.stop(0)
        raise
    return running
