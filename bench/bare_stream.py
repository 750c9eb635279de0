"""A bare grpc.aio server streaming one file as LogChunk messages of 64 KiB.

The yardstick for StreamLogs throughput: same machine, same chunk size, same
message, no tailer, no lifecycle. The file is read into memory first, so this
is the fastest a grpc.aio stream of these chunks can go. Prints its address.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc

from baton.v1 import job_pb2

CHUNK = 64 * 1024


async def serve(data: bytes) -> None:
    async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for offset in range(0, len(data), CHUNK):
            yield job_pb2.LogChunk(offset=offset, data=data[offset : offset + CHUNK]).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {"Stream": grpc.unary_stream_rpc_method_handler(stream)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    asyncio.run(serve(data))


if __name__ == "__main__":
    main()
