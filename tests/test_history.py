"""A long history, in shapes not times: 20,000 ended jobs written into the registry.

The conductor keeps only live jobs in memory and reads ended ones back through
the registry's indexes. These tests check that what the indexes answer is what
a full scan of every row gives (every ListJobs filter, one matching nothing
among them, across pages; the counts; a WatchJobs snapshot), that a snapshot
read page by page while jobs change meets the changes after it exactly (none
lost, none twice), and that retention deletes exactly what it should.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest

from baton.common.jobs import JobFilter
from baton.common.layout import Layout
from baton.conductor.registry import SqliteRegistry
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from tests.harness import InProcessConductor, kill_job_groups

S = job_pb2
HISTORY = 20_000
ENDED = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)


def history_jobs(
    home: Path, count: int, seed: int = 18, *, end_base: float | None = None
) -> list[job_pb2.Job]:
    """``count`` ended jobs, spread over projects, groups, names and states, oldest first."""
    rnd = random.Random(seed)
    layout = Layout.under(home / "status", home / "checkpoints")
    base = end_base if end_base is not None else time.time() - 86_400
    jobs = []
    for i in range(count):
        project, group = f"p{rnd.randrange(5)}", f"g{rnd.randrange(4)}"
        name = f"n{rnd.randrange(40)}"
        job_id = f"20250101-000000-{i:06x}"
        job = job_pb2.Job(id=job_id, run_id=job_id, project=project, group=group, name=name)
        job.state = rnd.choice(ENDED)  # type: ignore[assignment]
        job.run_dir = str(layout.run_dir(project, group, name, job_id))
        job.checkpoint_dir = str(layout.run_checkpoint_dir(project, group, name, job_id))
        job.create_time.FromSeconds(int(base) + i)
        job.end_time.FromSeconds(int(base) + i + rnd.randrange(3600))
        job.update_time.CopyFrom(job.end_time)
        job.spec.command = "true"
        jobs.append(job)
    return jobs


def seed_registry(home: Path, jobs: list[job_pb2.Job]) -> None:
    """Write ``jobs`` into the home's registry as a conductor would have (seq = order, one revision each)."""

    async def write() -> None:
        reg = SqliteRegistry(home / "state" / "registry.db")
        await reg.open()
        futs = []
        for i, job in enumerate(jobs, start=1):
            job.revision = i
            futs.append(reg.insert(i, job, None))
        await asyncio.gather(*futs)
        reg.note_published(len(jobs))
        await reg.put(1, jobs[0], None, None)  # carries the published mark
        await reg.close()

    (home / "state").mkdir(parents=True, exist_ok=True, mode=0o700)
    asyncio.run(write())


def full_scan(home: Path) -> list[tuple[int, job_pb2.Job]]:
    """Every row of the registry, decoded, by seq: the oracle."""
    db = sqlite3.connect(home / "state" / "registry.db")
    try:
        rows = db.execute("SELECT seq, job FROM jobs ORDER BY seq").fetchall()
    finally:
        db.close()
    return [(seq, job_pb2.Job.FromString(blob)) for seq, blob in rows]


def list_all(stub: conductor_pb2_grpc.ConductorStub, req: pb.ListJobsRequest, page_size: int) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = pb.ListJobsRequest()
        page.CopyFrom(req)
        page.page_size, page.page_token = page_size, token
        resp = stub.ListJobs(page, timeout=30)
        assert len(resp.jobs) <= page_size
        ids += [j.id for j in resp.jobs]
        token = resp.next_page_token
        if not token:
            return ids
        assert resp.jobs, "a page with a next token is never empty"


FILTERS = {
    "all": pb.ListJobsRequest(),
    "project": pb.ListJobsRequest(project="p3"),
    "group": pb.ListJobsRequest(group="g1"),
    "name": pb.ListJobsRequest(name="n7"),
    "project+group": pb.ListJobsRequest(project="p0", group="g2"),
    "project+name": pb.ListJobsRequest(project="p4", name="n11"),
    "group+name": pb.ListJobsRequest(group="g3", name="n0"),
    "project+group+name": pb.ListJobsRequest(project="p1", group="g0", name="n20"),
    "one state": pb.ListJobsRequest(states=[S.JOB_STATE_FAILED]),
    "two states": pb.ListJobsRequest(states=[S.JOB_STATE_CANCELLED, S.JOB_STATE_SUCCEEDED]),
    "live state": pb.ListJobsRequest(states=[S.JOB_STATE_RUNNING]),
    "live and ended": pb.ListJobsRequest(states=[S.JOB_STATE_QUEUED, S.JOB_STATE_FAILED], project="p2"),
    "states+all names": pb.ListJobsRequest(
        states=[S.JOB_STATE_SUCCEEDED], project="p2", group="g3", name="n5"
    ),
    "nothing (project)": pb.ListJobsRequest(project="nobody"),
    "nothing (state)": pb.ListJobsRequest(states=[S.JOB_STATE_PAUSED]),
    "nothing (combination)": pb.ListJobsRequest(project="p0", name="live"),
}


@pytest.fixture(scope="module")
def history_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("history") / "home"
    seed_registry(home, history_jobs(home, HISTORY))
    return home


def test_indexed_answers_are_a_full_scans_for_every_filter_across_pages(history_home: Path) -> None:
    c = InProcessConductor(history_home, max_running=1).start()
    try:
        # Live jobs (one running, two queued) and a few just ended, still in memory, among the history.
        live = [c.submit("name: live\nproject: p2\ncommand: 'sleep 60'\n") for _ in range(3)]
        c.wait_for(live[0].id, lambda j: j.state == S.JOB_STATE_RUNNING and j.external_id != "")
        assert c.running is not None
        lc = c.running.lifecycle
        # Nothing evicted while the oracle is read: every job stands still.
        oracle = full_scan(history_home)
        assert len(oracle) == HISTORY + 3
        newest_first = list(reversed(oracle))
        for what, req in FILTERS.items():
            flt = JobFilter(req.project, req.group, req.name, tuple(req.states))
            expected = [j.id for _, j in newest_first if flt.matches(j)]
            if what.startswith("nothing"):
                assert expected == [], what
            got = list_all(c.stub, req, 1000)
            assert got == expected, (what, len(got), len(expected))
            if len(expected) < 3000:  # small pages too, where they stay few
                assert list_all(c.stub, req, 7) == expected, what
        # Counts by state are the scan's, and no job was read to give them.
        counts: dict[int, int] = {}
        for _, j in oracle:
            counts[j.state] = counts.get(j.state, 0) + 1
        info = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
        assert {x.state: x.count for x in info.job_counts} == counts
        # The history stays in the registry: memory holds the live jobs and nothing of the 20,000.
        assert len(lc.book) == 3
        # GetJob of an ended job out of memory, and of one that is not there.
        some = newest_first[1234][1]
        assert c.get(some.id) == some
        with pytest.raises(grpc.RpcError) as err:
            c.get("20250101-000000-ffffff")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # A WatchJobs snapshot holds every job, oldest first, as the scan has it.
        seen: list[job_pb2.Job] = []
        first_at = None
        began = time.monotonic()
        for resp in c.stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=60):
            first_at = first_at if first_at is not None else time.monotonic() - began
            assert 0 < len(resp.events) <= 1000
            seen += [e.job for e in resp.events if e.type == S.JOB_EVENT_TYPE_SNAPSHOT]
            if resp.events[-1].type == S.JOB_EVENT_TYPE_SNAPSHOT_END:
                break
        assert [j.id for j in seen] == [j.id for _, j in oracle]
        assert seen == [j for _, j in oracle]
        for job in live:
            c.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=10)
    finally:
        c.stop()
        kill_job_groups(history_home / "status")


def test_deleting_and_clearing_work_in_batches_and_answer_for_the_jobs_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    jobs = history_jobs(home, 3000, seed=5)
    seed_registry(home, jobs)
    for job in jobs[:50]:
        Path(job.run_dir).mkdir(parents=True)
        (Path(job.run_dir) / "output.log").write_text("x\n")
    c = InProcessConductor(home, max_running=1).start()
    try:
        # DeleteJob of an ended job that only the registry holds; twice: NOT_FOUND the second time.
        c.stub.DeleteJob(pb.DeleteJobRequest(job_id=jobs[0].id), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            c.stub.DeleteJob(pb.DeleteJobRequest(job_id=jobs[0].id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Cancel and pause of an ended job: refused as for any ended job.
        with pytest.raises(grpc.RpcError) as err:
            c.stub.CancelJob(pb.CancelJobRequest(job_id=jobs[1].id), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        failed = [j for j in jobs[1:] if j.state == S.JOB_STATE_FAILED]
        resp = c.stub.ClearJobs(pb.ClearJobsRequest(states=[S.JOB_STATE_FAILED]), timeout=60)
        assert sorted(resp.job_ids) == sorted(j.id for j in failed)
        # Gone from every answer as the call answers.
        left = list_all(c.stub, pb.ListJobsRequest(), 1000)
        assert sorted(left) == sorted(j.id for j in jobs[1:] if j.state != S.JOB_STATE_FAILED)
        info = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
        assert {x.state: x.count for x in info.job_counts}.get(S.JOB_STATE_FAILED, 0) == 0
        # Their run directories go in the background.
        assert c.running is not None
        c.running.publisher.flush(30)
        for job in jobs[:50]:
            gone = job.state == S.JOB_STATE_FAILED or job is jobs[0]
            assert Path(job.run_dir).exists() != gone, job.id
    finally:
        c.stop()


def test_a_snapshot_meets_the_changes_after_it_exactly_while_jobs_change(tmp_path: Path) -> None:
    home = tmp_path / "home"
    jobs = history_jobs(home, HISTORY, seed=9)
    seed_registry(home, jobs)
    c = InProcessConductor(home, max_running=4).start()
    stop = threading.Event()
    changes = {"submitted": 0, "deleted": 0}

    def churn() -> None:
        """Submit short jobs and delete ended history jobs, as fast as the conductor takes them."""
        stub = conductor_pb2_grpc.ConductorStub(grpc.insecure_channel(c.address))
        i = 0
        while not stop.is_set():
            stub.SubmitJob(
                pb.SubmitJobRequest(spec_yaml=f"name: churn\ncommand: 'true'\nproject: p{i % 5}\n")
            )
            changes["submitted"] += 1
            stub.DeleteJob(pb.DeleteJobRequest(job_id=jobs[i * 7].id))
            changes["deleted"] += 1
            i += 1

    worker = threading.Thread(target=churn)
    try:
        worker.start()
        time.sleep(0.3)
        view: dict[str, job_pb2.Job] = {}
        snapshot_at = -1
        last = 0
        revisions: list[int] = []
        call = c.stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=120)
        deadline = None
        for resp in call:
            for ev in resp.events:
                if ev.type == S.JOB_EVENT_TYPE_SNAPSHOT:
                    assert ev.job.revision <= ev.revision, "a snapshot shows no change after its revision"
                    view[ev.job.id] = ev.job
                elif ev.type == S.JOB_EVENT_TYPE_SNAPSHOT_END:
                    snapshot_at = last = ev.revision
                    deadline = time.monotonic() + 1.0
                elif ev.type == S.JOB_EVENT_TYPE_UPDATED:
                    revisions.append(ev.revision)
                    view[ev.job.id] = ev.job
                elif ev.type == S.JOB_EVENT_TYPE_DELETED:
                    revisions.append(ev.revision)
                    assert ev.job.id in view, "a deletion of a job the watcher was shown"
                    del view[ev.job.id]
            # At least a second of changes after the snapshot, and enough of them
            # overall to have met the snapshot at its seam (a loaded machine is slow).
            enough = changes["submitted"] > 20 and changes["deleted"] > 20
            if deadline is not None and time.monotonic() > deadline and enough:
                stop.set()
                break
        worker.join(30)
        # Once every churned job has ended, nothing changes: drain up to there.
        live = [S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING]
        settle = time.monotonic() + 60
        while c.stub.ListJobs(pb.ListJobsRequest(states=live), timeout=10).jobs:
            assert time.monotonic() < settle, "the churned jobs to end"
            time.sleep(0.1)
        server_rev = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10).revision
        call.cancel()
        tail = c.stub.WatchJobs(
            pb.WatchJobsRequest(since_revision=revisions[-1] if revisions else snapshot_at), timeout=30
        )
        for resp in tail:
            done = False
            for ev in resp.events:
                if ev.type == S.JOB_EVENT_TYPE_UPDATED:
                    revisions.append(ev.revision)
                    view[ev.job.id] = ev.job
                elif ev.type == S.JOB_EVENT_TYPE_DELETED:
                    revisions.append(ev.revision)
                    del view[ev.job.id]
                done = done or ev.revision >= server_rev
            if done:
                break
        tail.cancel()
        assert changes["submitted"] > 20 and changes["deleted"] > 20, changes
        assert snapshot_at > HISTORY, "the snapshot began while the churn ran"
        # Every revision after the snapshot's, once each, in order: none lost at the seam, none twice.
        assert revisions == list(range(last + 1, revisions[-1] + 1))
        final = {j.id: j for j in full_scan_jobs(home)}
        assert view.keys() == final.keys()
        for job_id, job in view.items():
            assert job.revision == final[job_id].revision, job_id
    finally:
        stop.set()
        worker.join(30)
        c.stop()
        kill_job_groups(home / "status")


def full_scan_jobs(home: Path) -> list[job_pb2.Job]:
    return [j for _, j in full_scan(home)]


def retention_counted(c: InProcessConductor, expected: int, within: float = 20.0) -> int:
    """GetConductorInfo's retention count once it reaches ``expected`` (or the time is up)."""
    deadline = time.monotonic() + within
    while True:
        n = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10).retention_deleted_jobs
        if n >= expected or time.monotonic() > deadline:
            return int(n)
        time.sleep(0.05)


def test_retention_deletes_exactly_the_oldest_beyond_n_and_those_ended_before_d(tmp_path: Path) -> None:
    home = tmp_path / "home"
    now = time.time()
    jobs = history_jobs(home, 60, seed=3, end_base=now - 20 * 86_400)
    # End times spread over twenty days, not in submission order.
    rnd = random.Random(4)
    for job in jobs:
        job.end_time.FromSeconds(int(now - rnd.uniform(0, 20 * 86_400)))
    seed_registry(home, jobs)
    for job in jobs:
        Path(job.run_dir).mkdir(parents=True)
        Path(job.checkpoint_dir, "step-1").mkdir(parents=True)
    by_end = sorted(jobs, key=lambda j: j.end_time.seconds)

    c = InProcessConductor(home, max_running=1, retain_max=25, retain_interval=0.2).start()
    try:
        live = c.submit("name: live\ncommand: 'sleep 60'\n")
        queued = c.submit("name: live\ncommand: 'sleep 60'\n")
        kept = {j.id for j in by_end[-25:]}

        def remaining() -> set[str]:
            return set(list_all(c.stub, pb.ListJobsRequest(), 1000))

        wait = time.monotonic() + 20
        while remaining() != kept | {live.id, queued.id} and time.monotonic() < wait:
            time.sleep(0.1)
        assert remaining() == kept | {live.id, queued.id}, "the 25 that ended last, and never a live job"
        # A list answers from the registry as soon as a deletion commits; the
        # pass hands the run directories over after that, and counts when done.
        assert retention_counted(c, 35) == 35
        assert c.running is not None
        c.running.publisher.flush(30)
        for job in jobs:
            assert Path(job.run_dir).exists() == (job.id in kept), job.id
            assert Path(job.checkpoint_dir).exists(), "checkpoints stay by default"
        c.stub.CancelJob(pb.CancelJobRequest(job_id=live.id), timeout=10)
        c.stub.CancelJob(pb.CancelJobRequest(job_id=queued.id), timeout=10)
    finally:
        c.stop()
        kill_job_groups(home / "status")

    # Again with an age: those that ended more than five days ago go, checkpoints with them.
    c = InProcessConductor(
        home, max_running=1, retain_ended="5d", retain_checkpoints=False, retain_interval=0.2
    ).start()
    try:
        young = {j.id for j in by_end[-25:] if j.end_time.seconds > now - 5 * 86_400}
        wait = time.monotonic() + 20
        while {i for i in list_all(c.stub, pb.ListJobsRequest(), 1000) if i.startswith("2025")} != young:
            assert time.monotonic() < wait, "retention by age"
            time.sleep(0.1)
        assert retention_counted(c, 25 - len(young)) == 25 - len(young)
        assert c.running is not None
        c.running.publisher.flush(30)
        for job in by_end[-25:]:
            assert Path(job.checkpoint_dir).exists() == (job.id in young), job.id
        assert len(young) < 25, "some were old enough to go"
    finally:
        c.stop()
        kill_job_groups(home / "status")


def test_a_restart_rewrites_only_the_status_files_it_knows_are_stale(tmp_path: Path) -> None:
    home = tmp_path / "home"
    c = InProcessConductor(home, max_running=2).start()
    try:
        ended = [c.submit(f"name: e{i}\ncommand: 'true'\n") for i in range(5)]
        for job in ended:
            c.wait_ended(job.id)
        running = c.submit("name: r\ncommand: 'sleep 60'\n")
        c.wait_for(running.id, lambda j: j.state == S.JOB_STATE_RUNNING and j.external_id != "")
        assert c.running is not None
        c.running.publisher.flush(10)
    finally:
        c.stop()
    stamp = {j.id: Path(j.run_dir, "status.json").stat().st_mtime_ns for j in ended}
    time.sleep(0.05)
    c = InProcessConductor(home, max_running=2).start()
    try:
        assert c.running is not None
        c.running.publisher.flush(10)
        after = {j.id: Path(j.run_dir, "status.json").stat().st_mtime_ns for j in ended}
        assert after == stamp, "no ended job's status file was written again"
        c.stub.CancelJob(pb.CancelJobRequest(job_id=running.id), timeout=10)
    finally:
        c.stop()
        kill_job_groups(home / "status")


def test_ended_rows_written_with_the_older_columns_only_are_indexed_at_open(tmp_path: Path) -> None:
    """A tool that writes rows itself with the older columns (seq, id, state, revision,
    job): the conductor fills the indexed ones at open, so those jobs are ended, not live."""
    home = tmp_path / "home"
    jobs = history_jobs(home, 50, seed=11)
    seed_registry(home, jobs[:1])  # the schema, as the registry makes it
    db = sqlite3.connect(home / "state" / "registry.db", isolation_level=None)
    try:
        db.executemany(
            "INSERT INTO jobs (seq, id, state, revision, job, runtime) VALUES (?, ?, ?, ?, ?, ?)",
            [(i + 1, j.id, j.state, i + 1, j.SerializeToString(), None) for i, j in enumerate(jobs) if i],
        )
    finally:
        db.close()

    async def read() -> tuple[int, list[str]]:
        reg = SqliteRegistry(home / "state" / "registry.db")
        opened = await reg.open()
        found = await reg.ended(JobFilter(project="p1", states=(S.JOB_STATE_FAILED,)), None, 100)
        await reg.close()
        return len(opened.live), [j.id for _, j in found]

    live, found = asyncio.run(read())
    assert live == 0
    expected = [j.id for j in reversed(jobs) if j.project == "p1" and j.state == S.JOB_STATE_FAILED]
    assert found == expected and found
