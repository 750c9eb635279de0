"""Prometheus metrics: what every gRPC service of Baton exposes, and the HTTP listener.

Each service owns a ``CollectorRegistry`` of its own (never the library's
global one), so two services in one process (``baton up``) keep their series
apart; each is served by its own listener (``serve_metrics``). The gRPC
series follow the names that go-grpc-prometheus made usual
(``grpc_server_handled_total`` and friends), so stock dashboards work; ours
start with ``baton_``. No label takes a value that grows without bound:
methods come from the services' descriptors (a call to an unknown method is
never counted under its name), codes and states from their enums.

``ServiceMetrics`` holds what any gRPC service has; the conductor
(``conductor.metrics``) and the viewer (``viewer_api.metrics``) add theirs.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

# A unary call takes about a millisecond; a stream lives for hours.
RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0,
)  # fmt: skip
# Filesystem and SQLite work: a commit with its fsync, a scan of a tree.
IO_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

_GRPC = ("grpc_service", "grpc_method", "grpc_type")


class ServiceMetrics:
    """The series every gRPC service of Baton has, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", _GRPC, registry=r)
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code (a stream counts when it ends).",
            (*_GRPC, "grpc_code"),
            registry=r,
        )
        self.handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream's whole life).",
            (*_GRPC, "grpc_code"),
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self.open_streams = Gauge(
            "baton_open_streams",
            "Server-streaming RPCs open now (StreamLogs, WatchJobs, health Watch), by method.",
            ("grpc_service", "grpc_method"),
            registry=r,
        )
        self.log_bytes = Counter(
            "baton_log_streamed_bytes",
            "Bytes of job logs sent by StreamLogs.",
            registry=r,
        )


def split_address(address: str, flag: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) as (host, port); ValueError naming ``flag`` when it is not one."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} {address[:200]!r}: give HOST:PORT (port 0 picks a free one)")
    return host, int(port)


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` listener: plain HTTP in a thread of its own, off the event loop."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening (shutdown waits for the serving thread's next poll: off the loop)."""
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


async def serve_metrics(
    registry: CollectorRegistry, address: str, flag: str = "--metrics-listen"
) -> MetricsEndpoint:
    """Serve ``registry`` as Prometheus text at ``http://ADDRESS/metrics`` (port 0: a free one).

    prometheus_client's server runs in a daemon thread and answers any path;
    a scrape reads the metrics under their own locks, never the event loop's state.
    """
    host, port = split_address(address, flag)
    server, thread = await asyncio.to_thread(start_http_server, port, host, registry)
    return MetricsEndpoint(host, server.server_port, server, thread)


def code_name(code: grpc.StatusCode | None) -> str:
    """A status code as its name (OK, UNAVAILABLE), the label value gRPC dashboards expect."""
    return code.name if code is not None else "OK"
