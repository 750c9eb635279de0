"""One connection to a Baton service: settings, the channel, and unary calls
with a deadline and retries.

Both asyncio clients stand on ``Connection``. A unary call has one deadline for
all its attempts; an idempotent call that meets UNAVAILABLE is tried again
with exponential backoff (with jitter) while attempts and time remain. A call
that is not idempotent is tried once, so it never happens twice.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypedDict, Unpack

import grpc

from baton.client.errors import BatonError, from_rpc_error

DEFAULT_TIMEOUT = 10.0
# A stream that brings no message (not even a heartbeat; servers send one every
# 5 s by default) for this long is taken for a dead connection and reopened.
DEFAULT_IDLE_TIMEOUT = 30.0
_MAX_MESSAGE = 64 * 1024 * 1024


@dataclass(frozen=True)
class TlsSettings:
    """TLS for the channel: the roots to trust, and a client certificate if the server asks for one.

    PEM bytes; ``None`` roots means the system's. ``server_name`` overrides the
    name checked in the server's certificate (for an address given by IP).
    """

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsSettings:
        """TLS settings read from PEM files."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both its certificate and its key file")
        return cls(read(ca_file), read(key_file), read(cert_file), server_name)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How calls and streams ride out an unreachable service.

    An idempotent unary call is tried up to ``attempts`` times (within its
    deadline); a stream keeps reconnecting until it has failed continuously for
    ``reconnect_for`` seconds. Waits start at ``initial_backoff`` and grow by
    ``multiplier`` up to ``max_backoff``, each with up to 20 % jitter.
    """

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    reconnect_for: float = 120.0

    def backoffs(self) -> Iterator[float]:
        """The successive waits, without end."""
        wait = self.initial_backoff
        while True:
            yield wait * random.uniform(0.8, 1.0)
            wait = min(wait * self.multiplier, self.max_backoff)


class ClientOptions(TypedDict, total=False):
    """What every client takes besides the address (all optional).

    token: sent as ``authorization: Bearer``; default ``$BATON_TOKEN``.
    tls: use TLS with these settings; default from ``$BATON_CA_FILE``,
        ``$BATON_CERT_FILE``, ``$BATON_KEY_FILE`` and ``$BATON_TLS_SERVER_NAME``
        when either of the first two is set, else plaintext.
    timeout: deadline of a unary call, retries included (default 10 s).
    idle_timeout: seconds without any message after which a stream is reopened.
    retry: the RetryPolicy.
    interceptors: grpc.aio client interceptors (tracing, counting...).
    channel_options: extra gRPC channel arguments.
    """

    token: str | None
    tls: TlsSettings | None
    timeout: float
    idle_timeout: float
    retry: RetryPolicy
    interceptors: Sequence[grpc.aio.ClientInterceptor]
    channel_options: Sequence[tuple[str, Any]]


@dataclass(frozen=True)
class Settings:
    """A client's resolved settings."""

    service: str
    address: str
    token: str | None = None
    tls: TlsSettings | None = None
    timeout: float = DEFAULT_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    interceptors: Sequence[grpc.aio.ClientInterceptor] = ()
    channel_options: Sequence[tuple[str, Any]] = ()

    @classmethod
    def resolve(
        cls, service: str, address: str | None, env: str, default: str, options: ClientOptions
    ) -> Settings:
        token = options.get("token")
        if token is None:
            token = os.environ.get("BATON_TOKEN") or None
        tls = options.get("tls")
        if tls is None and (os.environ.get("BATON_CA_FILE") or os.environ.get("BATON_CERT_FILE")):
            tls = TlsSettings.from_files(
                os.environ.get("BATON_CA_FILE") or None,
                os.environ.get("BATON_CERT_FILE") or None,
                os.environ.get("BATON_KEY_FILE") or None,
                os.environ.get("BATON_TLS_SERVER_NAME") or None,
            )
        return cls(
            service=service,
            address=address or os.environ.get(env) or default,
            token=token,
            tls=tls,
            timeout=options.get("timeout", DEFAULT_TIMEOUT),
            idle_timeout=options.get("idle_timeout", DEFAULT_IDLE_TIMEOUT),
            retry=options.get("retry") or RetryPolicy(),
            interceptors=tuple(options.get("interceptors", ())),
            channel_options=tuple(options.get("channel_options", ())),
        )


def open_channel(
    address: str,
    tls: TlsSettings | None = None,
    channel_options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to a Baton service, plaintext or TLS (call inside the running loop)."""
    options: list[tuple[str, Any]] = [
        # Notice a restarted server quickly: gRPC's defaults wait up to 120 s
        # between connection attempts. (The connect timeout stays 20 s.)
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ]
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    options.extend(channel_options)
    if tls is None:
        return grpc.aio.insecure_channel(address, options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, tls.credentials(), options, interceptors=interceptors)


class Connection:
    """A lazily opened grpc.aio channel to one service, and calls over it."""

    SERVICE = "service"
    ENV = ""
    DEFAULT_ADDRESS = ""
    # The generated stub class, called with the channel.
    STUB: Any = None

    def __init__(self, address: str | None = None, **options: Unpack[ClientOptions]) -> None:
        """``address`` defaults to the service's environment variable, then its default address."""
        settings = Settings.resolve(self.SERVICE, address, self.ENV, self.DEFAULT_ADDRESS, options)
        self.settings = settings
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {settings.token}"),) if settings.token else ()
        )

    @property
    def address(self) -> str:
        return self.settings.address

    @property
    def stub(self) -> Any:
        """The generated stub, on a channel opened at first use (inside the running loop)."""
        if self._stub is None:
            s = self.settings
            self._channel = open_channel(
                s.address, s.tls, s.channel_options, list(s.interceptors) or None
            )
            self._stub = self.STUB(self._channel)
        return self._stub

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls and streams still open end with CANCELLED."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None

    def error(self, err: grpc.aio.AioRpcError) -> BatonError:
        return from_rpc_error(err, address=self.address, service=self.SERVICE)

    async def call(
        self, method: str, request: Any, *, idempotent: bool = True, timeout: float | None = None
    ) -> Any:
        """One unary call, with a deadline over all attempts; retried on UNAVAILABLE when idempotent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.timeout if timeout is None else timeout)
        attempts = self.settings.retry.attempts if idempotent else 1
        waits = self.settings.retry.backoffs()
        for attempt in range(1, attempts + 1):
            remaining = deadline - loop.time()
            try:
                return await getattr(self.stub, method)(
                    request, timeout=max(remaining, 0.001), metadata=self._metadata
                )
            except grpc.aio.AioRpcError as err:
                wait = next(waits)
                if (
                    err.code() != grpc.StatusCode.UNAVAILABLE
                    or attempt == attempts
                    or loop.time() + wait >= deadline
                ):
                    raise self.error(err) from None
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover
