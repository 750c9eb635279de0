"""Between HTTP and gRPC: requests from path, query and body; answers and errors as JSON.

JSON is the proto3 JSON mapping: output uses each field's JSON name
(lowerCamelCase) and omits defaults; input takes the JSON name or the proto
name. Query parameters fill the fields the path and body leave (GET and
DELETE); a repeated field repeats its parameter. Errors carry the HTTP status
AIP-193 maps from the gRPC code and a google.rpc.Status body with its details.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor, json_format, message
from google.rpc import code_pb2, error_details_pb2, status_pb2  # noqa: F401 (details' types)

from baton.common.errors import BatonError, clip, invalid_field, to_status
from baton.common.limits import MAX_ERROR_MESSAGE_BYTES
from baton.gateway.routes import Route

# The HTTP status of each gRPC code (google.rpc.Code's documented mapping, AIP-193).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_FD = descriptor.FieldDescriptor
_INTEGERS = {
    _FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_SINT32,
    _FD.TYPE_SINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64,
}  # fmt: skip
_64_BITS = {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}


def to_json(msg: message.Message) -> dict[str, Any]:
    """``msg`` in the proto3 JSON mapping."""
    return json_format.MessageToDict(msg)


def dumps(msg: message.Message) -> str:
    """``msg`` as one line of proto3 JSON."""
    return json.dumps(to_json(msg), separators=(",", ":"), ensure_ascii=False)


def _field(desc: descriptor.Descriptor, name: str) -> descriptor.FieldDescriptor | None:
    found = desc.fields_by_name.get(name)
    if found is not None:
        return found
    return next((f for f in desc.fields if f.json_name == name), None)


def _resolve(desc: descriptor.Descriptor, path: str) -> list[descriptor.FieldDescriptor]:
    """The chain of fields ``a.b.c`` names in ``desc``; InvalidArgument when one is unknown."""
    chain: list[descriptor.FieldDescriptor] = []
    current: descriptor.Descriptor | None = desc
    for part in path.split("."):
        field = _field(current, part) if current is not None else None
        if field is None:
            where = current.full_name if current is not None else chain[-1].name
            raise invalid_field(path, f"no field {part!r} in {where}")
        chain.append(field)
        current = field.message_type
    return chain


def _scalar(field: descriptor.FieldDescriptor, text: str, where: str) -> Any:
    """A query or path string as the JSON value ParseDict expects for ``field``."""
    if field.type == _FD.TYPE_BOOL:
        if text.lower() in ("true", "1", ""):
            return True
        if text.lower() in ("false", "0"):
            return False
        raise invalid_field(where, f"must be true or false, not {text!r}")
    if field.type in _INTEGERS:
        try:
            number = int(text)
        except ValueError:
            raise invalid_field(where, f"must be an integer, not {clip(text, 64)!r}") from None
        return str(number) if field.type in _64_BITS else number
    if field.type == _FD.TYPE_ENUM and text.lstrip("-").isdigit():
        return int(text)
    # Strings, bytes (base64), floats, enums by name and the well-known types
    # written as strings (Duration "30s", Timestamp RFC 3339) are JSON strings.
    return text


def _put(tree: dict[str, Any], chain: list[descriptor.FieldDescriptor], values: Sequence[Any]) -> None:
    for field in chain[:-1]:
        tree = tree.setdefault(field.name, {})
    last = chain[-1]
    tree[last.name] = list(values) if last.is_repeated else values[-1]


def build_request(
    route: Route,
    bound: Mapping[str, str],
    query: Mapping[str, Sequence[str]],
    body: bytes | None,
) -> message.Message:
    """The gRPC request for one HTTP request. Raises InvalidArgument naming the field at fault."""
    desc = route.method.input_type
    tree: dict[str, Any] = {}
    if route.body:
        tree = _body(route, body)
    elif body:
        raise invalid_field("body", f"{route.http_method} {route.template.text} takes no body")
    taken = set()
    for path, value in bound.items():
        chain = _resolve(desc, path)
        if route.body == "*" and _get(tree, chain) not in (None, _scalar(chain[-1], value, path)):
            raise invalid_field(path, "the body says otherwise than the path")
        _put(tree, chain, [_scalar(chain[-1], value, path)])
        taken.add(chain[0].name)
    for name, values in query.items():
        chain = _resolve(desc, name)
        if route.body == "*" or chain[0].name in taken or chain[0].name == route.body:
            raise invalid_field(name, "is set by the path or the body, not the query")
        if chain[-1].message_type is not None and not _is_well_known(chain[-1]):
            raise invalid_field(name, "a message field: name its fields (a.b=value)")
        _put(tree, chain, [_scalar(chain[-1], v, name) for v in values])
    request = route.request_class()
    try:
        json_format.ParseDict(tree, request)
    except json_format.ParseError as exc:
        raise invalid_field(_blamed(str(exc)), clip(str(exc), MAX_ERROR_MESSAGE_BYTES // 2)) from None
    return request


def _is_well_known(field: descriptor.FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.full_name.startswith("google.protobuf.")


def _get(tree: dict[str, Any], chain: list[descriptor.FieldDescriptor]) -> Any:
    """The value ``chain`` names in a parsed body (by proto or JSON name), or None."""
    value: Any = tree
    for field in chain:
        if not isinstance(value, dict):
            return None
        value = value.get(field.name, value.get(field.json_name))
    return value


def _body(route: Route, body: bytes | None) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_field("body", f"not JSON: {exc}") from None
    if route.body == "*":
        if not isinstance(data, dict):
            raise invalid_field("body", f"must be a JSON object ({route.request_class.DESCRIPTOR.name})")
        return data
    return {route.body: data}


def _blamed(problem: str) -> str:
    """The field a ParseDict message names ("... at 'SubmitJobRequest.spec.name'"), else "body"."""
    marker = " at '"
    if marker in problem:
        where = problem.split(marker, 1)[1].split("'", 1)[0]
        return where.split(".", 1)[1] if "." in where else where
    if 'field named "' in problem:
        return problem.split('field named "', 1)[1].split('"', 1)[0]
    return "body"


def status_of_rpc_error(err: grpc.aio.AioRpcError) -> tuple[int, status_pb2.Status]:
    """The HTTP status and google.rpc.Status of a failed call, with the server's details."""
    status = status_pb2.Status(code=err.code().value[0], message=err.details() or "")
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            with contextlib.suppress(message.DecodeError):
                status.ParseFromString(value)
    return HTTP_STATUS.get(err.code(), 500), status


def status_of_error(err: BatonError) -> tuple[int, status_pb2.Status]:
    """The HTTP status and google.rpc.Status of an error the gateway found itself."""
    return HTTP_STATUS[err.code], to_status(err)


def status_json(status: status_pb2.Status) -> bytes:
    """A google.rpc.Status as the error body."""
    return json.dumps(json_format.MessageToDict(status), ensure_ascii=False).encode()
