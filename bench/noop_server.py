"""A Conductor whose GetJob does nothing, for the scale benchmark's transport floor.

    python -m bench.noop_server      # prints its port, serves until killed

bench/scale.py points the same GetJob callers at it that it points at the
conductor: what they measure here is what this machine's grpc.aio, the
callers' own processes and two cores cost before Baton does any work, so the
conductor's figures beside it can be told apart from the floor under them.
"""

from __future__ import annotations

import asyncio

import grpc

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2


class _Noop(conductor_pb2_grpc.ConductorServicer):
    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> job_pb2.Job:
        return job_pb2.Job(id=request.job_id)


async def _serve() -> None:
    server = grpc.aio.server()
    conductor_pb2_grpc.add_ConductorServicer_to_server(_Noop(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(_serve())
