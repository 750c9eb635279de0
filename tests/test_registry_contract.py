"""The registry's contract, run against every implementation (``make_registry``).

As Flower runs one suite against its in-memory and SQLite link states: what
the lifecycle relies on (what ``open`` gives back, the filtered reads of ended
jobs and their order, a snapshot that holds still while writes go on, the
marks a restart uses) holds for both, so either can stand in for the other.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from baton.common.jobs import FINAL_STATES, JobFilter
from baton.conductor.registry import IN_MEMORY, Opened, Registry, SqliteRegistry, make_registry
from baton.v1 import job_pb2

S = job_pb2
T = TypeVar("T")
Reopen = Callable[[], Registry]


class _ReadByProcesses(SqliteRegistry):
    """The SQLite registry with its reader processes answering from the first read
    (a conductor starts them at its first read of an ended job, and reads in
    threads until they answer)."""

    async def open(self) -> Opened:
        opened = await super().open()
        assert self.readers is not None
        async with asyncio.timeout(60):
            await self.readers.wait_ready()
        return opened


@pytest.fixture(params=["sqlite", "sqlite-reader-processes", "memory"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Reopen]:
    """A function giving the registry under test, as a restarted conductor would find it."""
    memory = make_registry(IN_MEMORY, event_history=50) if request.param == "memory" else None

    def make() -> Registry:
        if memory is not None:
            return memory
        if request.param == "sqlite-reader-processes":
            return _ReadByProcesses(tmp_path / "registry.db", event_history=50)
        return make_registry(tmp_path / "registry.db", event_history=50)

    yield make


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def job(
    i: int, state: int, project: str = "p", group: str = "g", name: str = "n", **fields: Any
) -> job_pb2.Job:
    j = job_pb2.Job(id=f"job-{i:05d}", run_id=f"job-{i:05d}", project=project, group=group, name=name)
    j.state = state  # type: ignore[assignment]
    j.run_dir = f"/runs/{project}/{group}/{name}/{j.id}"
    for key, value in fields.items():
        setattr(j, key, value)
    if state in FINAL_STATES:
        j.end_time.FromSeconds(1_000 + i)
    return j


async def write_all(reg: Registry, jobs: list[job_pb2.Job], start_rev: int = 0) -> int:
    """Insert each job at its index's seq, one revision each; return the last revision."""
    rev = start_rev
    futs = []
    for i, j in enumerate(jobs, start=1):
        rev += 1
        j.revision = rev
        futs.append(reg.insert(i, j, None))
    await asyncio.gather(*futs)
    return rev


def test_a_new_registry_opens_empty(reopen: Reopen) -> None:
    async def go() -> None:
        reg = reopen()
        opened = await reg.open()
        assert (opened.live, opened.ended_counts, opened.max_revision, opened.next_seq) == ([], {}, 0, 1)
        assert opened.published_revision is None and reg.damaged == []
        await reg.close()

    run(go())


def test_open_gives_live_jobs_counts_revision_and_the_next_seq_only(reopen: Reopen) -> None:
    states = [S.JOB_STATE_QUEUED, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_RUNNING, S.JOB_STATE_FAILED,
              S.JOB_STATE_SUCCEEDED, S.JOB_STATE_PAUSED]  # fmt: skip

    async def first() -> None:
        reg = reopen()
        await reg.open()
        jobs = [job(i, st, request_id=f"r{i}") for i, st in enumerate(states)]
        rev = await write_all(reg, jobs)
        # A live job ends; another changes quietly (no event); one is deleted.
        ended = job(0, S.JOB_STATE_CANCELLED, revision=rev + 1, request_id="r0")
        await reg.put(1, ended, '{"note": 1}', S.JOB_EVENT_TYPE_UPDATED)
        quiet = job(2, S.JOB_STATE_RUNNING, revision=3, request_id="r2", reason="beat")
        await reg.put(3, quiet, "notes", None)
        gone = job(3, S.JOB_STATE_FAILED, revision=rev + 2, request_id="r3")
        await reg.delete([gone])
        await reg.close()

    async def second() -> None:
        reg = reopen()
        opened = await reg.open()
        assert [(s.seq, s.job.id, s.job.state) for s in opened.live] == [
            (3, "job-00002", S.JOB_STATE_RUNNING), (6, "job-00005", S.JOB_STATE_PAUSED),
        ]  # fmt: skip
        assert opened.live[0].runtime == "notes" and opened.live[0].job.reason == "beat"
        assert opened.ended_counts == {S.JOB_STATE_SUCCEEDED: 2, S.JOB_STATE_CANCELLED: 1}
        assert opened.max_revision == len(states) + 2
        assert opened.next_seq == len(states) + 1
        assert await reg.get("job-00003") is None and not reg.contains_blocking("job-00003")
        got = await reg.get("job-00000")
        assert got is not None and got.state == S.JOB_STATE_CANCELLED
        assert await reg.find_request("r1") == "job-00001"
        assert await reg.find_request("r3") is None, "a deleted job's key is free"
        assert reg.contains_blocking("job-00001")
        # The ids under one job directory, live and ended, in one read; the deleted one is not.
        assert reg.ids_blocking("p", "g", "n") == {f"job-{i:05d}" for i in (0, 1, 2, 4, 5)}
        assert reg.ids_blocking("p", "g", "other") == set()
        await reg.close()

    run(first())
    run(second())


def test_a_second_job_with_a_taken_request_id_is_refused(reopen: Reopen) -> None:
    async def go() -> None:
        reg = reopen()
        await reg.open()
        await reg.insert(1, job(1, S.JOB_STATE_QUEUED, request_id="k", revision=1), None)
        with pytest.raises(Exception):  # noqa: B017  (the kind of error is each implementation's own)
            await reg.insert(2, job(2, S.JOB_STATE_QUEUED, request_id="k", revision=2), None)
        assert await reg.find_request("k") == "job-00001"
        await reg.close()

    run(go())


def history(count: int, seed: int = 7) -> list[job_pb2.Job]:
    rnd = random.Random(seed)
    states = [S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED, S.JOB_STATE_RUNNING,
              S.JOB_STATE_QUEUED]  # fmt: skip
    return [
        job(
            i,
            rnd.choice(states),
            project=rnd.choice("ab"),
            group=rnd.choice("xyz"),
            name=rnd.choice(["m", "n", "o", "q"]),
        )
        for i in range(count)
    ]


FILTERS = [
    JobFilter(),
    JobFilter(project="a"),
    JobFilter(group="y"),
    JobFilter(name="o"),
    JobFilter(project="b", group="x"),
    JobFilter(project="a", name="m"),
    JobFilter(group="z", name="n"),
    JobFilter(project="a", group="z", name="q"),
    JobFilter(states=(S.JOB_STATE_FAILED,)),
    JobFilter(states=(S.JOB_STATE_SUCCEEDED, S.JOB_STATE_CANCELLED), project="b"),
    JobFilter(states=(S.JOB_STATE_RUNNING,)),  # live only: nothing ended matches
    JobFilter(project="nobody"),
]


def test_ended_pages_match_a_full_scan_for_every_filter_both_ways(reopen: Reopen) -> None:
    jobs = history(400)

    async def go() -> None:
        reg = reopen()
        await reg.open()
        await write_all(reg, jobs)
        for flt in FILTERS:
            expected = [i + 1 for i, j in enumerate(jobs) if j.state in FINAL_STATES and flt.matches(j)]
            for newest_first in (True, False):
                got: list[int] = []
                after = None
                while True:
                    page = await reg.ended(flt, after, 7, newest_first=newest_first)
                    if not page:
                        break
                    got += [seq for seq, _ in page]
                    after = page[-1][0]
                want = list(reversed(expected)) if newest_first else expected
                assert got == want, (flt, newest_first)
        await reg.close()

    run(go())


def test_ended_jobs_come_in_the_order_they_ended(reopen: Reopen) -> None:
    async def go() -> None:
        reg = reopen()
        await reg.open()
        jobs = [job(i, S.JOB_STATE_SUCCEEDED) for i in range(6)] + [job(6, S.JOB_STATE_RUNNING)]
        jobs[0].end_time.FromSeconds(5_000)  # the first submitted ended last
        await write_all(reg, jobs)
        every, last = JobFilter(), 2**63 - 1
        assert [j.id for _, j in await reg.ended_by_end(every, last, None, 3)] == [
            "job-00001", "job-00002", "job-00003",
        ]  # fmt: skip
        bounded = await reg.ended_by_end(every, 1_003 * 10**9, None, 100)
        assert [j.id for _, j in bounded] == ["job-00001", "job-00002", "job-00003"], "at the bound: in"
        assert len(await reg.ended_by_end(every, last, None, 100)) == 6, "a live job never"
        await reg.close()

    run(go())


def test_ended_by_end_pages_match_a_full_scan_for_every_filter(reopen: Reopen) -> None:
    jobs = history(300, seed=11)
    rnd = random.Random(12)
    for j in jobs:
        if j.state in FINAL_STATES:
            # Ends out of submission order, with ties; a few say no end at all.
            if rnd.random() < 0.05:
                j.ClearField("end_time")
            else:
                j.end_time.FromSeconds(1_000 + rnd.randrange(60))
    through = (1_000 + 40) * 10**9

    def end_of(j: job_pb2.Job) -> int:
        return j.end_time.ToNanoseconds() if j.HasField("end_time") else 0

    async def go() -> None:
        reg = reopen()
        await reg.open()
        await write_all(reg, jobs)
        for flt in FILTERS:
            matching = [
                (end_of(j), i + 1)
                for i, j in enumerate(jobs)
                if j.state in FINAL_STATES and flt.matches(j) and end_of(j) <= through
            ]
            got: list[int] = []
            after = None
            while True:
                page = await reg.ended_by_end(flt, through, after, 7)
                if not page:
                    break
                after = (end_of(page[-1][1]), page[-1][0])
                # Short only at the end.
                assert len(page) == 7 or not await reg.ended_by_end(flt, through, after, 7)
                got += [seq for seq, _ in page]
            assert got == [seq for _, seq in sorted(matching)], flt
        await reg.close()

    run(go())


def test_a_snapshot_holds_still_while_writes_go_on(reopen: Reopen) -> None:
    async def go() -> None:
        reg = reopen()
        await reg.open()
        jobs = history(60)
        rev = await write_all(reg, jobs)
        snap = await reg.snapshot(JobFilter(project="a"))
        assert snap.revision == rev
        expected = [j.id for j in jobs if j.project == "a"]
        # Writes after the snapshot began: none of them shows in it.
        first = [job_pb2.Job.FromString(b) for b in await snap.page(5)]
        changed = job(1, S.JOB_STATE_FAILED, project=jobs[1].project, group=jobs[1].group, revision=rev + 1)
        await reg.put(2, changed, None, S.JOB_EVENT_TYPE_UPDATED)
        await reg.delete([job(2, jobs[2].state, revision=rev + 2)])
        await reg.insert(61, job(61, S.JOB_STATE_QUEUED, project="a", revision=rev + 3), None)
        seen = list(first)
        while page := await snap.page(5):
            seen += [job_pb2.Job.FromString(b) for b in page]
        await snap.close()
        assert [j.id for j in seen] == expected
        assert all(j.revision <= rev for j in seen)
        assert [j.state for j in seen] == [j.state for j in jobs if j.project == "a"]
        later = await reg.snapshot(JobFilter())
        assert later.revision == rev + 3
        await later.close()
        await reg.close()

    run(go())


def test_stale_names_what_changed_after_the_published_mark(reopen: Reopen) -> None:
    async def first() -> None:
        reg = reopen()
        opened = await reg.open()
        assert opened.published_revision is None
        rev = await write_all(reg, [job(i, S.JOB_STATE_SUCCEEDED) for i in range(5)])
        reg.note_published(3)
        await reg.put(5, job(4, S.JOB_STATE_SUCCEEDED, revision=rev, reason="again"), None, None)
        await reg.delete([job(1, S.JOB_STATE_SUCCEEDED, revision=rev + 1)])
        await reg.close()

    async def second() -> None:
        reg = reopen()
        opened = await reg.open()
        assert opened.published_revision == 3
        stale = await reg.stale(3)
        assert sorted(j.id for j in stale.jobs) == ["job-00003", "job-00004"]
        assert [j.id for j in stale.deleted] == ["job-00001"]
        # With no mark: live jobs and those ended within the hour (these ended long ago).
        everything = await reg.stale(None)
        assert everything.jobs == [] and everything.deleted == []
        await reg.close()

    run(first())
    run(second())


def test_events_are_kept_in_order_and_pruned_from_the_oldest(reopen: Reopen) -> None:
    async def go() -> None:
        reg = reopen()
        await reg.open()
        rev = 0
        for round_ in range(30):  # 1,200 writes: past the pruning point, with 50 kept
            jobs = [job(round_ * 40 + i, S.JOB_STATE_SUCCEEDED) for i in range(40)]
            futs = []
            for i, j in enumerate(jobs):
                rev += 1
                j.revision = rev
                futs.append(reg.insert(round_ * 40 + i + 1, j, None))
            await asyncio.gather(*futs)
        oldest = await reg.oldest_revision()
        assert 1 < oldest <= rev - 49
        events = await reg.events_after(rev - 10, 100)
        assert [e.revision for e in events] == list(range(rev - 9, rev + 1))
        assert all(e.type == S.JOB_EVENT_TYPE_UPDATED and e.job.id for e in events)
        await reg.close()

    run(go())


def test_deleting_many_logs_each_deletion_at_its_revision(reopen: Reopen) -> None:
    async def go() -> None:
        reg = reopen()
        opened = await reg.open()
        rev = await write_all(reg, [job(i, S.JOB_STATE_FAILED) for i in range(10)])
        gone = [job(i, S.JOB_STATE_FAILED, revision=rev + 1 + i) for i in range(4)]
        await reg.delete(gone)
        events = await reg.events_after(rev, 10)
        assert [(e.revision, e.type, e.job.id) for e in events] == [
            (rev + 1 + i, S.JOB_EVENT_TYPE_DELETED, f"job-{i:05d}") for i in range(4)
        ]
        left = await reg.ended(JobFilter(), None, 100)
        assert [seq for seq, _ in left] == list(range(10, 4, -1))
        assert opened.live == []
        await reg.close()

    run(go())
