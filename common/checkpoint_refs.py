"""The one checkpoint a ref names, and the errors both services give when it names none or several.

A bare suffix may match a plain-layout checkpoint and checkpoints of several
runs; the caller finds the matches (on disk, or in the viewer's index) and
this decides, so the conductor and the viewer answer the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from baton.common.errors import FieldViolation, InvalidArgument, NotFound

T = TypeVar("T")
# An ambiguous ref's error names at most this many of the checkpoints it matches.
AMBIGUOUS_SHOWN = 10


def one_checkpoint(found: Sequence[T], ref: str, job: str, field: str, ref_of: Callable[[T], str]) -> T:
    """The single match; NOT_FOUND when there is none, INVALID_ARGUMENT naming ``field`` when several.

    ``ref`` is a valid ref here (checked by the caller), so an error quotes at
    most MAX_REF_LENGTH characters of input.
    """
    if not found:
        raise NotFound(
            f"no checkpoint {ref!r} for {job}", reason="CHECKPOINT_NOT_FOUND", metadata={field: ref}
        )
    if len(found) == 1:
        return found[0]
    matches = [ref_of(f) for f in found]
    shown = matches[:AMBIGUOUS_SHOWN]
    listing = ", ".join(shown) + (
        f" and {len(matches) - len(shown)} more" if len(matches) > len(shown) else ""
    )
    why = f"{ref!r} matches {len(matches)} checkpoints of {job} ({listing}); give RUN_ID/SUFFIX"
    raise InvalidArgument(
        message=f"{field}: {why}",
        reason="CHECKPOINT_AMBIGUOUS",
        metadata={field: ref, "matches": ",".join(shown), "match_count": str(len(matches))},
        field_violations=[FieldViolation(field, why)],
    )
