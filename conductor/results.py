"""Reading the result a job leaves in BATON_RESULT_FILE (blocking; use a thread).

The file is the job's to write, so anything may be there: JSON nested deep
enough to exhaust a parser, a file far too large, a link out of the tree, a
FIFO that would block the reading thread for good. Each is refused with a
reason that goes on the job (the job still ends with its true state); none
keeps the job from ending or its slot from being released.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import struct_pb2

from baton.common import boundedjson
from baton.common.safeopen import UnsafePath, read_beneath

RESULT_FILE = "result.json"
MAX_RESULT_BYTES = 64 * 1024
# Deeper than this is refused: a Job holding it must still decode everywhere.
MAX_RESULT_DEPTH = boundedjson.MAX_DEPTH


def read_result(path: Path, root: Path) -> tuple[struct_pb2.Struct | None, str]:
    """(the result, "") when valid; (None, why) when invalid; (None, "") when absent.

    ``path`` must resolve inside ``root`` (the status directory).
    """
    try:
        data = read_beneath(root, path, MAX_RESULT_BYTES)
    except FileNotFoundError:
        return None, ""
    except UnsafePath as exc:
        return None, f"result.json {exc.why}"
    except OSError as exc:
        return None, f"result.json could not be read ({exc.strerror})"
    try:
        value = boundedjson.loads(
            data, max_bytes=MAX_RESULT_BYTES, max_depth=MAX_RESULT_DEPTH, what=RESULT_FILE
        )
    except boundedjson.JsonRefused as exc:
        return None, str(exc)
    if not isinstance(value, dict):
        return None, f"result.json holds a JSON {type(value).__name__}, not an object"
    result = struct_pb2.Struct()
    try:
        result.update(value)
    except (ValueError, TypeError, RecursionError) as exc:
        return None, f"result.json cannot be represented ({type(exc).__name__})"
    return result, ""
