"""WatchJobs with real jobs and a real server: every change once and in order across
reconnects, snapshots, filters, deletions, heartbeats, OUT_OF_RANGE; and streams of
both feeds that leave nothing behind once cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import re
import shlex
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.conductor import server as conductor_server
from baton.conductor import snapshots as conductor_snapshots
from baton.conductor.feeds import Feeds
from baton.conductor.registry import make_registry
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from tests.harness import FINAL_STATES, InProcessConductor, state

Factory = Callable[..., InProcessConductor]
T = TypeVar("T")

UPDATED = job_pb2.JOB_EVENT_TYPE_UPDATED
DELETED = job_pb2.JOB_EVENT_TYPE_DELETED
SNAPSHOT = job_pb2.JOB_EVENT_TYPE_SNAPSHOT
SNAPSHOT_END = job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END
HEARTBEAT = job_pb2.JOB_EVENT_TYPE_HEARTBEAT


def spec(name: str, command: str, **extra: str) -> str:
    return yaml.safe_dump({"name": name, "command": command, **extra}, sort_keys=False)


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


def server_revision(c: InProcessConductor) -> int:
    return on_server(c, lambda: c.running.lifecycle.revision)  # type: ignore[union-attr]


@dataclass
class WatchRead:
    """What WatchJobs delivered over one or more calls, checked event by event.

    Every event is read by its type alone. A call from revision 0 starts with
    SNAPSHOT events, all at one revision, closed by a SNAPSHOT_END at that
    revision. Then changes (UPDATED or DELETED, with a job whose revision is
    the event's) come in strictly increasing revision order, after the revision
    the call started from; a HEARTBEAT carries the current revision, never one
    behind what was already sent. Only SNAPSHOT, UPDATED and DELETED carry a
    job. ``last`` is where a reconnect resumes: the revision of the last event
    of any type. ``responses`` counts the WatchJobsResponse messages.
    """

    last: int = 0
    snapshot: list[job_pb2.JobEvent] = field(default_factory=list)
    marker: job_pb2.JobEvent | None = None
    changes: list[job_pb2.JobEvent] = field(default_factory=list)
    heartbeats: list[job_pb2.JobEvent] = field(default_factory=list)
    calls: int = 0
    responses: int = 0

    def accept(self, ev: job_pb2.JobEvent, in_snapshot: bool) -> bool:
        """Take one event; True while the call is still in its snapshot."""
        assert ev.HasField("job") == (ev.type in (SNAPSHOT, UPDATED, DELETED)), ev
        if in_snapshot:
            assert ev.type in (SNAPSHOT, SNAPSHOT_END), f"inside a snapshot: {ev}"
            if ev.type == SNAPSHOT:
                assert not self.snapshot or ev.revision == self.snapshot[0].revision, ev
                self.snapshot.append(ev)
                return True
            if self.snapshot:
                assert ev.revision == self.snapshot[0].revision, "the end gives the snapshot's revision"
            self.marker = ev
            self.last = ev.revision
            return False
        assert ev.type != SNAPSHOT and ev.type != SNAPSHOT_END, f"outside a snapshot: {ev}"
        if ev.type == HEARTBEAT:
            assert ev.revision >= self.last, f"heartbeat at {ev.revision} after {self.last}"
            self.heartbeats.append(ev)
            self.last = ev.revision
            return False
        assert ev.type in (UPDATED, DELETED), ev
        assert ev.revision > self.last, f"change at {ev.revision} after {self.last}"
        assert ev.job.revision == ev.revision, ev
        self.changes.append(ev)
        self.last = ev.revision
        return False

    def take(self, response: pb.WatchJobsResponse, in_snapshot: bool) -> bool:
        """Take one response, every event of it in order."""
        assert response.events, "an empty response"
        self.responses += 1
        for ev in response.events:
            in_snapshot = self.accept(ev, in_snapshot)
        return in_snapshot


def watch(
    stub: conductor_pb2_grpc.ConductorStub,
    read: WatchRead,
    *,
    stop: Callable[[WatchRead], bool],
    cut_after: int | None = None,
    timeout: float = 60,
    **flt: str,
) -> WatchRead:
    """One WatchJobs call from ``read.last``; cancel it when ``stop`` holds or after
    ``cut_after`` changes (a client that drops its connection)."""
    since = read.last
    read.calls += 1
    in_snapshot = since == 0
    if in_snapshot:
        read.snapshot.clear()
    seen = 0
    call = stub.WatchJobs(pb.WatchJobsRequest(since_revision=since, **flt), timeout=timeout)
    for response in call:
        changes = len(read.changes)
        in_snapshot = read.take(response, in_snapshot)
        seen += len(read.changes) - changes
        if not in_snapshot and (stop(read) or (cut_after is not None and seen >= cut_after)):
            call.cancel()
            return read
    raise AssertionError("a watch ended by itself")


def key(ev: job_pb2.JobEvent) -> tuple[int, int, bytes]:
    return ev.revision, ev.type, ev.job.SerializeToString(deterministic=True)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def watch_error(stub: conductor_pb2_grpc.ConductorStub, since: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        for _ in stub.WatchJobs(pb.WatchJobsRequest(since_revision=since), timeout=10):
            pass
    return caught.value  # type: ignore[return-value]


def churn(c: InProcessConductor, tmp_path: Path, queued: int, cancelled: int) -> dict[str, int]:
    """Many changes on a conductor with ``max_running=1``.

    A blocker holds the only slot while ``queued`` jobs queue; ``cancelled`` of them
    are cancelled and deleted; then the blocker ends and the rest run (`true`).
    Returns the deleted jobs with the revision of their deletion.
    """
    stub = c.stub
    stop = tmp_path / f"stop-{time.monotonic_ns()}"
    blocker = c.submit(spec("blocker", wait_file_cmd(stop)))
    c.wait_for(blocker.id, lambda j: j.state == state("running"))
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: c.submit(spec(f"churn-{i}", "true")).id, range(queued)))
        doomed = ids[:cancelled]
        list(pool.map(lambda i: stub.CancelJob(pb.CancelJobRequest(job_id=i), timeout=30), doomed))
        revisions = list(
            pool.map(lambda i: stub.DeleteJob(pb.DeleteJobRequest(job_id=i), timeout=30).revision, doomed)
        )
    stop.touch()
    for job_id in [blocker.id, *ids[cancelled:]]:
        c.wait_ended(job_id)
    return dict(zip(doomed, revisions, strict=True))


def run_watchers(
    watchers: list[Callable[[], Any]],
) -> tuple[ThreadPoolExecutor, list[Any]]:
    pool = ThreadPoolExecutor(len(watchers))
    return pool, [pool.submit(w) for w in watchers]


# ---------------------------------------------------------------------------- every change, once, in order


def test_watch_over_1000_changes_with_reconnects_sees_each_change_once_in_order(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(max_running=1, feed_heartbeat=0.2)
    stub = c.stub
    final: list[int] = []

    def done(r: WatchRead) -> bool:
        return bool(final) and r.last >= final[0]

    reference, reconnecting = WatchRead(), WatchRead()
    rng = random.Random(11)

    def reconnect_loop() -> None:
        while not done(reconnecting):
            watch(stub, reconnecting, stop=done, cut_after=rng.randint(30, 250))

    pool, futures = run_watchers([lambda: watch(stub, reference, stop=done), reconnect_loop])
    with pool:
        wait_until(lambda: reference.marker and reconnecting.marker, "both watches to begin")
        deleted = churn(c, tmp_path, queued=400, cancelled=320)
        final.append(server_revision(c))
        for f in futures:
            f.result(timeout=60)

    total = final[0]
    assert total >= 1000, f"the workload made only {total} changes"
    assert reference.snapshot == [] and reference.marker is not None and reference.marker.revision == 0
    assert [e.revision for e in reference.changes] == list(range(1, total + 1)), "unfiltered: +1 each"
    assert reconnecting.calls >= 5, f"only {reconnecting.calls} connections"
    assert [key(e) for e in reconnecting.changes] == [key(e) for e in reference.changes]
    # Deletions arrive as DELETED events at the revision DeleteJob answered.
    assert {e.job.id: e.revision for e in reference.changes if e.type == DELETED} == deleted
    # Each job's last event is the job as it stands now.
    last_seen = {e.job.id: e for e in reference.changes if e.type == UPDATED}
    for job_id in rng.sample(sorted(set(last_seen) - set(deleted)), 20):
        ev, now = last_seen[job_id], c.get(job_id)
        assert (ev.job.state, ev.job.revision) == (now.state, now.revision)
        assert now.state in FINAL_STATES


def test_snapshot_gives_the_matching_jobs_then_a_marker_then_later_changes(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    ended = [conductor.submit(spec(f"ended-{i}", "true")).id for i in range(3)]
    for job_id in ended:
        conductor.wait_ended(job_id)
    running = conductor.submit(spec("running", wait_file_cmd(stop)))
    conductor.wait_for(running.id, lambda j: j.state == state("running") and j.external_id != "")
    revision = server_revision(conductor)
    stub = conductor.stub

    def stop_at_end(r: WatchRead) -> bool:
        return any(e.job.id == running.id and e.job.state in FINAL_STATES for e in r.changes)

    read = WatchRead()
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(watch, stub, read, stop=stop_at_end)
        wait_until(lambda: read.marker, "the end of the snapshot")
        stop.touch()
        future.result(timeout=30)

    assert read.marker is not None and read.marker.revision == revision
    assert [e.job.id for e in read.snapshot] == [*ended, running.id], "every job, oldest first"
    for ev in read.snapshot:
        assert ev.type == SNAPSHOT and ev.revision == revision
        now = conductor.get(ev.job.id) if ev.job.id != running.id else None
        if now is not None:
            assert ev.job == now
    assert read.snapshot[-1].job.state == state("running")
    assert read.changes and read.changes[0].revision == revision + 1
    assert [e.revision for e in read.changes] == list(range(revision + 1, read.last + 1))
    assert read.changes[-1].job.state == state("succeeded")


def test_filters_deliver_exactly_the_matching_jobs(conductor_factory: Factory, tmp_path: Path) -> None:
    c = conductor_factory(feed_heartbeat=0.2)
    stub = c.stub

    def submit_grid(tag: str) -> list[str]:
        ids = []
        for project in ("p1", "p2"):
            for name in ("a", "b"):
                group = "g2" if name == "b" and project == "p2" else "g1"
                ids.append(c.submit(spec(name, f"echo {tag}", project=project, group=group)).id)
        for job_id in ids:
            c.wait_ended(job_id)
        return ids

    before = submit_grid("before")
    filters: list[dict[str, str]] = [
        {"project": "p1"},
        {"name": "b"},
        {"project": "p1", "name": "b"},
        {"group": "g2"},
        {"project": "nope"},
    ]
    final: list[int] = []

    def done(r: WatchRead) -> bool:
        return bool(final) and r.last >= final[0]

    reference = WatchRead()
    filtered = [WatchRead() for _ in filters]
    watchers: list[Callable[[], Any]] = [lambda: watch(stub, reference, stop=done)]
    watchers += [
        functools.partial(watch, stub, r, stop=done, **f) for r, f in zip(filtered, filters, strict=True)
    ]
    pool, futures = run_watchers(watchers)
    with pool:
        wait_until(lambda: all(r.marker for r in [reference, *filtered]), "every watch to begin")
        after = submit_grid("after")
        gone = after[1]  # p1/a
        stub.DeleteJob(pb.DeleteJobRequest(job_id=gone), timeout=10)
        final.append(server_revision(c))
        for f in futures:
            f.result(timeout=30)

    assert len(reference.snapshot) == len(before)
    assert len(reference.changes) >= 4 * 4 + 1
    for flt, read in zip(filters, filtered, strict=True):

        def matches(job: job_pb2.Job, flt: dict[str, str] = flt) -> bool:
            return all(getattr(job, k) == v for k, v in flt.items())

        listed = stub.ListJobs(pb.ListJobsRequest(**flt), timeout=10).jobs
        want_snapshot = [e.job.id for e in reference.snapshot if matches(e.job)]
        assert [e.job.id for e in read.snapshot] == want_snapshot, flt
        assert set(want_snapshot) <= {j.id for j in listed}
        want = [key(e) for e in reference.changes if matches(e.job)]
        assert [key(e) for e in read.changes] == want, f"filter {flt}"
        assert read.last == final[0], "heartbeats carry a filtered watch up to the current revision"
    assert not filtered[-1].changes and not filtered[-1].snapshot
    assert [e.type for e in filtered[0].changes if e.job.id == gone][-1] == DELETED


def test_delete_arrives_as_a_deleted_event(conductor: InProcessConductor) -> None:
    job = conductor.submit(spec("doomed", "echo bye"))
    done = conductor.wait_ended(job.id)
    stub = conductor.stub
    since = server_revision(conductor)
    read = WatchRead(last=since)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(watch, stub, read, stop=lambda r: bool(r.changes))
        time.sleep(0.2)  # the watch is open before the deletion
        answer = stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id), timeout=10)
        future.result(timeout=30)
    (ev,) = read.changes
    assert ev.type == DELETED and ev.job.id == job.id
    assert ev.revision == answer.revision == since + 1
    assert ev.job.state == done.state
    with pytest.raises(grpc.RpcError) as caught:
        conductor.get(job.id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    # A watch that starts later and passes the deletion sees it too.
    replay = watch(stub, WatchRead(last=since), stop=lambda r: bool(r.changes))
    assert [key(e) for e in replay.changes] == [key(ev)]


def test_quiet_watch_gets_heartbeats_with_the_current_revision(conductor_factory: Factory) -> None:
    c = conductor_factory(feed_heartbeat=0.2)
    c.wait_ended(c.submit(spec("one", "true")).id)
    revision = server_revision(c)
    stub = c.stub
    started = time.monotonic()
    read = watch(stub, WatchRead(last=revision), stop=lambda r: time.monotonic() - started > 1.2)
    # About six are due; ask for two so a busy machine cannot fail this.
    assert len(read.heartbeats) >= 2, read.heartbeats
    assert {e.revision for e in read.heartbeats} == {revision}
    assert all(e.type == HEARTBEAT and not e.HasField("job") for e in read.heartbeats)
    assert not read.changes


def test_snapshot_end_heartbeat_and_change_are_told_apart_by_type_alone(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    # Read as a client in any language would: by `type`, never by whether a job is set.
    # The snapshot here is empty (the filter matches no job yet), the case where an
    # end marker without a type of its own could not be told from a heartbeat.
    c = conductor_factory(feed_heartbeat=0.2)
    c.wait_ended(c.submit(spec("other", "true")).id)
    revision = server_revision(c)
    stop = tmp_path / "stop"
    kinds: list[tuple[int, int]] = []  # (type, revision), as they came
    jobs: dict[int, set[bool]] = {}  # type -> whether its events had a job
    call = c.stub.WatchJobs(pb.WatchJobsRequest(since_revision=0, name="typed"), timeout=60)
    job_id = ""
    for response in call:
        for ev in response.events:
            kinds.append((ev.type, ev.revision))
            jobs.setdefault(ev.type, set()).add(ev.HasField("job"))
        types = [t for t, _ in kinds]
        if types.count(HEARTBEAT) >= 2 and not job_id:
            job_id = c.submit(spec("typed", wait_file_cmd(stop))).id
            c.wait_for(job_id, lambda j: j.state == state("running"))
            stop.touch()
        if job_id and any(t == UPDATED for t in types) and types[-1] == HEARTBEAT:
            call.cancel()
            break
    types = [t for t, _ in kinds]
    assert kinds[0] == (SNAPSHOT_END, revision), "an empty snapshot still ends, at its revision"
    assert types.count(SNAPSHOT_END) == 1 and SNAPSHOT not in types
    first_change = types.index(UPDATED)
    assert set(types[1:first_change]) == {HEARTBEAT}
    assert {r for t, r in kinds[1:first_change]} == {revision}, "a quiet heartbeat: the current revision"
    changes = [(t, r) for t, r in kinds if t == UPDATED]
    assert [r for _, r in changes] == list(range(revision + 1, revision + 1 + len(changes)))
    assert kinds[-1] == (HEARTBEAT, changes[-1][1]), "a heartbeat after changes: the last change's revision"
    assert set(types) == {SNAPSHOT_END, HEARTBEAT, UPDATED}
    assert jobs == {SNAPSHOT_END: {False}, HEARTBEAT: {False}, UPDATED: {True}}
    assert c.get(job_id).state == state("succeeded")


def test_snapshot_and_bursts_come_batched_and_a_lone_change_alone(
    monkeypatch: pytest.MonkeyPatch, conductor_factory: Factory, tmp_path: Path
) -> None:
    # White-box: batches of 7 instead of 1,000, so a handful of jobs shows the cuts.
    monkeypatch.setattr(conductor_snapshots, "WATCH_BATCH_EVENTS", 7)
    c = conductor_factory(feed_heartbeat=0.2)
    ids = [c.submit(spec("many-0", "true")).id]
    c.wait_ended(ids[0])
    start = server_revision(c)  # a watch from here replays the 15 jobs after it
    ids += [c.submit(spec(f"many-{i}", "true")).id for i in range(1, 16)]
    for job_id in ids:
        c.wait_ended(job_id)
    revision = server_revision(c)
    stub = c.stub

    # A snapshot of 16 jobs: 7 + 7 + 2, the SNAPSHOT_END closing the last batch.
    call = stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=30)
    sizes: list[list[int]] = []
    for response in call:
        sizes.append([ev.type for ev in response.events])
        if response.events[-1].type == SNAPSHOT_END:
            call.cancel()
            break
    assert sizes == [[SNAPSHOT] * 7, [SNAPSHOT] * 7, [SNAPSHOT] * 2 + [SNAPSHOT_END]]

    # Changes already made when the watch asks for them go out together, 7 at a time.
    changes = revision - start
    assert changes >= 3 * 15
    read = WatchRead(last=start)
    watch(stub, read, stop=lambda r: r.last >= revision)
    assert [e.revision for e in read.changes] == list(range(start + 1, revision + 1))
    assert read.responses == -(-changes // 7), read.responses

    # A single change, live, comes at once in a response of its own.
    lone = WatchRead(last=revision)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(watch, stub, lone, stop=lambda r: bool(r.changes))
        wait_until(lambda: lone.heartbeats, "the watch to be open and quiet")
        sent = time.monotonic()
        stub.DeleteJob(pb.DeleteJobRequest(job_id=ids[0]), timeout=10)
        future.result(timeout=30)
        took = time.monotonic() - sent
    assert [e.type for e in lone.changes] == [DELETED]
    assert lone.responses == len(lone.heartbeats) + 1
    assert took < 0.2 + 1.0, "a lone change waits for no batch"


# ---------------------------------------------------------------------------- history that is gone


def test_since_revision_ahead_or_negative_is_refused(conductor_factory: Factory) -> None:
    conductor = conductor_factory(feed_heartbeat=0.2)
    conductor.wait_ended(conductor.submit(spec("one", "true")).id)
    revision = server_revision(conductor)
    for since in (revision + 1, revision + 1000):
        err = watch_error(conductor.stub, since)
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE, err  # type: ignore[attr-defined]
        assert re.search(r"snapshot|since_revision 0", err.details() or ""), err.details()  # type: ignore[attr-defined]
    err = watch_error(conductor.stub, -1)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    # The current revision itself is fine: nothing after it yet.
    read = watch(conductor.stub, WatchRead(last=revision), stop=lambda r: True, timeout=10)
    assert read.calls == 1 and not read.changes


def test_compacted_revisions_are_out_of_range_and_kept_ones_replay_from_disk(
    monkeypatch: pytest.MonkeyPatch, conductor_factory: Factory, tmp_path: Path
) -> None:
    # White-box: the same conductor with small histories, so compaction comes after a
    # thousand writes instead of a hundred thousand: 16 events in memory, 300 on disk.
    monkeypatch.setattr(conductor_server, "Feeds", functools.partial(Feeds, ring_size=16))
    small = functools.partial(make_registry, event_history=300)
    monkeypatch.setattr(conductor_server, "make_registry", small)
    c = conductor_factory(max_running=1, feed_heartbeat=0.2)
    stub = c.stub
    final: list[int] = []

    def done(r: WatchRead) -> bool:
        return bool(final) and r.last >= final[0]

    live = WatchRead()
    # No BDP probing: the flow-control window stays at 64 KiB, so the server must hold back.
    stalled_channel = grpc.insecure_channel(c.address, options=[("grpc.http2.bdp_probe", 0)])
    # A subscriber that takes nothing while the history moves past it.
    stalled = conductor_pb2_grpc.ConductorStub(stalled_channel).WatchJobs(
        pb.WatchJobsRequest(since_revision=0), timeout=120
    )
    try:
        pool, futures = run_watchers([lambda: watch(stub, live, stop=done)])
        with pool:
            wait_until(lambda: live.marker, "the live watch to begin")
            churn(c, tmp_path, queued=360, cancelled=340)
            final.append(server_revision(c))
            futures[0].result(timeout=60)
        assert final[0] >= 1000
        assert [e.revision for e in live.changes] == list(range(1, final[0] + 1))

        err = watch_error(stub, 1)
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE, err  # type: ignore[attr-defined]
        assert re.search(r"snapshot|since_revision 0", err.details() or ""), err.details()  # type: ignore[attr-defined]
        info = error_info(err)
        assert info is not None and "oldest_revision" in info.metadata, info
        oldest = int(info.metadata["oldest_revision"])
        assert 2 < oldest <= final[0] - 300 + 1, oldest

        # The oldest kept revision and everything after it replays, from disk, as it came live.
        replay = watch(stub, WatchRead(last=oldest - 1), stop=done)
        assert [key(e) for e in replay.changes] == [key(e) for e in live.changes if e.revision >= oldest]
        # One further back is gone.
        err = watch_error(stub, oldest - 2)
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE  # type: ignore[attr-defined]

        # The stalled subscriber, read at last, gets a gap-free prefix (what its transport
        # held) and then, as its place in the history is gone, a clear OUT_OF_RANGE:
        # never a silent skip.
        late = WatchRead()
        in_snapshot = True
        with pytest.raises(grpc.RpcError) as caught:
            for response in stalled:
                in_snapshot = late.take(response, in_snapshot)
        assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE, caught.value  # type: ignore[attr-defined]
        assert re.search(r"snapshot|since_revision 0", caught.value.details() or "")  # type: ignore[attr-defined]
        revisions = [e.revision for e in late.changes]
        assert revisions == list(range(1, len(revisions) + 1)), "a gap in a stalled watch"
        assert len(revisions) < oldest - 1
    finally:
        stalled.cancel()
        stalled_channel.close()


# ---------------------------------------------------------------------------- nothing left behind


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class ServerState:
    log_streams: int
    watches: int
    kernel_watches: int
    subscribers: int
    tasks: int


def server_state(c: InProcessConductor) -> ServerState:
    def read() -> ServerState:
        feeds = c.running.feeds  # type: ignore[union-attr]
        return ServerState(
            feeds.active_log_streams,
            feeds.active_watches,
            feeds.watcher.watch_count,
            feeds.watcher.subscriber_count,
            len(asyncio.all_tasks()),
        )

    return on_server(c, read)


async def drain(call: Any) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for _ in call:
            pass


async def settle(check: Callable[[], bool], what: Callable[[], str], within: float = 15.0) -> None:
    """Poll ``check`` without blocking this loop; ``what`` describes the wait on failure."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what()}")
        await asyncio.sleep(0.05)


def test_cancelled_and_dropped_streams_leave_no_task_watch_or_file_behind(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(max_running=2, feed_heartbeat=0.2)
    stop = tmp_path / "stop"
    tickers = [
        c.submit(spec(f"ticker-{i}", f"while [ ! -e {stop} ]; do echo tick; sleep 0.05; done"))
        for i in range(2)
    ]
    for job in tickers:
        c.wait_for(job.id, lambda j: j.state == state("running") and j.external_id != "")
    job_ids = [j.id for j in tickers]

    def open_streams(
        channel: grpc.aio.Channel, logs: int, watches: int
    ) -> tuple[list[Any], list[asyncio.Task[None]]]:
        stub = conductor_pb2_grpc.ConductorStub(channel)
        calls: list[Any] = [
            stub.StreamLogs(pb.StreamLogsRequest(job_id=job_ids[i % 2], follow=True)) for i in range(logs)
        ]
        calls += [stub.WatchJobs(pb.WatchJobsRequest(since_revision=0)) for _ in range(watches)]
        return calls, [asyncio.create_task(drain(call)) for call in calls]

    async def main() -> None:
        # Warm up: the first channel and stream make grpc's and the feeds' one-time resources.
        warm = grpc.aio.insecure_channel(c.address)
        calls, tasks = open_streams(warm, 1, 1)
        await settle(
            lambda: server_state(c).log_streams == 1 and server_state(c).watches == 1, lambda: "warm-up"
        )
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks)
        await warm.close()
        await settle(
            lambda: server_state(c).log_streams == 0 and server_state(c).watches == 0, lambda: "warm-up end"
        )
        # The registry's reader processes, started by the first snapshot, are all up.
        readers = c.running.registry.readers  # type: ignore[union-attr,attr-defined]
        if readers is not None:
            c.call(readers.wait_ready())
        await asyncio.sleep(0.3)
        base, base_fds = server_state(c), fd_count()
        assert base.kernel_watches == 0 and base.subscribers == 0, base

        cancelling, dropping = grpc.aio.insecure_channel(c.address), grpc.aio.insecure_channel(c.address)
        calls_a, tasks_a = open_streams(cancelling, 30, 20)
        _, tasks_b = open_streams(dropping, 30, 20)
        await settle(
            # A stream counts before its first read has opened the log, on a
            # worker thread: wait for the files too, not only the counters.
            lambda: server_state(c).log_streams == 60
            and server_state(c).watches == 40
            and fd_count() >= base_fds + 60,
            lambda: f"every stream: {server_state(c)}, {fd_count() - base_fds} more open files",
        )
        busy, busy_fds = server_state(c), fd_count()
        # The measurements can see what the streams hold: a kernel watch per job
        # directory, a subscription and an open log file per log stream, tasks.
        assert busy.kernel_watches == 2 and busy.subscribers == 60, busy
        assert busy.tasks >= base.tasks + 100, (base, busy)
        assert busy_fds >= base_fds + 60, (base_fds, busy_fds)

        for call in calls_a:  # clients that cancel their calls
            call.cancel()
        await dropping.close()  # a client that goes away altogether
        await asyncio.gather(*tasks_a, *tasks_b)
        await settle(
            lambda: server_state(c) == base,
            lambda: f"the server to be back at {base} (now {server_state(c)})",
        )
        await cancelling.close()
        await settle(lambda: fd_count() == base_fds, lambda: f"{base_fds} open files (now {fd_count()})")

    asyncio.run(main())
    stop.touch()
    for job in tickers:
        c.wait_ended(job.id)


def test_heartbeats_never_run_ahead_of_changes_not_yet_sent(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    # Heartbeats due all the time while changes pour in: a heartbeat's revision must
    # never pass a change that has not been sent yet, or a client resuming from it loses it.
    c = conductor_factory(max_running=1, feed_heartbeat=0.005)
    stub = c.stub
    final: list[int] = []

    def done(r: WatchRead) -> bool:
        return bool(final) and r.last >= final[0]

    reads = [WatchRead() for _ in range(3)]
    pool, futures = run_watchers([functools.partial(watch, stub, r, stop=done) for r in reads])
    with pool:
        wait_until(lambda: all(r.marker for r in reads), "every watch to begin")
        churn(c, tmp_path, queued=150, cancelled=150)
        final.append(server_revision(c))
        for f in futures:
            f.result(timeout=60)
    for read in reads:
        assert [e.revision for e in read.changes] == list(range(1, final[0] + 1))
        assert read.heartbeats
