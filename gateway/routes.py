"""HTTP routes read from the protos' ``google.api.http`` annotations (AIP-127).

A new RPC gets its route by annotation: nothing here names an RPC. Templates
follow the annotation syntax as far as Baton's protos use it: literal
segments, ``{field}`` (one segment), ``{field=**}`` (the rest of the path) and
a trailing ``:verb`` (AIP-136 custom methods). A verb is split off the last
segment before matching, so ``/v1/jobs:watch`` never matches
``/v1/jobs/{job_id}``; names and ids never contain a colon.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, message, message_factory

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")


@dataclass(frozen=True)
class Template:
    """A compiled path template: a pattern for the path, and the verb after it."""

    text: str
    pattern: re.Pattern[str]
    verb: str
    # Group name in the pattern -> field path in the request message.
    fields: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        path, verb = _split_verb(text)
        fields: list[tuple[str, str]] = []
        parts: list[str] = []
        for segment in path.strip("/").split("/"):
            found = _VARIABLE.fullmatch(segment)
            if found is None:
                if "{" in segment or "*" in segment:
                    raise ValueError(f"{text}: unsupported segment {segment!r}")
                parts.append(re.escape(segment))
                continue
            field_path, sub = found.group(1), found.group(2) or "*"
            if sub not in ("*", "**"):
                raise ValueError(f"{text}: unsupported variable pattern {sub!r}")
            group = f"v{len(fields)}"
            fields.append((group, field_path))
            parts.append(f"(?P<{group}>[^/]+)" if sub == "*" else f"(?P<{group}>[^/]+(?:/[^/]+)*)")
        return cls(text, re.compile("/" + "/".join(parts)), verb, tuple(fields))

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The field values bound by ``raw_path`` (still percent-encoded), or None."""
        path, verb = _split_verb(raw_path)
        if verb != self.verb:
            return None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {field_path: unquote(found.group(group)) for group, field_path in self.fields}


def _split_verb(path: str) -> tuple[str, str]:
    head, _, last = path.rpartition("/")
    if ":" not in last:
        return path, ""
    last, _, verb = last.partition(":")
    return f"{head}/{last}", verb


@dataclass(frozen=True)
class Route:
    """One HTTP binding of one RPC."""

    http_method: str
    template: Template
    # "" (no body), "*" (the whole request) or the name of the field the body fills.
    body: str
    backend: str
    method: descriptor.MethodDescriptor

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def request_class(self) -> type[message.Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[message.Message]:
        return message_factory.GetMessageClass(self.method.output_type)


def _bindings(rule: http_pb2.HttpRule) -> Iterable[tuple[str, str, str]]:
    kind = rule.WhichOneof("pattern")
    if kind is not None:
        path = rule.custom.path if kind == "custom" else getattr(rule, kind)
        verb = rule.custom.kind if kind == "custom" else kind
        yield verb.upper(), path, rule.body
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


def routes_of(services: Iterable[tuple[str, descriptor.ServiceDescriptor]]) -> list[Route]:
    """Every HTTP binding of every RPC of ``services`` (backend name, descriptor)."""
    routes = []
    for backend, service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            for http_method, path, body in _bindings(options.Extensions[annotations_pb2.http]):
                routes.append(Route(http_method, Template.parse(path), body, backend, method))
    return routes


class NoRoute(LookupError):
    """No route has this path."""


class WrongMethod(LookupError):
    """Routes have this path, but not for this HTTP method."""

    def __init__(self, allowed: list[str]) -> None:
        super().__init__(", ".join(allowed))
        self.allowed = allowed


class Router:
    """Finds the route of a request."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    def find(self, http_method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route and its path variables; NoRoute or WrongMethod when there is none."""
        allowed: list[str] = []
        for route in self.routes:
            bound = route.template.match(raw_path)
            if bound is None:
                continue
            if route.http_method == http_method or (http_method == "HEAD" and route.http_method == "GET"):
                return route, bound
            allowed.append(route.http_method)
        if allowed:
            raise WrongMethod(sorted(set(allowed)))
        raise NoRoute(raw_path)
