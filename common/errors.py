"""Domain errors and the one mapping from them to gRPC status codes.

Domain code raises these; servicers never choose status codes themselves. The
mapping adds ``google.rpc`` details (ErrorInfo with an UPPER_SNAKE reason, and
BadRequest field violations) so clients in any language can read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from baton.common.limits import MAX_ERROR_MESSAGE_BYTES, MAX_ERROR_STATUS_BYTES, MAX_QUOTED_CHARS

ERROR_DOMAIN = "baton.dev"
# What one ErrorInfo metadata value or one field violation may take of the trailers.
_MAX_DETAIL_CHARS = 2 * MAX_QUOTED_CHARS


def quote(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr`` of at most ``limit`` characters of ``value``: how every error quotes its input.

    An error never carries more than this of what a client sent (or a file held),
    so a huge or hostile value cannot swell a reply or a log line.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def clip(text: str, limit_bytes: int) -> str:
    """``text`` cut to at most ``limit_bytes`` UTF-8 bytes, marked when cut."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit_bytes:
        return text
    return raw[: limit_bytes - 5].decode("utf-8", "ignore") + " [..]"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path (``spec.name``) and what is wrong with it."""

    field: str
    description: str


class BatonError(Exception):
    """Base of every error Baton raises or reports: one class per gRPC status.

    Server code raises these and the one mapping below turns them into a status
    with rich details; the Python client raises the same classes for a failed
    call (``baton.client.errors.from_rpc_error``), so both ends share one name
    per failure. ``reason`` is the UPPER_SNAKE ErrorInfo reason (the code's
    name when none is given), ``field_violations`` the BadRequest details,
    ``metadata`` the ErrorInfo metadata; ``address`` and ``service`` say where
    a client's call went.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        code: grpc.StatusCode | None = None,
        address: str = "",
        service: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        # A client keeps the exact code it got (Internal also stands for UNKNOWN
        # and DATA_LOSS); raised on a server, the class decides.
        self.code = code if code is not None else type(self).code
        self.reason = reason or self.code.name
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.address = address
        self.service = service

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(BatonError):
    """The request was wrong; ``field_violations`` says which fields."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(BatonError):
    """No such job, run or checkpoint."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(BatonError):
    """The thing to create exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(BatonError):
    """The job is in a state that does not allow this (pause a job that is not RUNNING...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(BatonError):
    """A watch asked for revisions no longer kept: watch again from revision 0."""

    code = grpc.StatusCode.OUT_OF_RANGE


class PermissionDenied(BatonError):
    """The caller may not do this (a refused token, a role without the right)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(BatonError):
    """The service wants a token and none was sent."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(BatonError):
    """A limit was reached (storage full, message size, a subscriber too far behind)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(BatonError):
    """The service (or its storage) cannot serve now; trying again later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(BatonError):
    """The call did not finish before its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(BatonError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unimplemented(BatonError):
    """The service does not know this call (an older server?)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(BatonError):
    """A failure inside the service; the message never carries raw error text."""

    code = grpc.StatusCode.INTERNAL


def invalid_field(field_path: str, description: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    """An InvalidArgument naming one field."""
    return InvalidArgument(
        message=f"{field_path}: {description}",
        reason=reason,
        field_violations=[FieldViolation(field_path, description)],
    )


def to_status(err: BatonError) -> status_pb2.Status:
    """The google.rpc.Status for ``err``, with ErrorInfo and BadRequest details.

    Bounded whatever the error holds: the message to MAX_ERROR_MESSAGE_BYTES, the
    whole Status to MAX_ERROR_STATUS_BYTES (field violations past that are
    dropped, the first always kept), so an error always fits the trailers.
    """
    message = clip(err.message, MAX_ERROR_MESSAGE_BYTES)
    error_info = error_details_pb2.ErrorInfo(reason=clip(err.reason, 64), domain=ERROR_DOMAIN)
    budget = MAX_ERROR_STATUS_BYTES // 2 - len(message.encode())
    for key, value in err.metadata.items():
        key, value = clip(key, 64), clip(value, MAX_QUOTED_CHARS)
        budget -= len(key.encode()) + len(value.encode()) + 8
        if budget < 0:
            break
        error_info.metadata[key] = value
    info = any_pb2.Any()
    info.Pack(error_info)
    status = status_pb2.Status(code=getattr(code_pb2, err.code.name), message=message, details=[info])
    # Any error naming fields gets them: a request too large for the machine
    # (FAILED_PRECONDITION) names its field as a malformed one does.
    if err.field_violations:
        bad = error_details_pb2.BadRequest()
        budget = MAX_ERROR_STATUS_BYTES - status.ByteSize() - 64
        for v in err.field_violations:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=clip(v.field, _MAX_DETAIL_CHARS), description=clip(v.description, _MAX_DETAIL_CHARS)
            )
            if bad.field_violations and violation.ByteSize() + 4 > budget:
                break
            bad.field_violations.append(violation)
            budget -= violation.ByteSize() + 4
        status.details.add().Pack(bad)
    return status


def grpc_status(err: BatonError) -> grpc.Status:
    """``err`` as a grpc.Status whose trailing metadata carries the rich details."""
    return rpc_status.to_status(to_status(err))
