"""Domain errors and the one mapping from them to gRPC status codes.

Domain code raises these; servicers never choose status codes themselves. The
mapping adds ``google.rpc`` details (ErrorInfo with an UPPER_SNAKE reason, and
BadRequest field violations) so clients in any language can read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "baton.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path (``spec.name``) and what is wrong with it."""

    field: str
    description: str


@dataclass
class BatonError(Exception):
    """Base of every error a client should see."""

    message: str
    reason: str = "ERROR"
    metadata: dict[str, str] = field(default_factory=dict)

    code = grpc.StatusCode.INTERNAL

    def __str__(self) -> str:
        return self.message


@dataclass
class Internal(BatonError):
    """A failure inside the service; the message never carries raw error text."""

    reason: str = "INTERNAL"
    code = grpc.StatusCode.INTERNAL


@dataclass
class InvalidArgument(BatonError):
    violations: list[FieldViolation] = field(default_factory=list)
    reason: str = "INVALID_ARGUMENT"
    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class NotFound(BatonError):
    reason: str = "NOT_FOUND"
    code = grpc.StatusCode.NOT_FOUND


@dataclass
class FailedPrecondition(BatonError):
    reason: str = "FAILED_PRECONDITION"
    code = grpc.StatusCode.FAILED_PRECONDITION


@dataclass
class AlreadyExists(BatonError):
    reason: str = "ALREADY_EXISTS"
    code = grpc.StatusCode.ALREADY_EXISTS


@dataclass
class OutOfRange(BatonError):
    reason: str = "OUT_OF_RANGE"
    code = grpc.StatusCode.OUT_OF_RANGE


@dataclass
class Unavailable(BatonError):
    reason: str = "UNAVAILABLE"
    code = grpc.StatusCode.UNAVAILABLE


@dataclass
class ResourceExhausted(BatonError):
    reason: str = "RESOURCE_EXHAUSTED"
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


def invalid_field(field_path: str, description: str, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
    """An InvalidArgument naming one field."""
    return InvalidArgument(
        message=f"{field_path}: {description}",
        reason=reason,
        violations=[FieldViolation(field_path, description)],
    )


def to_status(err: BatonError) -> status_pb2.Status:
    """The google.rpc.Status for ``err``, with ErrorInfo and BadRequest details."""
    details: list[any_pb2.Any] = []
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=ERROR_DOMAIN, metadata=err.metadata))
    details.append(info)
    if isinstance(err, InvalidArgument) and err.violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad)
        details.append(packed)
    return status_pb2.Status(code=getattr(code_pb2, err.code.name), message=err.message, details=details)


def grpc_status(err: BatonError) -> grpc.Status:
    """``err`` as a grpc.Status whose trailing metadata carries the rich details."""
    return rpc_status.to_status(to_status(err))
