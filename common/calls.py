"""Every call a server takes, seen once: its log line, its metrics, and its end at shutdown.

``CallTracker`` is the outermost interceptor of a server (``common.rpc``):

- It binds the method to structlog's context (every line logged while the
  call runs names it) and, when the call ends, logs one ``rpc`` line with
  the method, status code, duration, peer and the caller's name when the
  service authenticates (``common.auth``). Health checks log at debug: a
  probe every few seconds would drown the rest.
- With ``ServiceMetrics`` it counts calls started and handled and times them
  by status code; a stream counts when it ends, with its final code.
- ``drain`` refuses new calls with UNAVAILABLE and ends every open stream
  with UNAVAILABLE and a message saying the server is shutting down, so a
  client learns to reconnect elsewhere instead of seeing a cut connection.
  A stream waiting inside its servicer (for a log line, a job change) is
  woken by cancelling its task; one busy sending ends after that message.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc
import structlog

from baton.common.auth import caller_name
from baton.common.metrics import ServiceMetrics

log = structlog.get_logger("baton.rpc")

SHUTTING_DOWN = "the server is shutting down: call again in a moment (it or another replica will answer)"
HEALTH_SERVICE = "grpc.health.v1.Health"

# The handler attribute of each kind of method, and its grpc_type label.
_KINDS = (
    ("unary_unary", "unary"),
    ("unary_stream", "server_stream"),
    ("stream_unary", "client_stream"),
    ("stream_stream", "bidi_stream"),
)


class _Method(NamedTuple):
    full: str
    service: str
    name: str
    health: bool


class _Open:
    """A stream being served: its task, and whether it waits inside the servicer now."""

    __slots__ = ("health", "inside", "stopping", "task")

    def __init__(self, task: asyncio.Task[Any] | None, health: bool) -> None:
        self.task = task
        self.health = health
        self.inside = False
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True
        if self.inside and self.task is not None:
            self.task.cancel()


class CallTracker(grpc.aio.ServerInterceptor):
    """Logs, measures and, at shutdown, ends the calls of one server (see the module docstring)."""

    def __init__(self, metrics: ServiceMetrics | None = None) -> None:
        self.metrics = metrics
        self.draining = False
        self._methods: dict[str, _Method] = {}
        # Per method, the last handler wrapped and its wrapping: a server's own
        # handlers are the same objects call after call (the Authenticator's are not).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        # Labelled series by (method, kind[, code]): labels() takes a lock and builds a key each time.
        self._starts: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._ends: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._open: set[_Open] = set()
        self._none_open = asyncio.Event()
        self._none_open.set()

    # ------------------------------------------------------------ shutdown

    @property
    def open_streams(self) -> int:
        return len(self._open)

    @property
    def health_watches(self) -> int:
        """Open health Watch streams: they should hear NOT_SERVING before they are ended."""
        return sum(1 for stream in self._open if stream.health)

    async def drain(self, within: float) -> None:
        """Refuse new calls; end open streams with UNAVAILABLE, waiting up to ``within`` seconds for them."""
        self.draining = True
        for stream in list(self._open):
            stream.stop()
        if self._open:
            try:
                await asyncio.wait_for(self._none_open.wait(), max(within, 0.0))
            except TimeoutError:
                log.warning("streams_still_open", streams=len(self._open))

    # ------------------------------------------------------------ wrapping

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(method=details.method)
        handler = await continuation(details)
        if handler is None:
            return handler  # an unknown method: grpc answers UNIMPLEMENTED, and no label is made for it
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, self._method(details.method))
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _method(self, full: str) -> _Method:
        known = self._methods.get(full)
        if known is None:
            service, _, name = full.lstrip("/").rpartition("/")
            known = self._methods[full] = _Method(full, service, name, service == HEALTH_SERVICE)
        return known

    def _wrap(self, handler: grpc.RpcMethodHandler, method: _Method) -> grpc.RpcMethodHandler:
        for attr, kind in _KINDS:  # noqa: B007 (the loop finds the one that is set)
            behavior = getattr(handler, attr)
            if behavior is not None:
                break
        else:
            return handler
        streams = kind in ("server_stream", "bidi_stream")
        wrapped: Callable[..., Any]
        if inspect.isasyncgenfunction(behavior):
            wrapped = self._generator(behavior, method, kind)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._coroutine(behavior, method, kind, streams)
        else:
            return handler  # a synchronous handler (none of ours): left as it is
        return handler._replace(**{attr: wrapped})

    def _coroutine(
        self, behavior: Callable[..., Awaitable[Any]], method: _Method, kind: str, streams: bool
    ) -> Callable[..., Awaitable[Any]]:
        """A unary call, or a stream that writes with ``context.write`` (health Watch)."""

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            began = time.perf_counter()
            peer = self._started(method, kind, context)
            stream = self._opened(method) if streams else None
            code: grpc.StatusCode | None = None
            try:
                if self.draining and not method.health:
                    code = grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, SHUTTING_DOWN)
                if stream is not None:
                    stream.inside = True
                return await behavior(request, context)
            except asyncio.CancelledError:
                if stream is not None and stream.stopping:
                    _uncancel()
                    code = grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, SHUTTING_DOWN)
                code = _cancelled(context)
                raise
            except grpc.aio.AbortError:
                code = code or context.code()
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                if stream is not None:
                    self._closed(stream)
                self._ended(method, kind, code or context.code(), began, peer)

        return call

    def _generator(
        self, behavior: Callable[..., AsyncGenerator[Any, None]], method: _Method, kind: str
    ) -> Callable[..., AsyncGenerator[Any, None]]:
        """A stream that yields its messages (StreamLogs, WatchJobs)."""

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncGenerator[Any, None]:
            began = time.perf_counter()
            peer = self._started(method, kind, context)
            this = self._opened(method)
            code: grpc.StatusCode | None = None
            messages = behavior(request, context)
            try:
                if self.draining and not method.health:
                    this.stopping = True
                while not this.stopping:
                    this.inside = True
                    try:
                        item = await anext(messages)
                    except StopAsyncIteration:
                        break
                    finally:
                        this.inside = False
                    if this.stopping:
                        break
                    yield item
                if this.stopping:
                    code = grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, SHUTTING_DOWN)
            except asyncio.CancelledError:
                if this.stopping and code is None:
                    _uncancel()
                    code = grpc.StatusCode.UNAVAILABLE
                    await context.abort(code, SHUTTING_DOWN)
                code = code or _cancelled(context)
                raise
            except grpc.aio.AbortError:
                code = code or context.code()
                raise
            except GeneratorExit:
                code = code or grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                await messages.aclose()
                self._closed(this)
                self._ended(method, kind, code or context.code(), began, peer)

        return stream

    # ------------------------------------------------------------ accounting

    def _opened(self, method: _Method) -> _Open:
        stream = _Open(asyncio.current_task(), method.health)
        self._open.add(stream)
        self._none_open.clear()
        return stream

    def _closed(self, stream: _Open) -> None:
        self._open.discard(stream)
        if not self._open:
            self._none_open.set()

    def _started(self, method: _Method, kind: str, context: grpc.aio.ServicerContext) -> str | None:
        """Count the start; the peer for the log line (None when that line will not be written).

        The peer is asked now: once a call is over, grpc may have freed what
        ``peer()`` reads (asking then crashed the process).
        """
        m = self.metrics
        if m is not None:
            series = self._starts.get((method.full, kind))
            if series is None:
                series = self._starts[(method.full, kind)] = (
                    m.started.labels(method.service, method.name, kind),
                    m.open_streams.labels(method.service, method.name)
                    if kind in ("server_stream", "bidi_stream")
                    else None,
                )
            series[0].inc()
            if series[1] is not None:
                series[1].inc()
        return context.peer() if _enabled(logging.DEBUG if method.health else logging.INFO) else None

    def _ended(
        self,
        method: _Method,
        kind: str,
        code: grpc.StatusCode | None,
        began: float,
        peer: str | None,
    ) -> None:
        seconds = time.perf_counter() - began
        code_name = code.name if code is not None else "OK"
        m = self.metrics
        if m is not None:
            series = self._ends.get((method.full, kind, code_name))
            if series is None:
                series = self._ends[(method.full, kind, code_name)] = (
                    m.handled.labels(method.service, method.name, kind, code_name),
                    m.handling.labels(method.service, method.name, kind, code_name),
                )
            series[0].inc()
            series[1].observe(seconds)
            opened = self._starts[(method.full, kind)][1]
            if opened is not None:
                opened.dec()
        if peer is None:
            return
        fields: dict[str, Any] = {
            "method": method.full,
            "code": code_name,
            "duration_ms": round(seconds * 1000, 3),
            "peer": peer,
        }
        caller = caller_name()
        if caller:
            fields["caller"] = caller
        log.log(logging.DEBUG if method.health else logging.INFO, "rpc", **fields)


def _enabled(level: int) -> bool:
    """Whether structlog's level filter lets ``level`` through (no work for a dropped line)."""
    check = getattr(log, "is_enabled_for", None)
    return True if check is None else bool(check(level))


def _uncancel() -> None:
    """Take back the cancel ``drain`` sent, so the task can answer with its status."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _cancelled(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a call's task was cancelled: its deadline passed, or the client went away."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
