"""Throughput sections: sustained submissions, and GetJob beside a bare grpc.aio server.

Load comes from a grpc.aio client in this process: ``concurrency`` tasks, each
with one call in flight at a time, for a fixed window after a warm-up. Calls
that complete inside the window are counted. Client and server CPU time over
the window are reported, so a reader can tell which side was the bottleneck
(this machine has few cores, and the client shares them).
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from baton.common.layout import STATUS_FILE
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from bench.jobs import running_with_process, submit_request, wait_for
from bench.procs import REPO, Conductor, conductor_cpu_seconds
from bench.report import Json, Target, figure, log, percentile, section

Call = Callable[[conductor_pb2_grpc.ConductorStub], Any]


@dataclass
class Load:
    """What one load window measured."""

    calls: int
    seconds: float
    errors: int
    latencies_ms: list[float]
    per_second: list[int]
    client_cpu: float
    server_cpu: float
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def to_json(self) -> Json:
        return {
            "calls_per_second": round(self.rate, 1),
            "calls": self.calls,
            "window_s": round(self.seconds, 3),
            "errors": self.errors,
            "latency_p50_ms": round(percentile(self.latencies_ms, 50), 3),
            "latency_p95_ms": round(percentile(self.latencies_ms, 95), 3),
            "client_cpu_cores": round(self.client_cpu / self.seconds, 2),
            "server_cpu_cores": round(self.server_cpu / self.seconds, 2),
        }


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


async def _window(
    stub: conductor_pb2_grpc.ConductorStub,
    server_pid: int,
    call: Call,
    *,
    concurrency: int,
    warmup: float,
    duration: float,
) -> Load:
    """``concurrency`` callers for ``warmup + duration`` seconds; the calls that end inside the
    last ``duration`` seconds are counted."""
    loop = asyncio.get_running_loop()
    w_start = loop.time() + warmup
    w_end = w_start + duration
    done: list[tuple[float, float]] = []  # (completion time, latency ms)
    errors: list[str] = []
    marks: dict[str, float] = {}

    async def worker() -> None:
        while True:
            t0 = loop.time()
            if t0 >= w_end:
                return
            try:
                await call(stub)
            except grpc.aio.AioRpcError as err:
                t1 = loop.time()
                if w_start <= t1 < w_end:
                    errors.append(f"{err.code().name}: {err.details()}")
                continue
            t1 = loop.time()
            if w_start <= t1 < w_end:
                done.append((t1, (t1 - t0) * 1000.0))

    async def meter() -> None:
        await asyncio.sleep(max(0.0, w_start - loop.time()))
        marks["client0"], marks["server0"] = _own_cpu(), conductor_cpu_seconds(server_pid)
        await asyncio.sleep(max(0.0, w_end - loop.time()))
        marks["client1"], marks["server1"] = _own_cpu(), conductor_cpu_seconds(server_pid)

    await asyncio.gather(meter(), *(worker() for _ in range(concurrency)))
    per_second = [0] * max(1, int(duration + 0.999))
    for t, _ in done:
        per_second[min(len(per_second) - 1, int(t - w_start))] += 1
    return Load(
        calls=len(done),
        seconds=duration,
        errors=len(errors),
        latencies_ms=[lat for _, lat in done],
        per_second=per_second,
        client_cpu=marks["client1"] - marks["client0"],
        server_cpu=marks["server1"] - marks["server0"],
        error_samples=errors[:3],
    )


async def _load(
    address: str, server_pid: int, call: Call, *, concurrency: int, warmup: float, duration: float
) -> Load:
    """One window on a fresh channel."""
    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = conductor_pb2_grpc.ConductorStub(channel)
        return await _window(
            stub, server_pid, call, concurrency=concurrency, warmup=warmup, duration=duration
        )


def submissions_per_second(duration: float, concurrency: int, poll_interval: float) -> Json:
    """Acknowledged SubmitJob calls per second while every new job stays QUEUED."""
    with Conductor("submit-rate", max_running=1) as c:
        blocker = c.stub.SubmitJob(submit_request("blocker", "sleep 600"), timeout=30)
        wait_for(c.stub, blocker.id, running_with_process, time.perf_counter(), interval=poll_interval)
        req = submit_request("queued", "true")

        def call(stub: conductor_pb2_grpc.ConductorStub) -> Any:
            return stub.SubmitJob(req, timeout=30)

        load = asyncio.run(
            _load(c.address, c.pid, call, concurrency=concurrency, warmup=1.0, duration=duration)
        )
        ended = time.perf_counter()
        counts = {
            job_pb2.JobState.Name(state): len(c.job_ids((state,)))
            for state in (job_pb2.JOB_STATE_QUEUED, job_pb2.JOB_STATE_RUNNING)
        }
        catch_up = _status_files_catch_up(c.home / "status", sum(counts.values()), ended)
        log(
            f"submissions_per_second: {load.rate:.0f}/s over {duration} s ({load.errors} errors); "
            f"every status.json written {catch_up:.2f} s after the last call"
        )
    full_seconds = load.per_second[: int(duration)] or load.per_second
    figures = {
        "rate": figure(
            load.rate,
            "submissions/s",
            load.calls,
            f"acknowledged (durable) SubmitJob calls per second over {duration} s, {concurrency} in flight",
            Target(">=", 1500, "submissions/s", "issue 18"),
        ),
        "status_files_catch_up": figure(
            catch_up,
            "s",
            sum(counts.values()),
            "from the last acknowledged call to a status.json on disk for every job: status files are "
            "written off the request path, and this shows they keep up (nan: not within 60 s)",
        ),
        "client_cpu_cores": figure(
            load.client_cpu / load.seconds,
            "cores",
            load.calls,
            "CPU the one client process used over the window: near 1.0 the client, not the "
            "conductor, would be what limits the rate",
        ),
        "slowest_second": figure(
            min(full_seconds), "submissions/s", len(full_seconds), "the slowest whole second of the window"
        ),
        "server_cpu_per_submission": figure(
            load.server_cpu / load.calls * 1000 if load.calls else math.nan,
            "ms",
            load.calls,
            "CPU time of the conductor process (all threads) and its status writer process per "
            "acknowledged submission",
        ),
        "ack_p50": figure(
            percentile(load.latencies_ms, 50), "ms", load.calls, "median SubmitJob round trip under this load"
        ),
        "ack_p95": figure(
            percentile(load.latencies_ms, 95),
            "ms",
            load.calls,
            "95th percentile SubmitJob round trip under load",
        ),
    }
    return section(
        "Sustained submissions: a conductor with max_running=1 and a blocking first job, so every "
        "submitted job stays QUEUED; many concurrent grpc.aio submitters (one client process).",
        figures,
        {
            "concurrency": concurrency,
            "warmup_s": 1.0,
            "per_second": load.per_second,
            "job_counts_after": counts,
            "error_samples": load.error_samples,
            **load.to_json(),
        },
    )


def _status_files_catch_up(status_dir: Path, jobs: int, since: float, limit: float = 60.0) -> float:
    """Seconds from ``since`` until ``status_dir`` has ``jobs`` status.json files; nan past ``limit``."""
    while True:
        written = sum(1 for _, _, files in os.walk(status_dir) if STATUS_FILE in files)
        waited = time.perf_counter() - since
        if written >= jobs:
            return waited
        if waited > limit:
            return math.nan
        time.sleep(0.05)


def _start_bare(job_file: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", job_file],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the bare server did not start (said {line!r})")
    return proc, f"127.0.0.1:{int(line)}"


def _stop_bare(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def _alternate(
    servers: dict[str, tuple[str, int]], call: Call, *, rounds: int, concurrency: int, duration: float
) -> dict[str, list[Load]]:
    """Short windows on each server in turn (ABBA order), each on its own warm channel, so
    a change in what else this machine does meanwhile weighs on both alike."""
    loads: dict[str, list[Load]] = {name: [] for name in servers}
    channels = {name: grpc.aio.insecure_channel(address) for name, (address, _) in servers.items()}
    try:
        stubs = {}
        for name, channel in channels.items():
            await channel.channel_ready()
            stubs[name] = conductor_pb2_grpc.ConductorStub(channel)
            # Warm both sides (connection, caches, the server's first calls); not counted.
            await _window(
                stubs[name], servers[name][1], call, concurrency=concurrency, warmup=0, duration=0.5
            )
        names = list(servers)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                load = await _window(
                    stubs[name],
                    servers[name][1],
                    call,
                    concurrency=concurrency,
                    warmup=0.1,
                    duration=duration,
                )
                loads[name].append(load)
            log(
                f"getjob_ratio: round {r + 1}/{rounds}: "
                + ", ".join(f"{n} {loads[n][-1].rate:.0f}/s" for n in names)
            )
    finally:
        for channel in channels.values():
            await channel.close()
    return loads


def getjob_ratio(duration: float, rounds: int, concurrency: int, poll_interval: float) -> Json:
    """GetJob calls per second, conductor vs. a bare grpc.aio server, same client, same run."""
    with Conductor("getjob", max_running=4) as c:
        job = c.stub.SubmitJob(submit_request("getjob-target", "sleep 600"), timeout=30)
        seen = wait_for(c.stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
        payload = seen.job.SerializeToString()
        job_file = c.root / "job.bin"
        job_file.write_bytes(payload)
        bare, bare_address = _start_bare(str(job_file))
        try:
            req = pb.GetJobRequest(job_id=job.id)

            def call(stub: conductor_pb2_grpc.ConductorStub) -> Any:
                return stub.GetJob(req, timeout=10)

            servers = {"conductor": (c.address, c.pid), "bare": (bare_address, bare.pid)}
            loads = asyncio.run(
                _alternate(servers, call, rounds=rounds, concurrency=concurrency, duration=duration)
            )
        finally:
            _stop_bare(bare)

    def total(name: str) -> tuple[float, int, float]:
        calls = sum(x.calls for x in loads[name])
        cpu = sum(x.server_cpu for x in loads[name])
        return calls / sum(x.seconds for x in loads[name]), calls, cpu / calls * 1e6 if calls else math.nan

    conductor_rate, conductor_calls, conductor_cpu = total("conductor")
    bare_rate, bare_calls, bare_cpu = total("bare")
    pair_ratios = [a.rate / b.rate for a, b in zip(loads["conductor"], loads["bare"], strict=True) if b.rate]
    figures = {
        "ratio": figure(
            conductor_rate / bare_rate if bare_rate else math.nan,
            "ratio",
            rounds,
            "conductor GetJob calls/s divided by the bare grpc.aio server's calls/s (all windows)",
            Target(">=", 0.8, "ratio", "issue 2"),
        ),
        "ratio_min_round": figure(
            min(pair_ratios) if pair_ratios else math.nan,
            "ratio",
            len(pair_ratios),
            "the lowest of the per-round ratios (how much the rounds disagree)",
        ),
        "ratio_max_round": figure(
            max(pair_ratios) if pair_ratios else math.nan,
            "ratio",
            len(pair_ratios),
            "the highest of the per-round ratios",
        ),
        "conductor_rate": figure(
            conductor_rate,
            "calls/s",
            conductor_calls,
            f"GetJob calls per second on the conductor, {concurrency} in flight",
        ),
        "bare_rate": figure(
            bare_rate,
            "calls/s",
            bare_calls,
            f"the same calls per second on the bare grpc.aio server, {concurrency} in flight",
        ),
        "conductor_server_cpu_per_call": figure(
            conductor_cpu, "us", conductor_calls, "CPU time of the conductor process (all threads) per GetJob"
        ),
        "bare_server_cpu_per_call": figure(
            bare_cpu, "us", bare_calls, "CPU time of the bare server process (all threads) per call"
        ),
        "server_cpu_ratio": figure(
            bare_cpu / conductor_cpu if conductor_cpu else math.nan,
            "ratio",
            rounds,
            "bare server CPU per call divided by the conductor's: the same comparison without the "
            "shared client's cost diluting it (client and servers share this machine's cores)",
        ),
    }
    return section(
        "GetJob throughput against the conductor beside a bare grpc.aio server (a subprocess, generic "
        "handler at the same method path answering a pre-built Job of the same size), measured in the "
        "same run by the same grpc.aio client, in short alternating windows.",
        figures,
        {
            "payload_bytes": len(payload),
            "concurrency": concurrency,
            "window_s": duration,
            "rounds": rounds,
            "order": "ABBA: conductor then bare in odd rounds, bare then conductor in even rounds",
            "conductor_rounds": [x.to_json() for x in loads["conductor"]],
            "bare_rounds": [x.to_json() for x in loads["bare"]],
        },
    )
