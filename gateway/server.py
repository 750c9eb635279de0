"""``baton gateway``: an aiohttp server that answers HTTP by calling the services over gRPC.

It keeps no state: one gRPC channel to the conductor and one to the viewer,
the route table read from the protos, and the dashboard's static files. A
closed HTTP connection cancels its handler (aiohttp's handler cancellation),
which cancels the gRPC call or stream behind it; a reader that stops reading
holds the writer at aiohttp's send buffer, and HTTP/2 flow control then holds
the service, so a slow browser costs bounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from aiohttp import web
from google.protobuf import message

from baton.client.connection import TlsSettings, open_channel
from baton.common.errors import BatonError, Internal, NotFound, Unavailable, Unimplemented, invalid_field
from baton.common.metrics import MetricsEndpoint, serve_metrics
from baton.common.rpc import is_loopback
from baton.gateway import events, session, transcode
from baton.gateway.metrics import GatewayMetrics
from baton.gateway.openapi import openapi
from baton.gateway.routes import NoRoute, Route, Router, WrongMethod, routes_of
from baton.v1 import conductor_pb2, viewer_pb2

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# A SubmitJobRequest holds a spec of at most 1 MiB; JSON escaping can double it.
MAX_BODY_BYTES = 4 * 1024 * 1024
# How long a stream's first message may take before the response starts anyway
# (an error before then gets its own HTTP status instead of a 200 stream).
FIRST_MESSAGE_WAIT = 0.25
SERVICES = [
    ("conductor", conductor_pb2.DESCRIPTOR.services_by_name["Conductor"]),
    ("viewer", viewer_pb2.DESCRIPTOR.services_by_name["Viewer"]),
]
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
}


class GatewayRefused(ValueError):
    """The gateway will not start as configured (the message says why and what to change)."""


@dataclass(frozen=True)
class GatewayConfig:
    """Where the gateway listens and where the services are."""

    listen: str = "127.0.0.1:8080"
    conductor: str = "127.0.0.1:50051"
    viewer: str = "127.0.0.1:50052"
    # TLS to the services (None: plaintext).
    backend_tls: TlsSettings | None = None
    # TLS on the gateway's own listener.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # Allow a non-loopback listen address in front of services that answer anyone.
    insecure: bool = False
    # Deadline of a unary call.
    timeout: float = 30.0
    # Prometheus metrics at http://ADDR/metrics (None: off).
    metrics_listen: str | None = None
    # On SIGTERM: seconds open streams and calls get before the gateway exits.
    shutdown_grace: float = 5.0
    static_dir: Path = field(default=STATIC_DIR)


class Gateway:
    """A running gateway (``start``): its address, and how to stop it."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.router = Router(routes_of(SERVICES))
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], Any] = {}
        self._ssl: ssl.SSLContext | None = None
        self._runner: web.AppRunner | None = None
        self.address = ""
        self._openapi = openapi(self.router.routes)
        self.metrics = GatewayMetrics()
        self._metrics_endpoint: MetricsEndpoint | None = None
        # The handlers of open event streams, ended with a goodbye at stop.
        self._streams: set[asyncio.Task[Any]] = set()
        self._stopping = False

    @property
    def secure(self) -> bool:
        return self._ssl is not None

    def channel(self, backend: str) -> grpc.aio.Channel:
        if backend not in self._channels:
            address = self.config.conductor if backend == "conductor" else self.config.viewer
            self._channels[backend] = open_channel(address, self.config.backend_tls)
        return self._channels[backend]

    def _multicallable(self, route: Route) -> Any:
        key = (route.backend, route.grpc_path)
        if key not in self._calls:
            channel = self.channel(route.backend)
            make = channel.unary_stream if route.streaming else channel.unary_unary
            self._calls[key] = make(
                route.grpc_path,
                request_serializer=_serialize,
                response_deserializer=route.response_class.FromString,
            )
        return self._calls[key]

    async def conductor_info(
        self, token: str | None, **kwargs: Any
    ) -> conductor_pb2.GetConductorInfoResponse:
        """GetConductorInfo as ``token``'s holder (who they are: ``caller``)."""
        call = self.channel("conductor").unary_unary(
            "/baton.v1.Conductor/GetConductorInfo",
            request_serializer=_serialize,
            response_deserializer=conductor_pb2.GetConductorInfoResponse.FromString,
        )
        kwargs.setdefault("timeout", self.config.timeout)
        answer: conductor_pb2.GetConductorInfoResponse = await call(
            conductor_pb2.GetConductorInfoRequest(), metadata=session.metadata(token), **kwargs
        )
        return answer

    # -- the app -----------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._observe, self._headers])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/openapi.json", self._openapi_json)
        app.router.add_post("/login", self._login)
        app.router.add_post("/logout", self._logout)
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", self.config.static_dir, append_version=False)
        app.router.add_route("*", "/v1/{tail:.*}", self._api)
        return app

    @web.middleware
    async def _observe(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """One log line and one count per request, labelled by route template, never by path."""
        started = time.perf_counter()
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            # A fault of the gateway's own: INTERNAL with a Status body, never a bare 500 page.
            log.exception("gateway_request_failed", path=request.path[:200])
            answer = _error(*transcode.status_of_error(Internal("the gateway failed to answer; see its log")))
            if request.get("streaming_started"):
                raise
            return answer
        finally:
            elapsed = time.perf_counter() - started
            route = request.get("route", "static" if request.path.startswith("/static/") else request.path)
            if route not in _KNOWN_PATHS and not route.startswith("/v1/"):
                route = "other"
            labels = (route, request.method, str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.duration.labels(*labels).observe(elapsed)
            log.info("http", method=request.method, route=route, path=request.path[:200], status=status,
                     duration_ms=round(elapsed * 1000, 2), peer=request.remote)  # fmt: skip

    @web.middleware
    async def _headers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if not response.prepared:
            for name, value in _SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if request.path.startswith("/static/"):
                # The dashboard's modules import each other: after an upgrade a
                # browser must not mix cached old modules with new ones. It
                # revalidates each (a 304 from the ETag when unchanged).
                response.headers.setdefault("Cache-Control", "no-cache")
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(self.config.static_dir / "index.html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        # Liveness: the gateway answers. Whether the services do is /readyz.
        return web.json_response({"status": "SERVING"})

    async def _readyz(self, request: web.Request) -> web.Response:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        states: dict[str, str] = {}
        for backend, _ in SERVICES:
            stub = health_pb2_grpc.HealthStub(self.channel(backend))
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                states[backend] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.aio.AioRpcError as exc:
                states[backend] = exc.code().name
        ready = all(s == "SERVING" for s in states.values())
        return web.json_response({"status": "SERVING" if ready else "NOT_SERVING", **states},
                                 status=200 if ready else 503)  # fmt: skip

    async def _openapi_json(self, request: web.Request) -> web.Response:
        return web.json_response(self._openapi)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        """Check a token against the conductor, then keep it in the session cookie."""
        try:
            session.check_origin(request)
            form = await request.post()
            token = str(form.get("token", "")).strip()
            if not token:
                raise invalid_field("token", "required")
            info = await self.conductor_info(token)
        except BatonError as err:
            return _error(*transcode.status_of_error(err))
        except grpc.aio.AioRpcError as err:
            return _error(*transcode.status_of_rpc_error(err))
        response = web.json_response({"caller": transcode.to_json(info.caller)})
        session.set_session(response, token, self.secure)
        return response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        try:
            session.check_origin(request)
        except BatonError as err:
            return _error(*transcode.status_of_error(err))
        response = web.json_response({})
        session.clear_session(response, self.secure)
        return response

    async def _api(self, request: web.Request) -> web.StreamResponse:
        try:
            route, bound = self.router.find(request.method, request.raw_path.split("?", 1)[0])
            request["route"] = route.template.text
            token, from_cookie = session.token_of(request)
            if from_cookie:
                session.check_origin(request)
            body = await request.read() if request.can_read_body else None
            query = {k: request.query.getall(k) for k in request.query if k not in _GATEWAY_PARAMS}
            grpc_request = transcode.build_request(route, bound, query, body)
            if route.streaming:
                return await self._stream(request, route, grpc_request, token)
            answer = await self._multicallable(route)(
                grpc_request, metadata=session.metadata(token), timeout=self.config.timeout
            )
        except NoRoute:
            return _error(*transcode.status_of_error(
                NotFound(f"{request.method} {request.path}: no such route (see /openapi.json)",
                         reason="ROUTE_NOT_FOUND")))  # fmt: skip
        except WrongMethod as exc:
            response = _error(405, transcode.status_of_error(Unimplemented(
                f"{request.method} {request.path}: not allowed; allowed: {', '.join(exc.allowed)}",
                reason="METHOD_NOT_ALLOWED"))[1])  # fmt: skip
            response.headers["Allow"] = ", ".join(exc.allowed)
            return response
        except BatonError as err:
            return _error(*transcode.status_of_error(err))
        except grpc.aio.AioRpcError as err:
            return _error(*transcode.status_of_rpc_error(err))
        return web.json_response(transcode.to_json(answer), dumps=_compact)

    async def _stream(
        self, request: web.Request, route: Route, grpc_request: message.Message, token: str | None
    ) -> web.StreamResponse:
        """A server-streaming RPC as SSE, NDJSON, or (for logs, ``format=text``) the bytes themselves."""
        sse = events.CONTENT_TYPE in request.headers.get("Accept", "")
        fmt = request.query.get("format", "sse" if sse else "json")
        if fmt not in ("sse", "json", "text") or (fmt == "text" and not _is_log(route)):
            raise invalid_field("format", "must be sse, json, or (for logs) text")
        last_event_id = request.headers.get("Last-Event-ID")
        if last_event_id and fmt == "sse":
            events.resume(grpc_request, last_event_id)
        call = self._multicallable(route)(grpc_request, metadata=session.metadata(token))
        first = asyncio.ensure_future(call.read())
        response: web.StreamResponse | None = None
        framer = events.Framer()
        label = route.template.text
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        self.metrics.open_streams.labels(label).inc()
        try:
            await asyncio.wait({first}, timeout=FIRST_MESSAGE_WAIT)
            if first.done():
                first.result()  # an error before any message gets an HTTP status of its own
            response = web.StreamResponse(headers=_stream_headers(fmt))
            request["streaming_started"] = True  # headers sent: too late for an error status
            await response.prepare(request)
            async for msg in _messages(call, first):
                self.metrics.events.labels(label).inc()
                if await _write(response, fmt, framer, msg):
                    break
        except grpc.aio.AioRpcError as err:
            if response is None:
                raise
            with contextlib.suppress(ConnectionError):
                await _write_error(response, fmt, transcode.status_of_rpc_error(err)[1])
        except asyncio.CancelledError:
            if not self._stopping or response is None:
                raise
            # Stopping: the reader hears why, and an EventSource reconnects to the next gateway.
            goodbye = Unavailable("the gateway is shutting down", reason="SHUTTING_DOWN")
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                status = transcode.status_of_error(goodbye)[1]
                await asyncio.wait_for(_write_error(response, fmt, status), 1.0)
        finally:
            self._streams.discard(task)
            self.metrics.open_streams.labels(label).dec()
            first.cancel()
            call.cancel()
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def stop(self) -> None:
        """Stop listening; open streams end with an UNAVAILABLE goodbye; calls get the grace period."""
        self._stopping = True
        for task in list(self._streams):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        for channel in self._channels.values():
            await channel.close()
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.close()

    def addresses(self) -> dict[str, str]:
        """The side listeners' addresses (for the address file)."""
        return {"metrics": self._metrics_endpoint.address} if self._metrics_endpoint else {}

    async def reload_credentials(self) -> None:
        """Re-read the listener's certificate and key (SIGHUP): new connections use them."""
        if self._ssl is not None and self.config.tls_cert_file and self.config.tls_key_file:
            cert, key = self.config.tls_cert_file, self.config.tls_key_file
            await asyncio.to_thread(self._ssl.load_cert_chain, cert, key)


# Paths of the gateway's own (not annotated) routes, labels as they are.
_KNOWN_PATHS = ("/", "/healthz", "/readyz", "/openapi.json", "/login", "/logout", "static")
# Query parameters the gateway reads itself rather than passing to the RPC.
_GATEWAY_PARAMS = ("format",)


def _is_log(route: Route) -> bool:
    return route.method.output_type.full_name == "baton.v1.LogChunk"


def _stream_headers(fmt: str) -> dict[str, str]:
    content_type = {"sse": events.CONTENT_TYPE, "json": "application/x-ndjson",
                    "text": "text/plain; charset=utf-8"}[fmt]  # fmt: skip
    # no-transform and X-Accel-Buffering keep proxies from holding events back.
    return {"Content-Type": content_type, "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no", **_SECURITY_HEADERS}  # fmt: skip


async def _messages(call: Any, first: asyncio.Future[Any]) -> AsyncIterator[message.Message]:
    msg = await first
    while msg is not grpc.aio.EOF:
        yield msg
        msg = await call.read()


async def _write(
    response: web.StreamResponse, fmt: str, framer: events.Framer, msg: message.Message
) -> bool:
    """Write one message; True once the stream's last event is out."""
    if fmt == "sse":
        for chunk in framer.events(msg):
            await response.write(chunk)
        return framer.done
    if fmt == "text":
        data = getattr(msg, "data", b"")
        if data:
            await response.write(data)
        return bool(getattr(msg, "complete", False))
    await response.write(transcode.dumps(msg).encode() + b"\n")
    return False


async def _write_error(response: web.StreamResponse, fmt: str, body: Any) -> None:
    text = transcode.status_json(body).decode()
    if fmt == "sse":
        await response.write(events.frame(text, event="rpc-error"))
    elif fmt == "json":
        await response.write(b'{"error":' + text.encode() + b"}\n")


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _error(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=transcode.status_json(body), content_type="application/json")


def _ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    if config.tls_cert_file is None and config.tls_key_file is None:
        return None
    if config.tls_cert_file is None or config.tls_key_file is None:
        raise GatewayRefused("--tls-cert-file and --tls-key-file go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


async def _check_backends_authenticate(gateway: Gateway, wait: float = 60.0) -> None:
    """Refuse to publish, off loopback, a conductor that answers callers with no token."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            await gateway.conductor_info(None, timeout=5.0, wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return
            if loop.time() < deadline:
                await asyncio.sleep(1.0)
                continue
            raise GatewayRefused(
                f"cannot tell whether the conductor at {gateway.config.conductor} requires a token "
                f"({err.code().name}); a gateway on {gateway.config.listen} needs one that does "
                "(or --insecure)"
            ) from None
        raise GatewayRefused(
            f"the conductor at {gateway.config.conductor} answers callers without a token: a gateway "
            f"on the non-loopback address {gateway.config.listen} would open it to the network. "
            "Give the conductor and viewer --token-file, or pass --insecure."
        )


async def start(config: GatewayConfig) -> Gateway:
    """Start serving ``config.listen``; the returned Gateway knows the address it got."""
    gateway = Gateway(config)
    gateway._ssl = await asyncio.to_thread(_ssl_context, config)  # reads the key files
    if not is_loopback(config.listen) and not config.insecure:
        await _check_backends_authenticate(gateway)
    host, _, port = config.listen.rpartition(":")
    host = host.strip("[]")
    if config.metrics_listen:
        gateway._metrics_endpoint = await serve_metrics(gateway.metrics.registry, config.metrics_listen)
    runner = web.AppRunner(
        gateway.app(), handler_cancellation=True, access_log=None, shutdown_timeout=config.shutdown_grace
    )
    await runner.setup()
    site = web.TCPSite(runner, host or None, int(port), ssl_context=gateway._ssl)
    await site.start()
    gateway._runner = runner
    bound = runner.addresses[0]
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    gateway.address = f"{shown}:{bound[1]}"
    log.info("gateway serving", address=gateway.address, tls=gateway.secure)
    return gateway


def _serialize(msg: message.Message) -> bytes:
    return msg.SerializeToString()
