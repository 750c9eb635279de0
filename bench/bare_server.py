"""A bare grpc.aio server: the yardstick for the conductor's GetJob rate.

    python -m bench.bare_server JOB_FILE

It serves one unary method at the conductor's own path
(``/baton.v1.Conductor/GetJob``), through a generic handler with no
interceptors, health or reflection, and answers every call with the Job read
from JOB_FILE (serialized bytes). The client can then use the very same stub
and request against both servers. It prints its port on stdout and serves
until SIGTERM, SIGINT or the end of its stdin.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2


async def serve(job: job_pb2.Job) -> None:
    async def get_job(request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        return job

    handler = grpc.method_handlers_generic_handler(
        "baton.v1.Conductor",
        {
            "GetJob": grpc.unary_unary_rpc_method_handler(
                get_job,
                request_deserializer=pb.GetJobRequest.FromString,
                response_serializer=job_pb2.Job.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), stop.set)  # our parent went away
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sys.stdin.fileno())
        await server.stop(0.5)


def main() -> None:
    job = job_pb2.Job.FromString(Path(sys.argv[1]).read_bytes())
    asyncio.run(serve(job))


if __name__ == "__main__":
    main()
