"""Reading the result a job leaves in BATON_RESULT_FILE (blocking; use a thread)."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import struct_pb2

RESULT_FILE = "result.json"
MAX_RESULT_BYTES = 64 * 1024


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
    if not isinstance(value, dict):
        return None, f"result.json holds a JSON {type(value).__name__}, not an object"
    result = struct_pb2.Struct()
    try:
        result.update(value)
    except (ValueError, TypeError) as exc:
        return None, f"result.json cannot be represented ({exc})"
    return result, ""
