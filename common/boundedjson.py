"""Bounded JSON: the one way Baton decodes JSON that a job or the disk hands it.

A job writes its result, its run directory and its checkpoints; other programs
may write status files; a registry file may be damaged. Any of them can hold
JSON nested deeply enough to exhaust a parser's stack (the json module raises
RecursionError, which no ``except ValueError`` catches) or to make a protobuf
message that no client can decode (upb stops at 100 message levels; a Struct
spends about three of them per JSON level), or be large enough to hurt. So
every such read goes through here, with a size cap chosen by the caller and a
depth cap of 32 levels, and every refusal is one error type, ``JsonRefused``,
whose message never quotes the input.

``JsonRefused`` is a ValueError, so readers that already turn ValueError away
("not a Job") turn these away too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import orjson

# Nesting allowed in any JSON Baton reads: a Job holding a Struct this deep
# still decodes with protobuf's default limits, and a standard client reads it.
MAX_DEPTH = 32
# Nodes visited when checking decoded data whose parts may be shared (YAML aliases).
MAX_NODES = 1_000_000


class JsonRefused(ValueError):
    """The data is not JSON Baton takes: too large, too deep, or not JSON.

    The message says which and names the file, never its content.
    """


def too_deep(value: Any, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> str | None:
    """Why decoded ``value`` is refused (deeper than ``max_depth``, or too many nodes), or None.

    Iterative, so nothing it checks can exhaust the stack; nodes are counted
    because YAML aliases can make a small file a tree of billions of nodes.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    nodes = 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if level > max_depth:
            return f"nests deeper than {max_depth} levels"
        nodes += len(children)
        if nodes > max_nodes:
            return f"holds more than {max_nodes} values"
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list | tuple))
    return None


def _could_be_deep(raw: bytes | str, max_depth: int) -> bool:
    """Whether ``raw`` has enough brackets to nest deeper than ``max_depth`` (C-speed counts)."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{") > max_depth
    return raw.count(b"[") + raw.count(b"{") > max_depth


def loads(raw: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "JSON") -> Any:
    """Decode ``raw``; JsonRefused (naming ``what``) when larger than ``max_bytes``, deeper
    than ``max_depth``, or not JSON.

    orjson decodes (about twice as fast as json; it stops at 1024 levels by
    itself). What it refuses as strict RFC 8259 (NaN, integers past 64 bits)
    goes to the json module, so what is accepted is what json alone accepts.
    """
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise JsonRefused(f"{what} is larger than {_size(max_bytes)}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            # UTF-8 only, as orjson and json_format take it (json would guess UTF-16 or -32).
            value = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        except RecursionError:
            raise JsonRefused(f"{what} nests deeper than {max_depth} levels") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise JsonRefused(f"{what} is not valid JSON ({_where(exc)})") from None
    if _could_be_deep(raw, max_depth):
        problem = too_deep(value, max_depth)
        if problem:
            raise JsonRefused(f"{what} {problem}")
    return value


def read_fd(fd: int, *, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` + 1 bytes of an open file: one more tells the caller it is too large.

    Reads no further than that, however large the file is.
    """
    chunks: list[bytes] = []
    left = max_bytes + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _where(exc: BaseException) -> str:
    """Where a decoding error is, without the text around it."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    return "malformed"


def _size(n: int) -> str:
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % 1024 == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"
