"""What a failed call raises: one exception class per gRPC status code that a
caller may want to catch, all under ``BatonError``. They are the very classes
the services raise (``baton.common.errors``), re-exported here for clients.

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

from baton.common.errors import (
    AlreadyExists,
    BatonError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

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
