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
from typing import Any

from baton.common.errors import invalid_field

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
    """The position in ``token``, or None for an empty token. Raises InvalidArgument."""
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        fingerprint, position = body["f"], body["p"]
    except (ValueError, KeyError, TypeError):
        raise invalid_field("page_token", "is not a page token from this list") from None
    if fingerprint != _fingerprint(scope, filters):
        raise invalid_field("page_token", "was issued for a different list or different filters")
    return position
