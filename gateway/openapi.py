"""An OpenAPI 3.1 document of the gateway's routes, generated from the same descriptors.

Schemas follow the proto3 JSON mapping the gateway speaks: JSON names, 64-bit
integers as strings, enums by name, bytes as base64, Timestamp and Duration
as strings. Streaming routes answer ``text/event-stream`` (and NDJSON).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor

from baton.common.version import VERSION
from baton.gateway.routes import Route

_FD = descriptor.FieldDescriptor
_SCALARS: dict[int, dict[str, Any]] = {
    _FD.TYPE_DOUBLE: {"type": "number"},
    _FD.TYPE_FLOAT: {"type": "number"},
    _FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    _FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    _FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    _FD.TYPE_INT64: {"type": "string", "format": "int64"},
    _FD.TYPE_SINT64: {"type": "string", "format": "int64"},
    _FD.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _FD.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _FD.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _FD.TYPE_BOOL: {"type": "boolean"},
    _FD.TYPE_STRING: {"type": "string"},
    _FD.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
}


class _Schemas:
    def __init__(self) -> None:
        self.found: dict[str, Any] = {}

    def ref(self, desc: descriptor.Descriptor) -> dict[str, Any]:
        if desc.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[desc.full_name])
        if desc.full_name not in self.found:
            self.found[desc.full_name] = {}  # placeholder: messages may refer to themselves
            self.found[desc.full_name] = {
                "type": "object",
                "properties": {f.json_name: self.field(f) for f in desc.fields},
            }
        return {"$ref": f"#/components/schemas/{desc.full_name}"}

    def field(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        return dict(_SCALARS[field.type])


def _parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    bound = [path for _, path in route.template.fields]
    params = [
        {"name": path, "in": "path", "required": True, "schema": {"type": "string"}} for path in bound
    ]
    if route.body == "*":
        return params
    for field in route.method.input_type.fields:
        if field.name in bound or field.name == route.body:
            continue
        if field.message_type is not None and not field.message_type.full_name.startswith("google."):
            continue
        params.append({"name": field.name, "in": "query", "schema": schemas.field(field)})
    return params


def _path(route: Route) -> str:
    text = route.template.text
    for _, field_path in route.template.fields:
        text = text.replace("{" + field_path + "=**}", "{" + field_path + "}")
    return text


def openapi(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI document for ``routes``."""
    schemas = _Schemas()
    status = {"$ref": "#/components/schemas/google.rpc.Status"}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        out = schemas.ref(route.method.output_type)
        content = (
            {"text/event-stream": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": out}}
            if route.streaming
            else {"application/json": {"schema": out}}
        )
        operation: dict[str, Any] = {
            "operationId": f"{route.method.containing_service.name}_{route.method.name}",
            "tags": [route.method.containing_service.name],
            "parameters": _parameters(route, schemas),
            "responses": {
                "200": {"description": "OK", "content": content},
                "default": {"description": "An error", "content": {"application/json": {"schema": status}}},
            },
        }
        if route.body:
            body_type = route.method.input_type
            if route.body == "*":
                body_schema = schemas.ref(body_type)
            else:
                body_schema = schemas.field(body_type.fields_by_name[route.body])
            json_body = {"application/json": {"schema": body_schema}}
            operation["requestBody"] = {"required": True, "content": json_body}
        if route.method.GetOptions().deprecated:
            operation["deprecated"] = True
        paths.setdefault(_path(route), {})[route.http_method.lower()] = operation
    from google.rpc import status_pb2

    schemas.ref(status_pb2.Status.DESCRIPTOR)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Baton",
            "version": VERSION,
            "description": "The conductor and viewer over HTTP, mapped from the protos' "
            "google.api.http annotations.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.found,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
