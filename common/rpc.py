"""gRPC plumbing both servers share: error translation, request logging,
health and reflection, and a server that stops cleanly.

Servicers raise domain errors (``common.errors``); ``translate_errors`` turns
them into status codes with rich details, so no servicer picks a code itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import ipaddress
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from baton.common.errors import BatonError, Internal, grpc_status, invalid_field

log = structlog.get_logger(__name__)

T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext, err: BatonError) -> None:
    status = grpc_status(err)
    await context.abort(status.code, status.details, status.trailing_metadata)


def translate_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (unary or server-streaming) to map domain errors."""
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in fn(self, request, context):
                    yield item
            except BatonError as err:
                await _abort(context, err)
            except Exception as exc:
                await _abort(context, _internal(exc))

        return stream

    @functools.wraps(fn)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except BatonError as err:
            await _abort(context, err)
        except Exception as exc:
            await _abort(context, _internal(exc))

    return unary


def _internal(exc: Exception) -> Internal:
    """A failure no rule foresaw: logged whole here, answered INTERNAL without its text."""
    log.error("rpc_failed", error=repr(exc)[:200], exc_info=exc)
    return Internal("internal error in the service; its log says more")


def required(field: str, value: str) -> str:
    """``value`` when set; InvalidArgument naming ``field`` when empty."""
    if not value:
        raise invalid_field(field, "is required")
    return value


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost listen addresses."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RequestLog(grpc.aio.ServerInterceptor):
    """Binds each call's method to structlog's context, so every log line names it."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(method=details.method)
        return await continuation(details)


async def build_server(
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    listen: str,
    auth: grpc.aio.ServerInterceptor | None,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started grpc.aio server with our services, health and reflection (TLS with ``credentials``).

    ``auth`` (``common.auth.Authenticator``) names and checks every caller; None serves everybody.
    """
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestLog()]
    if auth is not None:
        interceptors.append(auth)
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 * 1024 * 1024)],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    port = server.add_secure_port(listen, credentials) if credentials else server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


async def stop_serving(
    server: grpc.aio.Server, health_servicer: health.aio.HealthServicer, grace: float
) -> None:
    """Say NOT_SERVING for every service (and overall), then stop ``server`` with ``grace``."""
    # While the server still answers, so health watchers and load balancers
    # move away before calls start failing; set() is ignored from now on.
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace)


@contextlib.asynccontextmanager
async def stop_signals() -> AsyncIterator[asyncio.Event]:
    """From entry on, SIGTERM and SIGINT set the event instead of killing the process.

    Enter it before a server starts: a signal that arrives while it starts
    (or just after it has announced itself) is then a request to stop cleanly,
    never a kill.
    """
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        yield stopping
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def until_signalled(stopping: asyncio.Event, stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for the stop signal, then run ``stop`` (a server's clean shutdown)."""
    try:
        await stopping.wait()
        log.info("stopping")
    finally:
        await stop()
