"""Issue 4's figures: log latency and throughput, status-event latency, fan-out.

Every job here stamps its lines with ``time.time_ns()`` when it writes them;
subscribers compare with the clock when the line arrives (one machine, one
clock). Throughput is measured beside a bare grpc.aio server that streams the
same file in the same chunk size, in the same run.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from bench.history import generate
from bench.jobs import spec_yaml
from bench.procs import Conductor
from bench.report import Json, Target, distribution, figure, log, section

S = job_pb2
CHUNK = 64 * 1024

# A job printing "<ns> <i>" lines, `count` of them, `interval` seconds apart.
_STAMPER = (
    "python3 -c 'import sys,time\n"
    "n, gap = int(sys.argv[1]), float(sys.argv[2])\n"
    "for i in range(n):\n"
    "    print(time.time_ns(), i, flush=True)\n"
    "    time.sleep(gap)\n' {count} {interval}"
)


def stamper(count: int, interval: float) -> str:
    return _STAMPER.format(count=count, interval=interval)


async def follow_lines(address: str, job_id: str, latencies: list[float]) -> int:
    """Follow a job's log; append each stamped line's latency (ms). Returns bytes read."""
    received = 0
    pending = b""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = conductor_pb2_grpc.ConductorStub(channel)
        async for chunk in stub.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=True)):
            now = time.time_ns()
            if not chunk.data:
                continue
            received += len(chunk.data)
            pending += chunk.data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                stamp = line.split(b" ", 1)[0]
                if stamp.isdigit():
                    latencies.append((now - int(stamp)) / 1e6)
    return received


def _wait_running(c: Conductor, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while c.stub.GetJob(pb.GetJobRequest(job_id=job_id)).state == S.JOB_STATE_QUEUED:
        if time.monotonic() > deadline:
            raise RuntimeError("job did not start")
        time.sleep(0.005)


def log_latency(lines: int) -> Json:
    """A line written by a job to the same line received by one follower."""
    with Conductor("log-latency", max_running=4) as c:
        job = c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml("stamper", stamper(lines, 0.01))))
        latencies: list[float] = []
        asyncio.run(follow_lines(c.address, job.id, latencies))
    log(f"log latency: {len(latencies)} lines")
    return section(
        "Time from a line written by a job (its own time_ns stamp) to that line received by a "
        "StreamLogs follower on loopback; one line every 10 ms.",
        distribution(
            "latency_",
            latencies,
            "log line latency",
            p50_target=Target("<", 5.0, "ms", "issue 4"),
            p95_target=Target("<", 20.0, "ms", "issue 4"),
        ),
    )


def fanout(subscribers: int, lines: int) -> Json:
    """The same, seen by each of many followers of one job."""
    with Conductor("fanout", max_running=4) as c:
        blocker = c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml("gate", "sleep 30")))
        _wait_running(c, blocker.id)
        job = c.stub.SubmitJob(
            pb.SubmitJobRequest(spec_yaml=spec_yaml("fanout", f"sleep 2; {stamper(lines, 0.02)}"))
        )

        async def run() -> list[list[float]]:
            per: list[list[float]] = [[] for _ in range(subscribers)]
            await asyncio.gather(*(follow_lines(c.address, job.id, per[i]) for i in range(subscribers)))
            return per

        per = asyncio.run(run())
    everyone = [v for lat in per for v in lat]
    complete = sum(1 for lat in per if len(lat) == lines)
    worst = sorted(sorted(lat)[int(0.95 * (len(lat) - 1))] for lat in per if lat)
    log(f"fan-out: {complete}/{subscribers} subscribers got every line")
    figures = distribution("latency_", everyone, f"log line latency over {subscribers} subscribers")
    figures["subscribers_with_every_line"] = figure(
        complete, "subscribers", subscribers, "subscribers that received every line"
    )
    figures["worst_subscriber_p95"] = figure(
        worst[-1] if worst else float("nan"), "ms", len(worst), "the highest per-subscriber p95"
    )
    return section(
        f"{subscribers} StreamLogs followers on one job writing a stamped line every 20 ms; "
        "latency from the write to each subscriber's receipt.",
        figures,
    )


async def _drain(address: str, request: object, method: str) -> tuple[int, str]:
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 16 << 20)]
    ) as channel:
        call = channel.unary_stream(method, request_serializer=lambda r: r.SerializeToString())
        digest = hashlib.sha256()
        total = 0
        async for raw in call(request):
            chunk = job_pb2.LogChunk.FromString(raw)
            total += len(chunk.data)
            digest.update(chunk.data)
        return total, digest.hexdigest()


def _timed_drain(address: str, request: object, method: str, rounds: int) -> tuple[float, int, str]:
    best = float("inf")
    total, digest = 0, ""
    for _ in range(rounds):
        t0 = time.perf_counter()
        total, digest = asyncio.run(_drain(address, request, method))
        best = min(best, time.perf_counter() - t0)
    return best, total, digest


def log_throughput(megabytes: int, rounds: int) -> Json:
    """StreamLogs of a finished job's log vs. a bare grpc.aio stream of the same file."""
    size = megabytes * 1024 * 1024
    command = f"head -c {size} /dev/urandom | base64 -w 120"
    with Conductor("log-throughput", max_running=2) as c:
        job = c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml("writer", command)))
        deadline = time.monotonic() + 120
        while c.stub.GetJob(pb.GetJobRequest(job_id=job.id)).state not in (
            S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED
        ):  # fmt: skip
            if time.monotonic() > deadline:
                raise RuntimeError("the writer job did not finish")
            time.sleep(0.05)
        log_path = Path(c.stub.GetJob(pb.GetJobRequest(job_id=job.id)).run_dir) / "output.log"
        file_bytes = log_path.stat().st_size
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_stream", str(log_path)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert bare.stdout is not None
            bare_address = bare.stdout.readline().decode().strip()
            ours_s, ours_n, ours_hash = _timed_drain(
                c.address, pb.StreamLogsRequest(job_id=job.id), "/baton.v1.Conductor/StreamLogs", rounds
            )
            bare_s, bare_n, bare_hash = _timed_drain(
                bare_address, pb.StreamLogsRequest(job_id=job.id), "/bench.Bare/Stream", rounds
            )
        finally:
            bare.terminate()
            bare.wait(10)
    if not (ours_n == bare_n == file_bytes and ours_hash == bare_hash):
        raise RuntimeError(f"streams differ: ours {ours_n} B, bare {bare_n} B, file {file_bytes} B")
    ours_mb = ours_n / ours_s / 1e6
    bare_mb = bare_n / bare_s / 1e6
    log(f"log throughput: {ours_mb:.0f} MB/s vs bare {bare_mb:.0f} MB/s")
    return section(
        f"Streaming a finished job's {megabytes} MiB output.log (StreamLogs from offset 0) vs. a bare "
        "grpc.aio server streaming the same file in 64 KiB chunks; best of "
        f"{rounds} rounds each, same client, sha256 checked equal.",
        {
            "streamlogs_mb_per_s": figure(ours_mb, "MB/s", rounds, "StreamLogs throughput"),
            "bare_mb_per_s": figure(bare_mb, "MB/s", rounds, "bare grpc.aio stream throughput"),
            "ratio": figure(
                ours_mb / bare_mb, "ratio", rounds, "StreamLogs / bare", Target(">=", 0.8, "ratio", "issue 4")
            ),
        },
    )


def event_latency(changes: int) -> Json:
    """A job's state change (its update_time) to the event's receipt by a watcher."""
    with Conductor("event-latency", max_running=1) as c:
        blocker = c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml("gate", "sleep 60")))
        _wait_running(c, blocker.id)
        latencies: list[float] = []

        async def watch(ready: asyncio.Event, want: int) -> None:
            async with grpc.aio.insecure_channel(c.address) as channel:
                stub = conductor_pb2_grpc.ConductorStub(channel)
                seen = 0
                async for response in stub.WatchJobs(pb.WatchJobsRequest(since_revision=0, name="probe")):
                    now = time.time_ns()
                    for ev in response.events:
                        if ev.type == S.JOB_EVENT_TYPE_SNAPSHOT_END:
                            ready.set()
                        elif ev.type == S.JOB_EVENT_TYPE_UPDATED:
                            latencies.append((now - ev.job.update_time.ToNanoseconds()) / 1e6)
                            seen += 1
                            if seen >= want:
                                return

        async def run() -> None:
            ready = asyncio.Event()
            watcher = asyncio.create_task(watch(ready, 2 * changes))
            await ready.wait()
            async with grpc.aio.insecure_channel(c.address) as channel:
                stub = conductor_pb2_grpc.ConductorStub(channel)
                for _ in range(changes):
                    # Submit (QUEUED behind the gate) and cancel: two changes each.
                    job = await stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml("probe", "true")))
                    await stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
                    await asyncio.sleep(0.005)
            await asyncio.wait_for(watcher, 60)

        asyncio.run(run())
    log(f"event latency: {len(latencies)} events")
    return section(
        "Time from a job's change (its update_time, set when the conductor commits it) to the "
        "WatchJobs event's receipt by a subscriber; the event is sent once the change is durable, "
        "so this includes the registry's fsync.",
        distribution(
            "latency_", latencies, "status-event latency", p50_target=Target("<", 5.0, "ms", "issue 4")
        ),
    )


async def _snapshot(address: str) -> tuple[float, int, int]:
    """One WatchJobs from revision 0 to its SNAPSHOT_END: seconds, jobs, responses."""
    async with grpc.aio.insecure_channel(
        address, options=[("grpc.max_receive_message_length", 16 << 20)]
    ) as channel:
        stub = conductor_pb2_grpc.ConductorStub(channel)
        t0 = time.perf_counter()
        jobs = responses = 0
        call = stub.WatchJobs(pb.WatchJobsRequest(since_revision=0))
        async for response in call:
            responses += 1
            for ev in response.events:
                if ev.type == S.JOB_EVENT_TYPE_SNAPSHOT:
                    jobs += 1
                elif ev.type == S.JOB_EVENT_TYPE_SNAPSHOT_END:
                    took = time.perf_counter() - t0
                    call.cancel()
                    return took, jobs, responses
    raise RuntimeError("the snapshot ended without SNAPSHOT_END")


def snapshot_time(jobs: int, rounds: int) -> Json:
    """A WatchJobs snapshot of ``jobs`` ended jobs, from the request to its SNAPSHOT_END."""
    with tempfile.TemporaryDirectory(prefix="baton-bench-snapshot-") as root:
        conductor = Conductor("snapshot", max_running=1, root_dir=Path(root))
        try:
            # Written straight into the registry and the trees (bench/history.py):
            # submitting 100,000 jobs through the API would take far longer than the
            # snapshot being timed.
            generate(conductor.home, jobs, progress=log)
            conductor.start()
            best, seen, responses = float("inf"), 0, 0
            for _ in range(rounds):
                took, seen, responses = asyncio.run(_snapshot(conductor.address))
                best = min(best, took)
        finally:
            conductor.close()
    if seen != jobs:
        raise RuntimeError(f"the snapshot held {seen} jobs, not {jobs}")
    log(f"snapshot: {seen} jobs in {best:.2f} s, {responses} responses")
    return section(
        f"A WatchJobs snapshot of {seen} ended jobs (a generated history, bench/history.py, in the "
        "conductor's registry) on loopback, from the request to SNAPSHOT_END, read by a grpc.aio "
        f"client in another process; best of {rounds} rounds.",
        {
            "seconds": figure(best, "s", rounds, f"snapshot of {seen} jobs"),
            "jobs_per_second": figure(seen / best, "jobs/s", rounds, "snapshot rate"),
            "responses": figure(responses, "messages", rounds, "WatchJobsResponse messages"),
        },
    )
