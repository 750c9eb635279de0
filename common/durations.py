"""Human durations ("90s", "2h", "1h30m", "7d") to seconds and back, and proto Durations to seconds."""

from __future__ import annotations

import math
import re

from google.protobuf import duration_pb2

from baton.common.errors import invalid_field, quote

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
# The longest duration google.protobuf.Duration holds (about 10,000 years): every
# duration Baton accepts must fit the message it is stored and sent in.
MAX_DURATION_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``; a bare number is seconds. Raises ValueError.

    Refuses what no Duration message can hold: negative, not finite, or past
    MAX_DURATION_SECONDS, and anything that is neither a string nor a number.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError("expected a duration such as 90s, 2h or 7d")
    if isinstance(text, int | float):
        total = float(text) if not isinstance(text, int) or abs(text) <= 10**18 else math.inf
    else:
        total = _parse_text(text)
    if math.isnan(total):
        raise ValueError("expected a duration such as 90s, 2h or 7d")
    if total < 0:
        raise ValueError("must not be negative")
    if total > MAX_DURATION_SECONDS:
        raise ValueError(f"must be at most {MAX_DURATION_SECONDS} s (about 10,000 years)")
    return total


def _parse_text(text: str) -> float:
    s = text.strip()
    if len(s) > 64:
        raise ValueError(f"{quote(text)} is not a duration such as 90s, 2h, 1h30m or 7d")
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"{quote(text)} is not a duration such as 90s, 2h, 1h30m or 7d")
    return total


def seconds_of(duration: duration_pb2.Duration, field: str) -> float:
    """The seconds in a Duration field of a request; InvalidArgument naming ``field``.

    A Duration on the wire can hold any int64 and int32: refuse what the
    Duration rules (and timedelta) do not allow, and negative values.
    """
    seconds, nanos = duration.seconds, duration.nanos
    if not -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS or not -_MAX_NANOS <= nanos <= _MAX_NANOS:
        raise invalid_field(field, f"is out of range (at most {MAX_DURATION_SECONDS} seconds)")
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        raise invalid_field(field, "seconds and nanos must have the same sign")
    if seconds < 0 or nanos < 0:
        raise invalid_field(field, "must not be negative")
    return seconds + nanos / 1e9


def format_duration(seconds: float) -> str:
    """A short human form: 850ms, 42s, 3m05s, 2h10m, 3d4h."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"
