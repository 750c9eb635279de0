"""A conductor whose book holds many ended jobs, for timing a WatchJobs snapshot.

``python -m bench.seeded_conductor HOME N``: starts a conductor on HOME, runs
one real job to have a realistic record, then puts N copies of it (new ids and
run ids, SUCCEEDED) into the book that snapshots read, and prints its address.
It serves until its stdin closes. White-box: the copies are in memory only,
never in the registry or on disk, because submitting 100,000 jobs through the
API would take far longer than the snapshot being timed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
import structlog

from baton.conductor.config import ConductorConfig
from baton.conductor.server import start
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2

SEQ_BASE = 10_000_000


async def serve(home: Path, count: int) -> None:
    running = await start(ConductorConfig(listen="127.0.0.1:0", home=home, max_running=1))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = conductor_pb2_grpc.ConductorStub(channel)
            job = await stub.SubmitJob(pb.SubmitJobRequest(spec_yaml="name: seed\ncommand: 'true'\n"))
            while job.state != job_pb2.JOB_STATE_SUCCEEDED:
                await asyncio.sleep(0.02)
                job = await stub.GetJob(pb.GetJobRequest(job_id=job.id))
        book = running.lifecycle.book
        for i in range(count):
            copy = job_pb2.Job()
            copy.CopyFrom(job)
            copy.id = f"{job.id[:-6]}{i:06d}"
            copy.run_id = copy.id
            copy.run_dir = f"{job.run_dir.rsplit('/', 1)[0]}/{copy.id}"
            book.put(SEQ_BASE + i, copy)
        print(running.address, flush=True)
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await running.stop(0.5)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    asyncio.run(serve(Path(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
