"""structlog set-up: JSON lines on stderr, with per-request context merged in."""

from __future__ import annotations

import json as stdlib_json
import logging
import sys
from typing import Any

import orjson
import structlog


def _dumps(obj: Any, **kw: Any) -> str:
    """A log line's JSON by orjson (a few times faster than the json module: a
    server writes a line for every call), by the json module when orjson refuses
    it (an integer past 64 bits). Unknown types go to structlog's fallback either way."""
    try:
        return orjson.dumps(obj, default=kw.get("default"), option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return stdlib_json.dumps(obj, **kw)


def configure(level: str = "info", *, json: bool = True) -> None:
    """Configure structlog once for a server process."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks as data, without locals: a local may hold anything read
            # from a job's files or a request, and a log line must not.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
