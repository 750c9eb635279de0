"""Reading the result a job leaves in BATON_RESULT_FILE (blocking; use a thread)."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import struct_pb2

RESULT_FILE = "result.json"
MAX_RESULT_BYTES = 64 * 1024
# Deeper than this is refused: a job's file must not exhaust the conductor's stack.
MAX_RESULT_DEPTH = 32


def _depth(value: object) -> int:
    """How deeply ``value`` nests lists and objects (iterative: no recursion to exhaust)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_RESULT_DEPTH:
            break
        stack.extend((child, level + 1) for child in children)
    return deepest


def read_result(path: Path) -> tuple[struct_pb2.Struct | None, str]:
    """(the result, "") when valid; (None, why) when invalid; (None, "") when absent."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RESULT_BYTES + 1)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"result.json could not be read ({exc.strerror})"
    if len(data) > MAX_RESULT_BYTES:
        return None, f"result.json is larger than {MAX_RESULT_BYTES // 1024} KiB"
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"result.json is not valid JSON ({exc})"
    except RecursionError:
        return None, f"result.json nests deeper than {MAX_RESULT_DEPTH} levels"
    if _depth(value) > MAX_RESULT_DEPTH:
        return None, f"result.json nests deeper than {MAX_RESULT_DEPTH} levels"
    if not isinstance(value, dict):
        return None, f"result.json holds a JSON {type(value).__name__}, not an object"
    result = struct_pb2.Struct()
    try:
        result.update(value)
    except (ValueError, TypeError) as exc:
        return None, f"result.json cannot be represented ({exc})"
    return result, ""
