"""The blocking clients: ``ConductorClient`` and ``ViewerClient``.

Each one owns a private event loop on a daemon thread and runs the asyncio
client (``client.aio``) there, so both flavours share one implementation:
every method here is the asyncio method of the same name, made blocking, with
the same arguments, deadlines, retries and errors. Streams come back as
blocking iterators that reconnect the same way.

    with ConductorClient() as conductor:
        job = conductor.submit_job(spec_yaml)
        for chunk in conductor.stream_logs(job.id, follow=True):
            sys.stdout.buffer.write(chunk.data)

A client may be used from several threads at once.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, Unpack, overload

from baton.client.aio import AsyncConductorClient, AsyncViewerClient
from baton.client.connection import ClientOptions, Connection
from baton.v1 import job_pb2

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
W = TypeVar("W")
A = TypeVar("A", bound=Connection)


class _LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="baton-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run ``coro`` on the loop and wait for it (Ctrl-C cancels it)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class _StreamAttr(Generic[T]):
    """A read-only attribute of the asyncio stream a blocking stream wraps."""

    def __init__(self, doc: str, default: Any = None) -> None:
        self.__doc__ = doc
        self._default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, obj: BlockingStream[Any] | None, owner: type) -> T:
        return getattr(obj._stream, self._name, self._default)  # type: ignore[union-attr]


class BlockingStream(Generic[T]):
    """A blocking iterator over a reconnecting stream; ``close()`` stops it early."""

    def __init__(self, runner: _LoopThread, stream: AsyncIterator[T]) -> None:
        self._runner = runner
        self._stream = stream

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(self._stream)
            except StopAsyncIteration:
                return False, None

        more, item = self._runner.run(step())
        if not more:
            raise StopIteration
        return item  # type: ignore[return-value]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None and not self._runner.loop.is_closed():
            self._runner.run(aclose())

    reconnects = _StreamAttr[int]("How many times the stream was reopened after a dropped connection.", 0)


class BlockingLogStream(BlockingStream[job_pb2.LogChunk]):
    """A log stream (see ``client.streams.LogStream``), blocking."""

    offset = _StreamAttr[int]("The next byte to come.")
    result = _StreamAttr[job_pb2.LogChunk | None]("The ``complete`` chunk, once a followed log has ended.")


class BlockingWatchStream(BlockingStream[job_pb2.JobEvent]):
    """A watch (see ``client.streams.WatchStream``), blocking."""

    revision = _StreamAttr[int]("The last revision seen.")
    snapshot_done = _StreamAttr[bool]("True once the whole snapshot has been handed over.")


class _Blocking(Generic[P, W]):
    """A method of the asyncio client, made blocking: its result passes through ``adapt``."""

    def __init__(
        self, method: Callable[Concatenate[Any, P], Any], adapt: Callable[[_LoopThread, Any], W]
    ) -> None:
        self._method = method
        self._adapt = adapt
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type) -> Self: ...
    @overload
    def __get__(self, obj: _SyncClient[Any], owner: type) -> Callable[P, W]: ...
    def __get__(self, obj: _SyncClient[Any] | None, owner: type) -> Self | Callable[P, W]:
        if obj is None:
            return self
        method, adapt = self._method, self._adapt

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> W:
            return adapt(obj._runner, method(obj.aio, *args, **kwargs))

        return call


def _call(method: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]) -> _Blocking[P, R]:
    """A coroutine method, run on the client's loop until it returns."""
    return _Blocking(method, _LoopThread.run)


def _stream(
    method: Callable[Concatenate[Any, P], AsyncIterator[Any]], wrapper: Callable[[_LoopThread, Any], W]
) -> _Blocking[P, W]:
    """A stream-returning method, its stream wrapped in a blocking iterator ``W``."""
    return _Blocking(method, wrapper)


class _SyncClient(Generic[A]):
    _ASYNC: type[Connection]

    def __init__(self, address: str | None = None, **options: Unpack[ClientOptions]) -> None:
        self.aio: A = self._ASYNC(address, **options)  # type: ignore[assignment]
        self._runner = _LoopThread()

    @property
    def address(self) -> str:
        return self.aio.address

    def close(self) -> None:
        """Close the channel and stop the client's loop thread."""
        if not self._runner.loop.is_closed():
            self._runner.run(self.aio.close())
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_A = AsyncConductorClient
_V = AsyncViewerClient


class ConductorClient(_SyncClient[AsyncConductorClient]):
    """The conductor, blocking. Same methods and arguments as ``AsyncConductorClient``."""

    _ASYNC = AsyncConductorClient

    submit_job = _call(_A.submit_job)
    get_job = _call(_A.get_job)
    list_jobs = _call(_A.list_jobs)
    iter_jobs = _stream(_A.iter_jobs, BlockingStream[job_pb2.Job])
    pause_job = _call(_A.pause_job)
    resume_job = _call(_A.resume_job)
    cancel_job = _call(_A.cancel_job)
    delete_job = _call(_A.delete_job)
    get_conductor_info = _call(_A.get_conductor_info)
    get_job_health = _call(_A.get_job_health)
    get_job_step = _call(_A.get_job_step)
    delete_checkpoints = _call(_A.delete_checkpoints)
    clear_jobs = _call(_A.clear_jobs)
    wait_for_job = _call(_A.wait_for_job)
    stream_logs = _stream(_A.stream_logs, BlockingLogStream)
    watch_jobs = _stream(_A.watch_jobs, BlockingWatchStream)


class ViewerClient(_SyncClient[AsyncViewerClient]):
    """The viewer, blocking. Same methods and arguments as ``AsyncViewerClient``."""

    _ASYNC = AsyncViewerClient

    list_jobs = _call(_V.list_jobs)
    iter_jobs = _stream(_V.iter_jobs, BlockingStream[job_pb2.Job])
    get_job = _call(_V.get_job)
    list_job_runs = _call(_V.list_job_runs)
    list_projects = _call(_V.list_projects)
    list_running_jobs = _call(_V.list_running_jobs)
    list_recent_jobs = _call(_V.list_recent_jobs)
    get_dashboard_stats = _call(_V.get_dashboard_stats)
    list_checkpoints = _call(_V.list_checkpoints)
    iter_checkpoints = _stream(_V.iter_checkpoints, BlockingStream[Any])
    get_checkpoint = _call(_V.get_checkpoint)
    get_latest_checkpoint = _call(_V.get_latest_checkpoint)
    get_checkpoint_config = _call(_V.get_checkpoint_config)
    get_checkpoint_job_spec = _call(_V.get_checkpoint_job_spec)
    get_checkpoint_stats = _call(_V.get_checkpoint_stats)
    read_log = _call(_V.read_log)
    tail_log = _call(_V.tail_log)
    stream_logs = _stream(_V.stream_logs, BlockingLogStream)
