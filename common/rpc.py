"""gRPC plumbing both servers share: error translation, request decoding,
health and reflection, the plaintext health listener, and stop signals.
(Per-call logging, metrics and ending calls at shutdown: ``common.calls``;
the listeners together and their orderly stop: ``common.serving``.)

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
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf import descriptor, message, message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from baton.common.errors import (
    BatonError,
    FieldViolation,
    Internal,
    InvalidArgument,
    grpc_status,
    invalid_field,
)
from baton.common.wire import Encoded

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


def _internal(exc: BaseException) -> Internal:
    """A failure no rule foresaw: logged whole here, answered INTERNAL without its text.

    The answer carries an error id and the log line carries the same id with
    the traceback, so an operator finds the one from the other; the client
    learns nothing of the failure's text (it may hold anything the service read).
    """
    error_id = uuid.uuid4().hex[:16]
    log.error("rpc_failed", error_id=error_id, error_type=type(exc).__name__, exc_info=exc)
    return Internal(
        f"internal error in the service (error id {error_id}); its log has the details",
        reason="INTERNAL_ERROR",
        metadata={"error_id": error_id},
    )


class _Undecodable:
    """What a request deserializer returns for bytes that are not the request message.

    grpc.aio answers UNKNOWN by itself when a deserializer raises, so the
    deserializer never raises: it hands this to the method, which answers
    INVALID_ARGUMENT naming the request type.
    """

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InvalidArgument:
        what = f"the request bytes do not decode as a {self.type_name}"
        return InvalidArgument(
            what, reason="REQUEST_UNDECODABLE", field_violations=[FieldViolation("request", what)]
        )


def _safe_deserializer(cls: type[message.Message]) -> Callable[[bytes], Any]:
    type_name = cls.DESCRIPTOR.full_name

    def deserialize(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except Exception:  # DecodeError, and whatever else the parser may raise on hostile bytes
            return _Undecodable(type_name)

    return deserialize


def _serializer(cls: type[message.Message]) -> Callable[[Any], bytes]:
    """``cls``'s SerializeToString, passing an ``Encoded`` response of that type through as it is."""
    type_name = cls.DESCRIPTOR.full_name
    serialize = cls.SerializeToString

    def to_bytes(response: Any) -> bytes:
        if isinstance(response, Encoded):
            assert response.type_name == type_name, f"{response.type_name} sent for a {type_name}"
            return response.data
        return serialize(response)

    return to_bytes


def _guard(behavior: Callable[..., Any], server_streaming: bool) -> Callable[..., Any]:
    """``behavior`` that answers INVALID_ARGUMENT for a request that did not decode."""
    if server_streaming:

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _abort(context, request.error())
                return
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await _abort(context, request.error())
        return await behavior(request, context)

    return unary


def add_service(server: grpc.aio.Server, servicer: object, service: descriptor.ServiceDescriptor) -> None:
    """Serve ``servicer``'s methods for ``service``, as the generated ``add_*_to_server`` does.

    Built from the service descriptor rather than the generated function so that
    every request deserializer is wrapped (``_safe_deserializer``): bytes that
    do not parse are INVALID_ARGUMENT naming the request, never grpc's UNKNOWN.
    """
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        assert not method.client_streaming, "Baton has no client-streaming RPC"
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = make(
            _guard(getattr(servicer, method.name), method.server_streaming),
            request_deserializer=_safe_deserializer(request_cls),
            response_serializer=_serializer(response_cls),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


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


async def build_server(
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    listen: str,
    auth: grpc.aio.ServerInterceptor | None,
    credentials: grpc.ServerCredentials | None = None,
    tracker: grpc.aio.ServerInterceptor | None = None,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """A started grpc.aio server with our services, health and reflection (TLS with ``credentials``).

    ``tracker`` (``common.calls.CallTracker``) sees every call first, so it
    logs and counts the calls that ``auth`` (``common.auth.Authenticator``)
    refuses too; None for auth serves everybody.
    """
    interceptors = [i for i in (tracker, auth) if i is not None]
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


async def build_health_server(
    health_servicer: health.aio.HealthServicer,
    listen: str,
    tracker: grpc.aio.ServerInterceptor | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A started plaintext server with only ``grpc.health.v1.Health``, sharing ``health_servicer``'s state.

    Kubelet's gRPC probes speak plaintext and send no token, so a service on
    TLS takes its probes here; the answers are the main server's own.
    """
    server = grpc.aio.server(
        interceptors=[tracker] if tracker is not None else None, options=[("grpc.so_reuseport", 0)]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen} (--health-listen)")
    await server.start()
    return server, port


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
