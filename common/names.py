"""The name rule for projects, groups, names, run ids and checkpoint suffixes."""

from __future__ import annotations

import re

from baton.common.errors import quote

NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(value: str) -> bool:
    """True when ``value`` is a name that can safely become one path component."""
    return bool(_NAME_RE.fullmatch(value)) and value not in {".", ".."}


def name_problem(value: str) -> str | None:
    """Why ``value`` is not a valid name, or None when it is."""
    if not value:
        return "must not be empty"
    if is_valid_name(value):
        return None
    return f"{quote(value)} does not match {NAME_PATTERN} (lowercase letters, digits, '.', '_', '-')"
