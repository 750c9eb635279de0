"""What a failed call raises: one exception class per gRPC status code that a
caller may want to catch, all under ``BatonError``.

Each error keeps what the server said: the status code, the message, and the
``google.rpc`` details (the ErrorInfo ``reason`` and ``metadata``, and any
BadRequest field violations), read with ``grpc_status.rpc_status.from_call``.
An error for a service that cannot be reached says so plainly, names the
address tried, and says how to start one.
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.common.errors import FieldViolation

__all__ = [
    "AlreadyExists",
    "BatonError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "from_rpc_error",
]


class BatonError(Exception):
    """A call to a Baton service failed.

    ``code`` is the gRPC status code, ``reason`` the server's UPPER_SNAKE
    ErrorInfo reason (the code's name when the server gave none),
    ``field_violations`` the BadRequest details, ``metadata`` the ErrorInfo
    metadata, ``address`` and ``service`` where the call went.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        field_violations: list[FieldViolation] | None = None,
        metadata: dict[str, str] | None = None,
        address: str = "",
        service: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason or code.name
        self.field_violations = list(field_violations or [])
        self.metadata = dict(metadata or {})
        self.address = address
        self.service = service

    def __str__(self) -> str:
        return self.message


class InvalidArgument(BatonError):
    """The request was wrong; ``field_violations`` says which fields."""


class NotFound(BatonError):
    """No such job, run or checkpoint."""


class AlreadyExists(BatonError):
    """The thing to create exists already."""


class FailedPrecondition(BatonError):
    """The job is in a state that does not allow this (pause a job that is not RUNNING...)."""


class OutOfRange(BatonError):
    """A watch asked for revisions no longer kept: watch again from revision 0."""


class PermissionDenied(BatonError):
    """The token was refused."""


class Unauthenticated(BatonError):
    """The service wants a token and none was sent."""


class ResourceExhausted(BatonError):
    """A limit was reached (message size, a subscriber too far behind)."""


class Unavailable(BatonError):
    """The service could not be reached, even after retrying."""


class DeadlineExceeded(BatonError):
    """The call did not finish before its deadline."""


class Cancelled(BatonError):
    """The call was cancelled."""


class Unimplemented(BatonError):
    """The service does not know this call (an older server?)."""


class Internal(BatonError):
    """The service failed (INTERNAL, UNKNOWN, DATA_LOSS)."""


_CLASSES: dict[grpc.StatusCode, type[BatonError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}

# How to start each service, for the "cannot reach" message.
_HOW_TO_START = {
    "conductor": ("baton conductor", "--conductor", "BATON_CONDUCTOR"),
    "viewer": ("baton viewer", "--viewer", "BATON_VIEWER"),
}


def unreachable_message(service: str, address: str, details: str) -> str:
    """The plain message for a service that cannot be reached at ``address``."""
    start, flag, env = _HOW_TO_START.get(service, (f"baton {service}", "--address", "the address"))
    return (
        f"cannot reach the Baton {service} at {address} ({details or 'unavailable'}). "
        f"Is it running? Start one with `{start}`, or `baton up` for conductor and viewer "
        f"together; or point {flag} / {env} at a running one."
    )


def _details(call: grpc.aio.AioRpcError) -> tuple[str, dict[str, str], list[FieldViolation]]:
    reason, metadata, violations = "", {}, list[FieldViolation]()
    try:
        status = rpc_status.from_call(call)  # type: ignore[arg-type]
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description) for v in bad.field_violations)
    return reason, metadata, violations


def from_rpc_error(err: grpc.aio.AioRpcError, *, address: str = "", service: str = "") -> BatonError:
    """The ``BatonError`` subclass for a failed call, with the server's rich details."""
    code = err.code()
    message = err.details() or code.name
    reason, metadata, violations = _details(err)
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        # No rich status: the transport failed, not the server's logic.
        message = unreachable_message(service, address, message)
    cls = _CLASSES.get(code, Internal)
    return cls(
        message,
        code=code,
        reason=reason,
        field_violations=violations,
        metadata=metadata,
        address=address,
        service=service,
    )
