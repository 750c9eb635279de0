"""Seconds since the epoch of proto3-JSON timestamps ("2026-11-30T13:50:00.123456Z"), parsed
fast: a cold viewer parses four for each of a million runs. The viewer's scan parses them from
status files, and the run summaries' writer (``common.runsummary``) with the same function, so
a time taken from a summary is the very float a read of the file gives.
"""

from __future__ import annotations

import datetime
from typing import Any

_EPOCH = datetime.datetime(1970, 1, 1)
# Seconds at the start of each minute seen ("YYYY-MM-DDTHH:MM:" -> seconds):
# runs cluster in time, so most timestamps hit this cache.
_MINUTES: dict[str, float] = {}
_MINUTES_MAX = 200_000


def _minute(prefix: str) -> float:
    if prefix[16] != ":":
        raise ValueError(f"not an RFC 3339 time: {prefix!r}")
    seconds = (datetime.datetime.fromisoformat(prefix[:16]) - _EPOCH).total_seconds()
    if len(_MINUTES) >= _MINUTES_MAX:
        _MINUTES.clear()
    _MINUTES[prefix] = seconds
    return seconds


def rfc3339_seconds(text: Any) -> float:
    """Seconds since the epoch of a proto3-JSON timestamp; 0.0 when absent."""
    if not text:
        return 0.0
    if text.__class__ is str and len(text) >= 20 and text[-1] == "Z":
        # A minute seen before (so its "YYYY-MM-DDTHH:MM:" is valid): four of a
        # run's times cost a few dict reads. A million runs' cold scan reads four million.
        minute = _MINUTES.get(text[:17])
        if minute is not None:
            secs = text[17:19]
            if secs.isdigit():
                if len(text) == 20:
                    return minute + int(secs)
                if text[19] == "." and text[20:-1].isdigit():
                    return minute + int(secs) + float(text[19:-1])
    return _slow(text)


def _slow(text: Any) -> float:
    if not isinstance(text, str):
        raise ValueError("timestamp is not a string")
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T" and text[17:19].isdigit():
        # What json_format writes: UTC, whole seconds, then an optional fraction.
        prefix = text[:17]
        minute = _MINUTES.get(prefix)
        if minute is None:
            minute = _minute(prefix)
        whole = minute + int(text[17:19])
        if len(text) == 20:
            return whole
        if text[19] == "." and text[20:-1].isdigit():
            return whole + float(text[19:-1])
    return datetime.datetime.fromisoformat(text).timestamp()
