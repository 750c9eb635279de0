"""Every size limit Baton enforces on what clients send and what jobs write, in one place.

Both services and every reader import these, so a limit has one value and one
name. The numbers keep any one reply, event or list page inside the 4 MB a
default gRPC client accepts, and the conductor's memory proportional to the
number of jobs rather than to what they were sent with.
"""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20

# A job spec, as sent (spec_yaml text or the encoded JobSpec) and as normalised.
MAX_SPEC_BYTES = 1 * MiB
# Environment variables of one spec: how many, and their names and values together (UTF-8 bytes).
MAX_ENV_VARS = 256
MAX_ENV_BYTES = 128 * KiB
# One command line (`command`, or one step's).
MAX_COMMAND_BYTES = 64 * KiB
# A job's result.json (read when it ends) and its depth (a standard client decodes about 32 levels).
MAX_RESULT_BYTES = 64 * KiB
MAX_RESULT_DEPTH = 32
# One list page, whatever its page_size: below the 4 MB default receive limit of every
# gRPC client, with room for the response's other fields.
MAX_PAGE_BYTES = 3 * MiB
# An opaque page token: the longest one a list issues is a few hundred characters.
MAX_PAGE_TOKEN_CHARS = 2 * KiB

# Errors: the status message, the whole google.rpc.Status sent in the trailers
# (base64 on the wire, hence 3 KiB of protobuf for 4 KiB of metadata), and how
# much of any one input an error quotes.
MAX_ERROR_MESSAGE_BYTES = 1 * KiB
MAX_ERROR_STATUS_BYTES = 3 * KiB
MAX_QUOTED_CHARS = 200
