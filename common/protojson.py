"""A fast reader for the proto3 JSON mapping, for reading many status.json files.

``json_format.Parse`` costs about 200 µs per Job, which makes listing a page of
runs from status files slow. This reader turns the decoded JSON into keyword
arguments for the message constructor (which takes enum names and nested
dicts itself) using a per-message plan built once from the descriptors, so it
follows the protos and never drifts from them. Values it does not handle
itself (Struct and other well-known types) go through ``json_format``; if the
constructor refuses anything, the whole object does. Unknown fields are
ignored, as readers of status.json must: a newer conductor may add some.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
_FD = descriptor.FieldDescriptor
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}
_EPOCH = datetime.datetime(1970, 1, 1)
_SLOW = "slow"
# json name -> (field name, converter, or None to pass the value as it is, or _SLOW)
_Plan = dict[str, tuple[str, Any]]
_PLANS: dict[str, _Plan] = {}


def _seconds_nanos(text: str) -> dict[str, int]:
    """A proto3-JSON timestamp as Timestamp fields."""
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T":
        whole = int((datetime.datetime.fromisoformat(text[:19]) - _EPOCH).total_seconds())
        frac = text[20:-1] if text[19] == "." else ""
        if text[19] in ".Z" and (not frac or frac.isdigit()):
            return {"seconds": whole, "nanos": int((frac + "000000000")[:9]) if frac else 0}
    from google.protobuf import timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    try:
        ts.FromJsonString(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    return {"seconds": ts.seconds, "nanos": ts.nanos}


def _duration(text: str) -> dict[str, int]:
    from google.protobuf import duration_pb2

    d = duration_pb2.Duration()
    try:
        d.FromJsonString(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    return {"seconds": d.seconds, "nanos": d.nanos}


def _each(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda values: [convert(v) for v in values]


def _plan(desc: Any) -> _Plan:
    plan = _PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    plan = {}
    _PLANS[desc.full_name] = plan  # before recursing: messages may nest themselves
    for f in desc.fields:
        convert: Any = None
        if f.type == _FD.TYPE_MESSAGE:
            mt: Any = f.message_type
            full = mt.full_name
            if mt.GetOptions().map_entry:
                convert = None if mt.fields_by_name["value"].type == _FD.TYPE_STRING else _SLOW
            elif full == "google.protobuf.Timestamp":
                convert = _seconds_nanos
            elif full == "google.protobuf.Duration":
                convert = _duration
            elif full.startswith("google.protobuf."):
                convert = _SLOW
            else:
                sub = _plan(mt)
                convert = lambda v, sub=sub: _kwargs(sub, v)[0]  # noqa: E731
        elif f.type in _INT64:
            convert = int
        elif f.type == _FD.TYPE_BYTES:
            convert = base64.b64decode
        if convert is not None and convert is not _SLOW and f.is_repeated and f.type == _FD.TYPE_MESSAGE:
            convert = _each(convert) if not f.message_type.GetOptions().map_entry else convert
        elif convert is not None and convert is not _SLOW and f.is_repeated:
            convert = _each(convert)
        plan[f.json_name] = (f.name, convert)
        plan[f.name] = (f.name, convert)
    return plan


def _kwargs(plan: _Plan, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Constructor arguments, and the fields left for json_format (nested: none)."""
    out: dict[str, Any] = {}
    slow: dict[str, Any] = {}
    for key, value in data.items():
        entry = plan.get(key)
        if entry is None or value is None:
            continue
        name, convert = entry
        if convert is None:
            out[name] = value
        elif convert is _SLOW:
            slow[key] = value
        else:
            out[name] = convert(value)
    return out, slow


def parse_dict(cls: type[M], data: dict[str, Any]) -> M:
    """Build a ``cls`` from decoded proto3 JSON. Raises ValueError when it is not one."""
    try:
        kwargs, slow = _kwargs(_plan(cls.DESCRIPTOR), data)
        msg = cls(**kwargs)
        if slow:
            json_format.ParseDict(slow, msg, ignore_unknown_fields=True)
        return msg
    except (TypeError, ValueError, KeyError, AttributeError, json_format.ParseError):
        pass
    # Something the fast path does not take (a nested well-known type, an enum
    # given by number inside a map...): the reference parser decides.
    try:
        return json_format.ParseDict(data, cls(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise ValueError(str(exc)) from None


# ------------------------------------------------------------------ shapes

_INT32 = {_FD.TYPE_INT32, _FD.TYPE_UINT32, _FD.TYPE_SINT32, _FD.TYPE_FIXED32, _FD.TYPE_SFIXED32}
_FLOATS = {_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE}
_SPECIAL_FLOATS = {"NaN", "Infinity", "-Infinity"}
# json name -> (kind, repeated, nested descriptor, types that always fit a single value)
_Shape = dict[str, tuple[str, bool, Any, frozenset[type]]]
_QUICK: dict[str, frozenset[type]] = {
    "str": frozenset({str}),
    "int": frozenset({int}),  # type() is exact: a bool is no int here
    "enum": frozenset({str, int}),
    "bool": frozenset({bool}),
    "float": frozenset({int, float}),
    "map": frozenset({dict}),
    "message": frozenset({dict}),
}
_SHAPES: dict[str, _Shape] = {}


def _shape(desc: Any) -> _Shape:
    shape = _SHAPES.get(desc.full_name)
    if shape is not None:
        return shape
    shape = {}
    _SHAPES[desc.full_name] = shape
    for f in desc.fields:
        nested = None
        if f.type == _FD.TYPE_MESSAGE:
            mt: Any = f.message_type
            if mt.GetOptions().map_entry:
                kind = "map"
            elif mt.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
                kind = "str"
            elif mt.full_name == "google.protobuf.Struct":
                kind = "map"
            elif mt.full_name.startswith("google.protobuf."):
                kind = "any"
            else:
                kind, nested = "message", mt
        elif f.type == _FD.TYPE_BOOL:
            kind = "bool"
        elif f.type in _INT64 or f.type in _INT32:
            kind = "int"
        elif f.type in _FLOATS:
            kind = "float"
        elif f.type == _FD.TYPE_ENUM:
            kind = "enum"
        else:
            kind = "str"  # strings, and bytes in base64
        repeated = f.is_repeated and kind != "map"
        entry = (kind, repeated, nested, frozenset() if repeated else _QUICK.get(kind, frozenset()))
        shape[f.json_name] = entry
        shape[f.name] = entry
    return shape


def _fits(kind: str, nested: Any, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "int":
        if isinstance(value, bool):
            return False
        return isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
    if kind == "enum":
        return isinstance(value, str | int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "float":
        return (isinstance(value, int | float) and not isinstance(value, bool)) or value in _SPECIAL_FLOATS
    if kind == "map":
        return isinstance(value, dict)
    if kind == "message":
        # One level only: nested fields are checked when the message is built.
        return isinstance(value, dict)
    return True


def _check(shape: _Shape, data: dict[str, Any]) -> bool:
    for key, value in data.items():
        entry = shape.get(key)
        if entry is None or value is None:
            continue  # unknown fields are allowed; null means unset
        kind, repeated, nested, quick = entry
        if type(value) in quick:
            continue  # the common case, decided by one lookup
        if repeated:
            if not isinstance(value, list) or not all(_fits(kind, nested, v) for v in value):
                return False
        elif not _fits(kind, nested, value):
            return False
    return True


def check_shape(cls: type[Message], data: dict[str, Any]) -> None:
    """Raise ValueError unless each known top-level field of ``data`` has a JSON type it takes.

    Much cheaper than building the message (a few microseconds): readers of
    many files use it to turn away a file that could never become one.
    """
    if not _check(_shape(cls.DESCRIPTOR), data):
        raise ValueError(f"not a {cls.DESCRIPTOR.full_name}: a field has the wrong JSON type")
