"""What the ``baton`` command's exit status tells a script.

    0    done; for `submit --follow`, `logs -f` and `wait`: the job SUCCEEDED
    1-255  `submit --follow` / `logs -f`: the job FAILED with this exit code
         (128 + N when signal N ended it; 1 when it has neither)
    2    bad usage or a request the service rejected (INVALID_ARGUMENT)
    3    no such job, run or checkpoint (NOT_FOUND)
    4    not in this state (FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE)
    5    not allowed (UNAUTHENTICATED, PERMISSION_DENIED)
    69   the service cannot be reached (UNAVAILABLE)
    70   the service failed (INTERNAL and any other code)
    75   timed out (DEADLINE_EXCEEDED)
    80   the job was CANCELLED
    130  interrupted (Ctrl-C)

A job's own exit code can collide with these numbers: a script that must
tell them apart reads ``--json`` output.
"""

from __future__ import annotations

from typing import Any

import grpc

from baton.v1 import job_pb2

OK = 0
FAILED = 1
USAGE = 2
NOT_FOUND = 3
WRONG_STATE = 4
NOT_ALLOWED = 5
UNAVAILABLE = 69
SERVER_ERROR = 70
TIMEOUT = 75
CANCELLED = 80
INTERRUPTED = 130

_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: USAGE,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: WRONG_STATE,
    grpc.StatusCode.ALREADY_EXISTS: WRONG_STATE,
    grpc.StatusCode.OUT_OF_RANGE: WRONG_STATE,
    grpc.StatusCode.UNAUTHENTICATED: NOT_ALLOWED,
    grpc.StatusCode.PERMISSION_DENIED: NOT_ALLOWED,
    grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: TIMEOUT,
    grpc.StatusCode.CANCELLED: INTERRUPTED,
}


def for_status(code: grpc.StatusCode) -> int:
    """The exit status for a call that failed with ``code``."""
    return _BY_CODE.get(code, SERVER_ERROR)


def for_outcome(ended: Any) -> int:
    """The exit status for a job that ended: a ``Job`` or a followed log's ``complete`` ``LogChunk``."""
    if ended.state == job_pb2.JOB_STATE_SUCCEEDED:
        return OK
    if ended.state == job_pb2.JOB_STATE_CANCELLED:
        return CANCELLED
    if ended.HasField("exit_code") and ended.exit_code:
        return ended.exit_code & 0xFF or FAILED
    if ended.HasField("signal") and ended.signal:
        return 128 + ended.signal
    return FAILED
