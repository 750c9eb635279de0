"""Page tokens, the same for every list RPC of both services.

A token is opaque to clients: it records where the last page stopped and a
fingerprint of the filters, so a token used with other filters (or made up,
or from another service) is refused with INVALID_ARGUMENT instead of giving a
silently wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

from google.protobuf import message

from baton.common.errors import invalid_field
from baton.common.limits import MAX_PAGE_BYTES, MAX_PAGE_TOKEN_CHARS

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """AIP-158: 0 means the default, too large is coerced down, negative is an error."""
    if requested < 0:
        raise invalid_field("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(scope: str, filters: Any) -> str:
    raw = json.dumps([scope, filters], sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(scope: str, filters: Any, position: Any) -> str:
    """A token for the page after ``position`` of the list named ``scope``."""
    body = json.dumps({"f": _fingerprint(scope, filters), "p": position}).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_token(scope: str, filters: Any, token: str) -> Any:
    """The position in ``token``, or None for an empty token. Raises InvalidArgument.

    A position is what ``encode_token`` writes: a string, a number or a flat list
    of them, numbers that fit a float and an int64. Anything else (nested lists,
    huge integers, a token longer than any list issues) is refused here, so no
    list has to guard against them.
    """
    if not token:
        return None
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise invalid_field("page_token", "is not a page token from this list (too long)")
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        fingerprint, position = body["f"], body["p"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise invalid_field("page_token", "is not a page token from this list") from None
    if fingerprint != _fingerprint(scope, filters):
        raise invalid_field("page_token", "was issued for a different list or different filters")
    items = position if isinstance(position, list) else [position]
    if not all(_plain(item) for item in items):
        raise invalid_field("page_token", "is not a page token from this list")
    return position


def _plain(value: Any) -> bool:
    """A string, or a number a float and an int64 both hold (no bool, no NaN or infinity)."""
    if isinstance(value, str):
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # abs() first: math.isfinite cannot take an int past a float's range.
    return abs(value) < 2**63 and (isinstance(value, int) or math.isfinite(value))


class PageBytes:
    """A list page's encoded size, so a page stops before MAX_PAGE_BYTES whatever its page_size.

    A page then always fits the 4 MB a default gRPC client accepts. The first
    item is always taken (each is bounded far below the limit), so a list
    always moves on.
    """

    def __init__(self, limit: int = MAX_PAGE_BYTES) -> None:
        self._limit = limit
        self._used = 0

    def take(self, item: message.Message) -> bool:
        """Count ``item`` into the page; False (counting nothing) when it would not fit."""
        body = item.ByteSize()
        # The item's bytes, plus its field tag and length prefix (at most 6 bytes).
        size = body + 6
        if self._used and self._used + size > self._limit:
            return False
        self._used += size
        return True
