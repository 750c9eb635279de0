"""The Python client for Baton, and the ``baton`` command line.

Two services, each with a blocking and an asyncio client that share one
implementation (the blocking one runs the asyncio one on a private loop):

    from baton.client import ConductorClient, ViewerClient              # blocking
    from baton.client import AsyncConductorClient, AsyncViewerClient    # asyncio

Results are the protobuf messages of ``protos/baton/v1``; failures raise the
``BatonError`` hierarchy of ``client.errors``.
"""

from baton.client.aio import FINAL_STATES, AsyncConductorClient, AsyncViewerClient
from baton.client.connection import ClientOptions, RetryPolicy, TlsSettings
from baton.client.errors import (
    AlreadyExists,
    BatonError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from baton.client.streams import LogStream, ResumableStream, WatchStream
from baton.client.sync import (
    BlockingLogStream,
    BlockingStream,
    BlockingWatchStream,
    ConductorClient,
    ViewerClient,
)

__all__ = [
    "FINAL_STATES",
    "AlreadyExists",
    "AsyncConductorClient",
    "AsyncViewerClient",
    "BatonError",
    "BlockingLogStream",
    "BlockingStream",
    "BlockingWatchStream",
    "Cancelled",
    "ClientOptions",
    "ConductorClient",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "LogStream",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "ResumableStream",
    "RetryPolicy",
    "TlsSettings",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "ViewerClient",
    "WatchStream",
]
