"""The gateway's Prometheus series: HTTP requests by route, and open event streams.

Routes are the protos' path templates (``/v1/jobs/{job_id}``), never a
request's own path, so no label grows with the number of jobs. Served on
``--metrics-listen`` by the same listener the services use.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from baton.common.metrics import RPC_BUCKETS

_REQUEST = ("route", "http_method")


class GatewayMetrics:
    """The series of one gateway, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "baton_http_requests_total", "HTTP requests answered, by route and status.",
            (*_REQUEST, "http_status"), registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "baton_http_request_duration_seconds",
            "Time from a request to its answer (an event stream's whole life).",
            (*_REQUEST, "http_status"), buckets=RPC_BUCKETS, registry=r,
        )  # fmt: skip
        self.open_streams = Gauge(
            "baton_http_open_streams", "Event streams (SSE, NDJSON, text) open now, by route.",
            ("route",), registry=r,
        )  # fmt: skip
        self.events = Counter(
            "baton_http_stream_events_total", "Messages sent down event streams, by route.",
            ("route",), registry=r,
        )  # fmt: skip
