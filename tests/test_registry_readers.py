"""The registry's reader processes (``conductor.readers``): real child processes
reading the real SQLite file, answering what the registry's threads would, and
never the only way to an answer (the contract suite runs against them too)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from baton.common.jobs import JobFilter
from baton.conductor import readers
from baton.conductor.readers import SNAPSHOT_PROCESSES
from baton.conductor.registry import SqliteRegistry
from baton.v1 import job_pb2
from tests.test_registry_contract import job, write_all

S = job_pb2
ENDED = [S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED]


async def _filled(path: Path, n: int) -> tuple[SqliteRegistry, list[job_pb2.Job]]:
    reg = SqliteRegistry(path, event_history=1_000)
    await reg.open()
    jobs = [
        job(i, ENDED[i % 3] if i % 5 else S.JOB_STATE_RUNNING, project=f"p{i % 4}") for i in range(1, n + 1)
    ]
    await write_all(reg, jobs)
    assert reg.readers is not None
    async with asyncio.timeout(60):
        await reg.readers.wait_ready()
    return reg, jobs


def _damage(path: Path, job_id: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE jobs SET job = ? WHERE id = ?", (b"\xff\xff\xff", job_id))


async def _all_pages(reg: SqliteRegistry, flt: JobFilter) -> list[str]:
    out: list[str] = []
    after = None
    while rows := await reg.ended(flt, after, 7):
        out += [j.id for _, j in rows]
        after = rows[-1][0]
    return out


def test_reads_are_answered_by_the_processes(tmp_path: Path) -> None:
    async def go() -> None:
        reg, jobs = await _filled(tmp_path / "r.db", 60)
        assert reg.readers is not None
        before = reg.readers.answered
        ended = [j for j in jobs if j.state in ENDED]
        got = await reg.get(ended[3].id)
        assert got == ended[3]
        assert await reg.get("no-such-job") is None
        newest_first = [j.id for j in reversed(ended) if j.project == "p1"]
        assert await _all_pages(reg, JobFilter(project="p1")) == newest_first
        snap = await reg.snapshot(JobFilter())
        assert isinstance(snap, readers.ReaderSnapshot)
        blobs = [b for b in await snap.page(1_000)]
        await snap.close()
        assert [job_pb2.Job.FromString(b).id for b in blobs] == [j.id for j in jobs]
        # Every read above went to a process: none fell back to the threads.
        assert reg.readers.answered - before >= 4 + 2
        await reg.close()

    asyncio.run(go())


def test_a_damaged_row_read_by_a_process_is_left_out_and_noted(tmp_path: Path) -> None:
    async def go() -> None:
        path = tmp_path / "r.db"
        reg, jobs = await _filled(path, 30)
        bad = [j for j in jobs if j.state in ENDED][4]
        _damage(path, bad.id)
        ids = await _all_pages(reg, JobFilter())
        assert bad.id not in ids
        assert len(ids) == len([j for j in jobs if j.state in ENDED]) - 1
        assert await reg.get(bad.id) is None
        snap = await reg.snapshot(JobFilter())
        frames = [r async for r in snap.responses()]
        await snap.close()
        assert bad.id.encode() not in b"".join(f.data for f in frames)
        assert [d.job_id for d in reg.damaged] == [bad.id]
        await reg.close()

    asyncio.run(go())


def test_a_killed_reader_costs_no_answer_and_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "RESTART_AFTER_SECONDS", 0.2)

    async def go() -> None:
        reg, jobs = await _filled(tmp_path / "r.db", 40)
        procs = reg.readers
        assert procs is not None
        for reader in list(procs._ready):
            reader.proc.kill()
            await reader.proc.wait()
        ended = [j for j in jobs if j.state in ENDED]
        # Every process is dead: the reads find out, and the threads answer.
        for j in ended[:5]:
            assert await reg.get(j.id) == j
        assert await _all_pages(reg, JobFilter()) == [j.id for j in reversed(ended)]
        snap = await reg.snapshot(JobFilter())
        assert len(await snap.page(1_000)) == len(jobs)
        await snap.close()
        async with asyncio.timeout(60):
            await procs.wait_ready()
        answered = procs.answered
        assert await reg.get(ended[0].id) == ended[0]
        assert procs.answered == answered + 1, "the new process answers"
        await reg.close()

    asyncio.run(go())


def test_more_snapshots_than_processes_each_stand_at_their_revision(tmp_path: Path) -> None:
    async def go() -> None:
        reg, jobs = await _filled(tmp_path / "r.db", 25)
        snaps = []
        for i in range(SNAPSHOT_PROCESSES + 2):
            snaps.append(await reg.snapshot(JobFilter()))
            # A change between snapshots: each sees the jobs as of the revision it
            # stands at (a snapshot the processes cannot take may share a young one's).
            changed = job_pb2.Job()
            changed.CopyFrom(jobs[i])
            changed.name = f"renamed-{i}"
            changed.revision = 1_000 + i
            await reg.put(i + 1, changed, None, 1_000 + i)
        leased = [s for s in snaps if isinstance(s, readers.ReaderSnapshot)]
        assert len(leased) == SNAPSHOT_PROCESSES
        for k, snap in enumerate(snaps):
            got = [job_pb2.Job.FromString(b) for b in await snap.page(1_000)]
            seen = [f"renamed-{i}" if 1_000 + i <= snap.revision else "n" for i in range(len(snaps))]
            assert [j.name for j in got[: len(snaps)]] == seen
            assert k >= SNAPSHOT_PROCESSES or seen.count("n") == len(snaps) - k, "a leased one is its own"
        for snap in snaps:
            await snap.close()
        assert reg.readers is not None and len(reg.readers._free_views) == SNAPSHOT_PROCESSES
        await reg.close()

    asyncio.run(go())


def test_a_cancelled_read_never_hands_its_answer_to_the_next(tmp_path: Path) -> None:
    async def go() -> None:
        reg, jobs = await _filled(tmp_path / "r.db", 20)
        procs = reg.readers
        assert procs is not None
        ended = [j for j in jobs if j.state in ENDED]
        for i in range(20):
            first = asyncio.ensure_future(procs.ask(("get", ended[0].id)))
            await asyncio.sleep(0)  # its request is on its way
            first.cancel()
            # The process the cancelled read had is free again at once; its answer is not.
            assert await reg.get(ended[1 + i % 5].id) == ended[1 + i % 5]
        await reg.close()

    asyncio.run(go())
