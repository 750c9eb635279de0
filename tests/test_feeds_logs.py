"""StreamLogs with real jobs and a real server: exact bytes, reconnects, tails, ends,
heartbeats, truncation, many subscribers, subscribers that never read, and jobs
deleted under a follow (the viewer's StreamLogs too)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shlex
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.checks import error_info_reason
from tests.harness import InProcessConductor, SubprocessConductor, kill_job_groups, state
from tests.viewer_harness import InProcessViewer

Factory = Callable[..., InProcessConductor]
T = TypeVar("T")

CHUNK = 64 * 1024
# The job's own interpreter without site-packages: the generator needs the standard library only.
PY = f"{shlex.quote(sys.executable)} -S"

# Deterministic output of about argv[1] bytes: lines of 0 to 5,000 bytes (all byte values but
# the newline), a 100,000-byte line now and then, every 17th piece without its newline (so it
# runs into the next), written in bursts, and a last line with no trailing newline.
GENERATOR = """\
import sys, time
write = sys.stdout.buffer.write
total = int(sys.argv[1])
pattern = bytes(b for b in range(256) if b != 10) * 420
i = n = 0
while n < total:
    size = 100_000 if i % 997 == 0 else (i * 7919) % 5000
    piece = pattern[i % 200 : i % 200 + size] + (b"" if i % 17 == 0 else b"\\n")
    write(piece)
    n += len(piece)
    i += 1
    if i % 200 == 0:
        sys.stdout.flush()
        time.sleep(0.002)
write(b"the last line has no newline")
"""


def spec(name: str, command: str) -> str:
    return yaml.safe_dump({"name": name, "command": command}, sort_keys=False)


def generator(tmp_path: Path) -> Path:
    path = tmp_path / "gen.py"
    path.write_text(GENERATOR)
    return path


def wait_file_cmd(path: Path) -> str:
    return f"while [ ! -e {shlex.quote(str(path))} ]; do sleep 0.02; done"


def wait_until(check: Callable[[], T], what: str, timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def on_server(c: InProcessConductor, fn: Callable[[], T]) -> T:
    """Evaluate ``fn`` on the conductor's own loop (white-box readings)."""

    async def run() -> T:
        return fn()

    return c.call(run())  # type: ignore[no-any-return]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class LogRead:
    """What StreamLogs delivered over one or more calls, checked message by message.

    Every data chunk must start where the last one ended (``end``) and hold at most
    64 KiB; a heartbeat carries no data and the current offset; a ``truncated``
    chunk resets the position; nothing may follow the ``complete`` chunk.
    """

    end: int | None = 0  # None: the first chunk decides (tail_lines)
    keep: bool = False
    digest: Any = field(default_factory=hashlib.sha256)
    received: int = 0
    segments: list[bytearray] = field(default_factory=lambda: [bytearray()])
    heartbeats: list[int] = field(default_factory=list)
    truncations: list[int] = field(default_factory=list)
    final: job_pb2.LogChunk | None = None
    calls: int = 0
    chunks: int = 0

    @property
    def data(self) -> bytes:
        return bytes(self.segments[-1])

    def accept(self, c: job_pb2.LogChunk) -> None:
        assert self.final is None, f"a message after the complete chunk: {c}"
        if c.truncated:
            assert not c.data and not c.complete, c
            self.truncations.append(c.offset)
            self.end = c.offset
            self.segments.append(bytearray())
            return
        if self.end is None:
            self.end = c.offset
        assert c.offset == self.end, f"chunk at offset {c.offset}, expected {self.end}"
        assert len(c.data) <= CHUNK, f"chunk of {len(c.data)} bytes"
        if c.data:
            self.chunks += 1
            self.digest.update(c.data)
            self.received += len(c.data)
            self.end += len(c.data)
            if self.keep:
                self.segments[-1] += c.data
        elif not c.complete:
            self.heartbeats.append(c.offset)
        if c.complete:
            self.final = c


def read_log(
    stub: conductor_pb2_grpc.ConductorStub,
    job_id: str,
    read: LogRead | None = None,
    *,
    tail_lines: int = 0,
    follow: bool = True,
    stop_at: int | None = None,
    timeout: float = 120,
) -> LogRead:
    """One StreamLogs call from ``read.end``; cancel it once ``stop_at`` bytes are in."""
    read = read or LogRead()
    read.calls += 1
    offset = read.end or 0
    call = stub.StreamLogs(
        pb.StreamLogsRequest(job_id=job_id, offset=offset, tail_lines=tail_lines, follow=follow),
        timeout=timeout,
    )
    for chunk in call:
        read.accept(chunk)
        if stop_at is not None and (read.end or 0) >= stop_at and read.final is None:
            call.cancel()
            break
    return read


def assert_complete_like(read: LogRead, job: job_pb2.Job) -> None:
    """The last message says the log is complete and gives the job's outcome."""
    final = read.final
    assert final is not None, "a followed log must end with a complete chunk"
    assert final.complete and final.offset == read.end
    assert final.state == job.state, (job_pb2.JobState.Name(final.state), job)
    assert final.HasField("exit_code") == job.HasField("exit_code"), final
    assert final.exit_code == job.exit_code
    assert final.HasField("signal") == job.HasField("signal"), final
    assert final.signal == job.signal


def last_lines(data: bytes, n: int) -> bytes:
    """The last ``n`` lines of ``data``; a final line without a newline counts as a line."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    return b"".join(lines[-n:])


# ---------------------------------------------------------------------------- exact bytes


def test_followed_50mb_log_arrives_byte_for_byte_and_reconnects_lose_and_repeat_nothing(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    size = 50_000_000
    job = conductor.submit(spec("big", f"{PY} {generator(tmp_path)} {size}"))
    stub = conductor.stub
    rng = random.Random(4)
    cuts = sorted(rng.randrange(1, size) for _ in range(6))

    def with_reconnects() -> LogRead:
        # Drop the connection at random offsets; each time resume from the bytes received.
        read = LogRead()
        for cut in cuts:
            read_log(stub, job.id, read, stop_at=cut)
            assert read.final is None and read.end is not None and read.end >= cut
        return read_log(stub, job.id, read)

    with ThreadPoolExecutor(2) as pool:
        whole_f = pool.submit(read_log, stub, job.id)
        parts_f = pool.submit(with_reconnects)
        whole, parts = whole_f.result(), parts_f.result()

    done = conductor.get(job.id)
    assert done.state == state("succeeded") and done.exit_code == 0
    content = (Path(done.run_dir) / "output.log").read_bytes()
    assert len(content) >= size and not content.endswith(b"\n")
    for read in (whole, parts):
        assert read.received == len(content) == read.end
        assert read.digest.hexdigest() == sha256(content)
        assert not read.truncations
        assert read.final is not None and read.final.state == state("succeeded")
        assert read.final.HasField("exit_code") and read.final.exit_code == 0
        assert_complete_like(read, done)
    # 64 KiB chunks at most, so at least this many of them.
    assert whole.chunks >= len(content) // CHUNK
    assert parts.calls == len(cuts) + 1


def test_reconnect_after_the_end_gets_only_the_complete_chunk(
    conductor: InProcessConductor,
) -> None:
    job = conductor.submit(spec("short", "printf 'one\\ntwo\\nthree'; exit 4"))
    done = conductor.wait_ended(job.id)
    content = (Path(done.run_dir) / "output.log").read_bytes()
    assert content == b"one\ntwo\nthree"

    for offset in (0, 4, len(content)):
        read = read_log(conductor.stub, job.id, LogRead(end=offset, keep=True))
        assert read.data == content[offset:]
        assert_complete_like(read, done)
        assert read.final is not None and read.final.state == state("failed")
        assert read.final.exit_code == 4


# ---------------------------------------------------------------------------- tail_lines


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_tail_lines_returns_exactly_the_last_n_lines(
    conductor: InProcessConductor, tmp_path: Path, trailing_newline: bool
) -> None:
    # Blank lines, and a line longer than the tailer's 64 KiB read-back block.
    lines = [f"line {i}" for i in range(40)] + ["", "", "x" * 200_000, "after the long one", "", "end"]
    content = ("\n".join(lines) + ("\n" if trailing_newline else "")).encode()
    source = tmp_path / "content"
    source.write_bytes(content)
    job = conductor.submit(spec("tail", f"cat {shlex.quote(str(source))}"))
    done = conductor.wait_ended(job.id)
    assert done.state == state("succeeded")
    assert (Path(done.run_dir) / "output.log").read_bytes() == content
    count = len(lines)

    for n in (1, 2, 3, 4, 5, 10, count - 1, count, count + 1, count + 100):
        read = read_log(conductor.stub, job.id, LogRead(end=None, keep=True), tail_lines=n, follow=False)
        want = last_lines(content, n)
        assert read.data == want, f"tail_lines={n}: got {read.data[:80]!r}... want {want[:80]!r}..."
        if read.final is not None:  # an unfollowed read of an ended job may say so; truthfully
            assert_complete_like(read, done)
        if n >= count:
            assert read.data == content
    # With follow the same lines come, then the end.
    read = read_log(conductor.stub, job.id, LogRead(end=None, keep=True), tail_lines=3)
    assert read.data == last_lines(content, 3)
    assert_complete_like(read, done)


# ---------------------------------------------------------------------------- follows that wait and end


def test_follow_on_a_queued_job_waits_then_streams(conductor_factory: Factory, tmp_path: Path) -> None:
    c = conductor_factory(max_running=1, feed_heartbeat=0.2)
    stop = tmp_path / "stop"
    blocker = c.submit(spec("blocker", wait_file_cmd(stop)))
    c.wait_for(blocker.id, "running")
    job = c.submit(spec("queued", "echo first; printf 'second, no newline'"))
    stub = c.stub
    read = LogRead(keep=True)
    follower = threading.Thread(target=read_log, args=(stub, job.id, read), daemon=True)
    follower.start()

    time.sleep(0.8)
    assert c.get(job.id).state == state("queued")
    assert follower.is_alive(), "a follow on a queued job must wait for the job"
    assert read.received == 0 and read.final is None
    assert read.heartbeats and set(read.heartbeats) == {0}, "a waiting follow still sends heartbeats"

    stop.touch()
    follower.join(20)
    assert not follower.is_alive(), "the follow did not end when the job ended"
    done = c.get(job.id)
    assert done.state == state("succeeded")
    assert read.data == b"first\nsecond, no newline"
    assert_complete_like(read, done)


@pytest.mark.parametrize("how", ["cancelled", "failed", "killed"])
def test_follow_ends_by_itself_with_the_jobs_outcome(
    conductor: InProcessConductor, tmp_path: Path, how: str
) -> None:
    stop = tmp_path / "stop"
    ending = {"cancelled": "exec sleep 60", "failed": "exit 3", "killed": "kill -KILL $$"}[how]
    job = conductor.submit(spec(how, f"echo started; {wait_file_cmd(stop)}; echo stopping; {ending}"))
    stub = conductor.stub
    read = LogRead(keep=True)
    follower = threading.Thread(target=read_log, args=(stub, job.id, read), daemon=True)
    follower.start()
    wait_until(lambda: read.received >= len(b"started\n"), "the first line")
    stop.touch()
    if how == "cancelled":
        wait_until(lambda: read.received >= len(b"started\nstopping\n"), "the second line")
        stub.CancelJob(pb.CancelJobRequest(job_id=job.id, reason="test"), timeout=10)

    follower.join(20)
    assert not follower.is_alive(), "the follow did not end when the job ended"
    done = conductor.get(job.id)
    want = {"cancelled": "cancelled", "failed": "failed", "killed": "failed"}[how]
    assert done.state == state(want), done
    assert read.data == b"started\nstopping\n"
    assert_complete_like(read, done)
    assert read.final is not None and read.final.state == state(want)
    if how == "failed":
        assert read.final.HasField("exit_code") and read.final.exit_code == 3
    if how == "killed":
        assert read.final.HasField("signal") and read.final.signal == 9


def test_quiet_followed_log_gets_heartbeats_with_the_current_offset(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(feed_heartbeat=0.2)
    stop = tmp_path / "stop"
    job = c.submit(spec("quiet", f"printf 'hello\\n'; {wait_file_cmd(stop)}"))
    stub = c.stub
    read = LogRead(keep=True)
    follower = threading.Thread(target=read_log, args=(stub, job.id, read), daemon=True)
    follower.start()
    wait_until(lambda: read.received == 6, "the first line")
    before = len(read.heartbeats)
    time.sleep(1.2)
    quiet = read.heartbeats[before:]
    # About six are due; ask for two so a busy machine cannot fail this.
    assert len(quiet) >= 2, f"heartbeats on a quiet log: {read.heartbeats}"
    assert set(quiet) == {6}, "a heartbeat carries the next byte's offset"
    assert read.final is None and follower.is_alive()

    stop.touch()
    follower.join(20)
    assert not follower.is_alive()
    assert read.data == b"hello\n"
    assert_complete_like(read, c.get(job.id))


# ---------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("how", ["job-truncates", "job-replaces", "test-truncates"])
def test_log_truncated_under_a_follower_is_reported_and_read_from_zero(
    conductor: InProcessConductor, tmp_path: Path, how: str
) -> None:
    go = tmp_path / "go"
    log = '"$BATON_RUN_DIR/output.log"'
    shrink = {
        "job-truncates": f": > {log}; echo after",
        "job-replaces": f"printf 'new\\n' > {log}.new && mv {log}.new {log}; echo lost",
        "test-truncates": "echo after",
    }[how]
    job = conductor.submit(
        spec("shrink", f"for i in $(seq 1 3000); do echo before $i; done; {wait_file_cmd(go)}; {shrink}")
    )
    before = b"".join(b"before %d\n" % i for i in range(1, 3001))
    stub = conductor.stub
    read = LogRead(keep=True)
    follower = threading.Thread(target=read_log, args=(stub, job.id, read), daemon=True)
    follower.start()
    wait_until(lambda: read.received >= len(before), "every line before the truncation")
    if how == "test-truncates":
        running = conductor.get(job.id)
        (Path(running.run_dir) / "output.log").write_bytes(b"")
    go.touch()

    follower.join(20)
    assert not follower.is_alive(), "the follow did not end when the job ended"
    done = conductor.get(job.id)
    assert done.state == state("succeeded"), done
    assert read.truncations == [0], f"truncations reported: {read.truncations}"
    assert [bytes(s) for s in read.segments] == [before, b"new\n" if how == "job-replaces" else b"after\n"]
    assert read.data == (Path(done.run_dir) / "output.log").read_bytes()
    assert_complete_like(read, done)


# ---------------------------------------------------------------------------- many subscribers


async def follow_aio(stub: conductor_pb2_grpc.ConductorStub, job_id: str, read: LogRead) -> None:
    call = stub.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=True), timeout=120)
    async for chunk in call:
        read.accept(chunk)


def test_200_concurrent_followers_each_get_the_whole_log(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    job = conductor.submit(spec("popular", f"{wait_file_cmd(go)}; {PY} {generator(tmp_path)} 1000000"))
    reads = [LogRead() for _ in range(200)]

    async def main() -> None:
        channels = [grpc.aio.insecure_channel(conductor.address) for _ in range(4)]
        try:
            stubs = [conductor_pb2_grpc.ConductorStub(ch) for ch in channels]
            tasks = [
                asyncio.create_task(follow_aio(stubs[i % len(stubs)], job.id, r)) for i, r in enumerate(reads)
            ]
            deadline = time.monotonic() + 30
            while on_server(conductor, lambda: conductor.running.feeds.active_log_streams) < len(reads):  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the 200 streams did not all open"
                await asyncio.sleep(0.05)
            go.touch()  # every follower is in place before the first byte
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
        finally:
            for ch in channels:
                await ch.close()

    asyncio.run(main())
    done = conductor.get(job.id)
    assert done.state == state("succeeded")
    content = (Path(done.run_dir) / "output.log").read_bytes()
    assert len(content) >= 1_000_000
    digest = sha256(content)
    for i, read in enumerate(reads):
        assert read.received == len(content), f"follower {i} got {read.received} of {len(content)} bytes"
        assert read.digest.hexdigest() == digest, f"follower {i} got other bytes"
        assert_complete_like(read, done)


# ---------------------------------------------------------------------------- subscribers that never read


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


STALL_LOG_BYTES = 200_000_000
# The bound this test states: while a 200 MB log passes subscribers that never read,
# the server's resident memory grows by less than this.
RSS_GROWTH_BOUND = 100 * 1024 * 1024


def test_subscribers_that_never_read_neither_slow_others_nor_grow_server_memory(tmp_path: Path) -> None:
    home = tmp_path / "sub"
    server = SubprocessConductor(home, "--max-running", "4").start()
    gen = generator(tmp_path)
    stalled_channel = grpc.insecure_channel(server.address)
    stalled: list[Any] = []
    try:
        stub = server.stub
        pid = server.proc.pid  # type: ignore[union-attr]

        def phase(name: str, before_go: Callable[[str], None]) -> tuple[float, list[LogRead], str]:
            """Two followers read a fresh 200 MB log; the time from first byte allowed to last read."""
            go = tmp_path / f"go-{name}"
            job = server.submit(spec(name, f"{wait_file_cmd(go)}; {PY} {gen} {STALL_LOG_BYTES}"))
            before_go(job.id)
            with ThreadPoolExecutor(2) as pool:
                futures = [pool.submit(read_log, stub, job.id) for _ in range(2)]
                time.sleep(0.2)  # the followers are waiting on the job
                started = time.monotonic()
                go.touch()
                reads = [f.result() for f in futures]
            return time.monotonic() - started, reads, job.id

        baseline_time, baseline_reads, _ = phase("baseline", lambda job_id: None)
        rss_before = rss_bytes(pid)

        def stall(job_id: str) -> None:
            # Subscribers that open their streams and never take a message.
            stalled_stub = conductor_pb2_grpc.ConductorStub(stalled_channel)
            for _ in range(3):
                stalled.append(
                    stalled_stub.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=True), timeout=300)
                )
            stalled.append(stalled_stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=300))

        peak = rss_before
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, rss_bytes(pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            stalled_time, stalled_reads, stalled_job = phase("stalled", stall)
            # Job changes pass the stalled watcher too.
            for i in range(20):
                server.submit(spec(f"change-{i}", "true"))
            time.sleep(0.5)
        finally:
            sampling.set()
            sampler.join(5)
        peak = max(peak, rss_bytes(pid))

        for reads, job_id in ((baseline_reads, None), (stalled_reads, stalled_job)):
            for read in reads:
                assert read.received >= STALL_LOG_BYTES and read.final is not None
                assert read.final.state == state("succeeded")
            if job_id is not None:
                content = (Path(server.get(job_id).run_dir) / "output.log").read_bytes()
                assert all(r.digest.hexdigest() == sha256(content) for r in reads)
        # Generous: only a reader held up by the stalled ones could be this much slower.
        assert stalled_time < 3 * baseline_time + 2.0, (
            f"readers took {stalled_time:.2f} s beside stalled subscribers, {baseline_time:.2f} s without"
        )
        growth = peak - rss_before
        assert growth < RSS_GROWTH_BOUND, f"server RSS grew by {growth / 2**20:.1f} MiB"
        # The stalled log streams are alive and, read now, start at the first byte.
        first = next(iter(stalled[0]))
        assert first.offset == 0 and first.data
        assert (
            first.data
            == (Path(server.get(stalled_job).run_dir) / "output.log").read_bytes()[: len(first.data)]
        )
    finally:
        for call in stalled:
            call.cancel()
        stalled_channel.close()
        server.stop()
        kill_job_groups(home / "status")


# ---------------------------------------------------------------------------- deleted while followed

# `seq 1 N`: about 31 MB, far more than gRPC's flow-control windows and the socket buffers
# hold (a few MB on loopback), so a reader that stops taking messages keeps the server mid-log.
BIG_LOG_LINES = 4_000_000
DELETED = "JOB_DELETED"


def drain(call: Any, read: LogRead, pause: float = 0.0) -> grpc.RpcError | None:
    """Take the rest of a log stream into ``read``; the error it ended with, None for OK."""
    try:
        for chunk in call:
            read.accept(chunk)
            if pause:
                time.sleep(pause)
    except grpc.RpcError as err:
        return err
    return None


def assert_ended_as_deleted(read: LogRead, err: grpc.RpcError | None, content: bytes) -> None:
    """A follow of a job deleted under it: a prefix of the log, then NOT_FOUND saying why."""
    assert read.data == content[: read.received], "bytes other than the log's were sent"
    assert err is not None, (
        f"the stream ended OK after {read.received} of {len(content)} bytes "
        f"{'with' if read.final is not None else 'without'} a complete chunk; a follow of a job "
        "deleted under it must end NOT_FOUND"
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
    assert error_info_reason(err) == DELETED, err
    assert read.final is None, "a complete chunk, then an error"


def delete_and_wait_gone(c: InProcessConductor, job: job_pb2.Job) -> None:
    """DeleteJob, then wait until the publisher has removed the run directory."""
    c.stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id), timeout=10)
    wait_until(lambda: not Path(job.run_dir).exists(), "the run directory to be removed")


def log_streams(c: InProcessConductor) -> int:
    return on_server(c, lambda: c.running.feeds.active_log_streams)  # type: ignore[union-attr]


@pytest.mark.parametrize("follow", [True, False])
def test_a_job_deleted_while_its_log_is_read_ends_not_found_when_followed_and_ok_when_not(
    conductor: InProcessConductor, tmp_path: Path, follow: bool
) -> None:
    go = tmp_path / "go"
    job = conductor.submit(spec("deleted", f"{wait_file_cmd(go)}; seq 1 {BIG_LOG_LINES}"))
    conductor.wait_for(job.id, "running")
    request = pb.StreamLogsRequest(job_id=job.id, follow=follow)
    if follow:  # in place while the job runs, before its first byte
        call = conductor.stub.StreamLogs(request, timeout=60)
        wait_until(lambda: log_streams(conductor) == 1, "the follow to be in place")
    go.touch()
    done = conductor.wait_ended(job.id)
    content = (Path(done.run_dir) / "output.log").read_bytes()
    if not follow:  # an unfollowed read reads what is there when it starts
        call = conductor.stub.StreamLogs(request, timeout=60)
    read = LogRead(keep=True)
    while not read.received:
        read.accept(next(call))
    # The reader stops taking messages; the server is still in the middle of the log.
    time.sleep(0.3)
    assert log_streams(conductor) == 1, "the stream ended before the job was deleted: make the log bigger"

    delete_and_wait_gone(conductor, done)
    err = drain(call, read)

    if follow:
        assert_ended_as_deleted(read, err, content)
    else:
        # An unfollowed read promises no end: the bytes it could still read, then OK.
        assert err is None, err
        assert read.final is None
        assert read.data == content[: read.received]


@pytest.mark.parametrize("start", ["offset-0", "tail-lines"])
def test_a_reader_far_behind_ends_not_found_when_the_job_is_deleted_under_it(
    conductor: InProcessConductor, start: str
) -> None:
    job = conductor.submit(spec("behind", f"seq 1 {BIG_LOG_LINES}"))
    done = conductor.wait_ended(job.id)
    log = Path(done.run_dir) / "output.log"
    content = log.read_bytes()
    tail_lines = BIG_LOG_LINES * 3 // 4 if start == "tail-lines" else 0
    if tail_lines:
        content = last_lines(content, tail_lines)
    read = LogRead(end=None if tail_lines else 0, keep=True)
    call = conductor.stub.StreamLogs(
        pb.StreamLogsRequest(job_id=job.id, tail_lines=tail_lines, follow=True), timeout=60
    )
    # A slow consumer (about 6 MB/s, 5 s for the whole log), so tens of megabytes are still
    # to come when the file goes.
    ending: dict[str, grpc.RpcError | None] = {}
    reader = threading.Thread(target=lambda: ending.update(err=drain(call, read, pause=0.01)), daemon=True)
    reader.start()
    wait_until(lambda: read.received >= 1_000_000, "the first megabyte")

    delete_and_wait_gone(conductor, done)
    assert not log.exists()
    assert reader.is_alive() and read.received < len(content), "the reader caught up before the delete"

    reader.join(60)
    assert not reader.is_alive(), "the stream did not end"
    assert_ended_as_deleted(read, ending["err"], content)


def test_the_viewer_ends_a_follow_of_a_deleted_job_as_the_conductor_does(
    conductor: InProcessConductor, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    job = conductor.submit(spec("viewed", f"seq 1 {BIG_LOG_LINES}"))
    done = conductor.wait_ended(job.id)
    content = (Path(done.run_dir) / "output.log").read_bytes()
    viewer = viewer_factory(home=conductor.home)  # once the run exists
    viewer.wait_for(lambda: viewer_knows(viewer, job.id), "the viewer to index the run", 20)

    call = viewer.stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=job.id, follow=True), timeout=60)
    read = LogRead(keep=True)
    while not read.received:
        read.accept(next(call))
    time.sleep(0.3)
    assert viewer_streams(viewer) == 1, "the stream ended before the job was deleted: make the log bigger"

    delete_and_wait_gone(conductor, done)
    viewer.wait_for(lambda: not viewer_knows(viewer, job.id), "the viewer to drop the run", 20)
    err = drain(call, read)

    assert_ended_as_deleted(read, err, content)


def viewer_streams(viewer: InProcessViewer) -> int:
    async def count() -> int:
        return viewer.running.service.active_streams  # type: ignore[union-attr]

    return viewer.call(count())  # type: ignore[no-any-return]


def viewer_knows(viewer: InProcessViewer, job_id: str) -> bool:
    try:
        viewer.stub.GetJob(vpb.ViewerGetJobRequest(job_id=job_id), timeout=10)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.NOT_FOUND, err
        return False
    return True
