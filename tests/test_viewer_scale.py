"""The viewer at scale, in shapes rather than times (issue 18): ended runs take no inotify
watch and keep no status bytes, the watch count is reported, a run rewritten behind the
viewer's back is still picked up, and a tree growing by thousands of runs while clients
call is followed without holding the calls up, to exactly the tree.

The figures (cold start, memory and watches at 100,000 and more runs) are the benchmark's.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from baton.common.layout import RUN_MARKER, Layout, make_run_checkpoint_dir
from baton.v1 import job_pb2, viewer_pb2_grpc
from baton.v1 import viewer_pb2 as vpb
from baton.viewer_api.index import Index
from baton.viewer_api.scan import FINAL_STATES, RunFile
from tests.treegen import format_ts, generate, write_status
from tests.viewer_harness import REPO, InProcessViewer
from tests.viewer_oracle import Oracle, Run

S = job_pb2
DEADLINE = 10.0


def key_of(job: job_pb2.Job) -> tuple[str, str, str, str]:
    return (job.project, job.group, job.name, job.run_id)


def stats(v: InProcessViewer) -> vpb.GetDashboardStatsResponse:
    return v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=30)


def listed(v: InProcessViewer, **flt: Any) -> list[tuple[str, str, str, str]]:
    return [key_of(j) for j in v.list_all(**flt)[0]]


def live_keys(o: Oracle) -> set[tuple[str, str, str, str]]:
    return {r.key for r in o.runs.values() if r.state not in FINAL_STATES}


def expected_watches(o: Oracle, ckpt_root: Path) -> int:
    """Directories a fresh viewer watches: both trees down to the job directories, and the
    live runs' directories in both (ended runs', and checkpoint directories of no run, none)."""
    status = {()} | {r.key[:i] for r in o.runs.values() for i in (1, 2, 3)}
    live = live_keys(o)
    ckpt = {()} | {p.relative_to(ckpt_root).parts for p in ckpt_root.glob("*/*/*") if p.is_dir()}
    ckpt |= {rel[:i] for rel in list(ckpt) for i in (1, 2)}
    run_dirs = {p.parent.relative_to(ckpt_root).parts for p in ckpt_root.glob(f"*/*/*/*/{RUN_MARKER}")}
    return len(status) + len(live) + len(ckpt) + len(run_dirs & live)


def test_ended_runs_take_no_watch_and_a_rewritten_one_is_still_seen(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    """Only live runs' directories are watched, and the count says so. An ended run that
    another program rewrites to a live state is picked up by the reconciliation scan (in
    place) or by its job directory's watch (its directory replaced), and is watched from
    then on: a later change shows by inotify alone."""
    m = generate(tmp_path / "tree", runs=120, checkpoints=10, seed=41)
    v = viewer_factory(home=tmp_path / "tree", watch="inotify", reconcile_interval=3600)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    base = expected_watches(o, m.checkpoints_dir)
    live = sum(1 for r in o.runs.values() if r.state not in FINAL_STATES)
    assert 0 < live < len(o.runs) - 40
    st = stats(v)
    assert (st.watched_directories, st.unwatched_directories) == (base, 0)
    ended = [r for r in o.jobs() if r.state in FINAL_STATES and r.job_id]

    def started(run: Run) -> dict[str, Any]:
        data = {**run.data, "state": "JOB_STATE_RUNNING", "reason": "started again by another program"}
        data.pop("endTime", None)
        data["heartbeatTime"] = format_ts(time.time_ns() // 1000)
        return data

    def ended_again(run: Run, reason: str) -> dict[str, Any]:
        now = format_ts(time.time_ns() // 1000)
        return {**run.data, "state": "JOB_STATE_FAILED", "reason": reason, "endTime": now}

    # In place: no event (its directory is not watched); the reconciliation scan finds it.
    in_place = ended[0]
    write_status(in_place.path, started(in_place))
    assert v.running is not None
    v.reconcile()
    assert in_place.key in listed(v, states=[S.JOB_STATE_RUNNING])
    assert stats(v).watched_directories == base + 1
    # Watched now: its next change shows by inotify alone (no scan comes for an hour).
    write_status(in_place.path, ended_again(in_place, "ended by inotify"))
    v.wait_for(
        lambda: in_place.key in listed(v, states=[S.JOB_STATE_FAILED]), "the watched run's change", DEADLINE
    )
    # Ended again: its watch goes.
    v.wait_for(lambda: stats(v).watched_directories == base, "the ended run's watch to go", DEADLINE)

    # Replaced whole (a new directory moved in): its job directory's watch sees it.
    replaced = ended[1]
    staged = tmp_path / "staged"
    staged.mkdir()
    write_status(staged, started(replaced))
    shutil.rmtree(replaced.path)
    os.rename(staged, replaced.path)
    v.wait_for(
        lambda: replaced.key in listed(v, states=[S.JOB_STATE_RUNNING]), "the replaced run to show", DEADLINE
    )
    v.wait_for(lambda: stats(v).watched_directories == base + 1, "the replaced run's watch", DEADLINE)
    write_status(replaced.path, ended_again(replaced, "ended by inotify too"))
    v.wait_for(
        lambda: replaced.key in listed(v, states=[S.JOB_STATE_FAILED]), "the replaced run's change", DEADLINE
    )
    # Deleted: its job directory's watch sees that too.
    gone = ended[2]
    shutil.rmtree(gone.path)
    v.wait_for(lambda: gone.key not in listed(v), "the deleted run to go", DEADLINE)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    assert listed(v) == [r.key for r in o.jobs()]
    got = {key_of(j): (j.state, j.reason) for j in v.list_all()[0]}
    assert got == {r.key: (r.state, r.data.get("reason", "")) for r in o.runs.values()}


def test_checkpoint_directories_are_watched_while_their_run_is_live(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    """A run's checkpoint directory is watched while its run is live, so a checkpoint renamed
    in shows by inotify alone; an ended run's is not (one added there shows at the
    reconciliation scan), and a live run's watch goes when it ends. An entry made after the
    start is watched whatever it is (its marker or its run may come a moment later), and a
    reconciliation scan drops that watch once no live run owns it."""
    m = generate(tmp_path / "tree", runs=120, checkpoints=0, seed=44)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    layout = Layout.under(m.status_dir, m.checkpoints_dir)
    live = next(r for r in o.jobs() if r.state == S.JOB_STATE_RUNNING and r.job_id)
    done = next(r for r in o.jobs() if r.state == S.JOB_STATE_SUCCEEDED and r.job_id)
    dirs = {r.key: make_run_checkpoint_dir(layout, *r.key, job_id=r.job_id) for r in (live, done)}
    v = viewer_factory(home=tmp_path / "tree", watch="inotify", reconcile_interval=3600)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    base = expected_watches(o, m.checkpoints_dir)
    assert stats(v).watched_directories == base  # the live run's, not the ended run's

    def ckpts() -> set[tuple[str, ...]]:
        resp = v.stub.ListCheckpoints(vpb.ListCheckpointsRequest(page_size=1000), timeout=10)
        return {(c.project, c.group, c.name, c.run_id, c.suffix) for c in resp.checkpoints}

    def rename_in(run_dir: Path, suffix: str) -> None:
        (run_dir / f".{suffix}").mkdir()
        (run_dir / f".{suffix}" / "model.bin").write_bytes(b"m" * 10)
        os.rename(run_dir / f".{suffix}", run_dir / suffix)

    rename_in(dirs[live.key], "step-1")
    v.wait_for(lambda: (*live.key, "step-1") in ckpts(), "the live run's new checkpoint", DEADLINE)
    rename_in(dirs[done.key], "step-9")
    v.reconcile()
    assert (*done.key, "step-9") in ckpts()
    assert stats(v).watched_directories == base
    # The live run ends: both its directories' watches go.
    now = format_ts(time.time_ns() // 1000)
    write_status(live.path, {**live.data, "state": "JOB_STATE_SUCCEEDED", "endTime": now})
    v.wait_for(lambda: stats(v).watched_directories == base - 2, "the ended run's watches to go", DEADLINE)
    # A plain checkpoint made now is watched until a reconciliation scan finds no live run of its name.
    rename_in(dirs[live.key].parent, "step-plain")
    v.wait_for(lambda: (*live.key[:3], "", "step-plain") in ckpts(), "the plain checkpoint", DEADLINE)
    assert stats(v).watched_directories == base - 1
    v.reconcile()
    assert stats(v).watched_directories == base - 2
    o = Oracle(m.status_dir, m.checkpoints_dir)
    assert ckpts() == set(o.ckpts) and stats(v).watched_directories == expected_watches(o, m.checkpoints_dir)


def test_ended_runs_keep_no_status_bytes(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    """After the cold start only live runs hold their Job in memory; lists read ended runs'
    files and keep them in a cache bounded in bytes, and answer as the files say."""
    m = generate(tmp_path / "tree", runs=300, checkpoints=0, seed=42)
    v = viewer_factory(home=tmp_path / "tree", watch="inotify", reconcile_interval=3600)
    assert v.running is not None
    index = v.running.service.index
    o = Oracle(m.status_dir, m.checkpoints_dir)
    held = {key for key, e in index.runs.items() if e.payload is not None}
    assert held == {r.key for r in o.runs.values() if r.state not in FINAL_STATES}
    assert len(index.cache) == 0
    index.cache.max_bytes = 30_000  # a few dozen Jobs
    jobs, _ = v.list_all(page_size=50)
    assert [key_of(j) for j in jobs] == [r.key for r in o.jobs()]
    assert [j.reason for j in jobs] == [r.data.get("reason", "") for r in o.jobs()]
    assert 0 < index.cache.size <= 30_000 and len(index.cache) < 300
    # Followed, an ended run's log ends with its exit status, read from its file.
    run = next(r for r in o.jobs(states=(S.JOB_STATE_FAILED,)) if r.job_id and "exitCode" in r.data)
    chunks = list(v.stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=run.job_id, follow=True), timeout=30))
    assert chunks[-1].complete and chunks[-1].state == S.JOB_STATE_FAILED
    assert chunks[-1].exit_code == run.data["exitCode"]
    assert index.runs[run.key].payload is None  # let go when the stream ended


def _index_answers(index: Index, since: float) -> tuple[Any, ...]:
    """What the kept counts say, and the same found by walking every run."""
    kept = (
        [(p, n, dict(c), last) for p, n, c, last in index.projects()],
        {p: index.failures_since(p, since, 10) for p in ["", *sorted({k[0] for k in index.runs})]},
    )
    walked_projects = []
    for p in sorted({k[0] for k in index.runs}):
        runs = [e for k, e in index.runs.items() if k[0] == p]
        counts = Counter(e.state for e in runs)
        walked_projects.append((p, len(runs), dict(counts), max(e.activity for e in runs)))
    walked_failures = {}
    for p in ["", *sorted({k[0] for k in index.runs})]:
        failed = [e for k, e in index.runs.items() if e.state == S.JOB_STATE_FAILED and (not p or k[0] == p)]
        recent = sorted((e for e in failed if (e.end_ts or -1) >= since), key=lambda e: (-e.end_ts, e.sort))
        walked_failures[p] = (recent[:10], len(recent))
    return kept, (walked_projects, walked_failures)


def test_kept_counts_equal_a_walk_of_every_run() -> None:
    """The counts kept as runs come and go (each project's newest activity, FAILED runs by end
    time) equal what walking every run finds, through inserts, state changes and removals."""
    rng = random.Random(3)
    index = Index()
    now = 1_800_000_000.0
    keys = [(f"p{rng.randrange(4)}", f"g{rng.randrange(3)}", "n", f"r{i:04d}") for i in range(600)]
    states = [v.number for v in S.JobState.DESCRIPTOR.values if v.number]
    for step in range(3000):
        key = rng.choice(keys)
        if key in index.runs and rng.random() < 0.3:
            index.remove_run(key)
            continue
        create = now - rng.uniform(0, 3 * 86400)
        end = create + rng.uniform(0, 86400) if rng.random() < 0.8 else 0.0
        state = rng.choice(states)
        index.upsert_run(RunFile(key, key[3], state, create, create + 1, end, end, b"", step))
        if step % 500 == 0:
            kept, walked = _index_answers(index, now - 86400)
            assert kept == walked
    kept, walked = _index_answers(index, now - 86400)
    assert kept == walked and len(index.runs) > 100
    for prefix in [("p1",), ("p1", "g2"), ("p1", "g2", "n"), keys[0], ()]:
        assert sorted(index.keys_under(prefix)) == sorted(k for k in index.runs if k[: len(prefix)] == prefix)


# ------------------------------------------------------------- a growing tree

_GROW = """
import sys, time
from pathlib import Path
from tests.treegen import generate
generate(Path(sys.argv[1]), runs=int(sys.argv[2]), checkpoints=0, seed=int(sys.argv[3]),
         now=time.time() + 86400, live_share=0.1, log_scale=0.1)
"""


class _Client(threading.Thread):
    """Calls ListJobs and GetJob in a loop until told to stop; notes every failure."""

    def __init__(self, v: InProcessViewer, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(v.address)
        self.stub = viewer_pb2_grpc.ViewerStub(self.channel)
        self.rng = random.Random(seed)
        self.stop = stop
        self.calls = 0
        self.errors: list[str] = []
        self.totals: set[int] = set()
        # (started, ended) of each call, by the clock.
        self.spans: list[tuple[float, float]] = []

    def run(self) -> None:
        ids: list[str] = []
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                if ids and self.rng.random() < 0.5:
                    self.stub.GetJob(vpb.ViewerGetJobRequest(job_id=self.rng.choice(ids)), timeout=60)
                else:
                    states = self.rng.choice([[], [S.JOB_STATE_SUCCEEDED], [S.JOB_STATE_RUNNING]])
                    resp = self.stub.ListJobs(
                        vpb.ViewerListJobsRequest(states=states, page_size=100), timeout=60
                    )
                    if not states:
                        self.totals.add(resp.total_size)
                    ids = [j.id for j in resp.jobs if j.id] or ids
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # a run deleted meanwhile is fine
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
            self.calls += 1
            self.spans.append((t0, time.monotonic()))
        self.channel.close()


def test_a_fast_growing_tree_keeps_answering_and_catches_up(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    """Another process writes thousands of runs (new job directories and existing ones) as
    fast as it can while clients call ListJobs and GetJob: every call answers, the index
    moves on in batches as the tree grows, and it ends up exactly the tree."""
    home = tmp_path / "tree"
    m = generate(home, runs=400, checkpoints=0, seed=43)
    v = viewer_factory(home=home, watch="inotify", reconcile_interval=3600)
    assert v.running is not None
    indexer = v.running.indexer
    batches_before = indexer.batches
    stop = threading.Event()
    clients = [_Client(v, seed, stop) for seed in range(4)]
    for c in clients:
        c.start()
    growers = [
        subprocess.Popen([sys.executable, "-c", _GROW, str(home), "2000", str(100 + i)], cwd=REPO)
        for i in range(2)
    ]
    t0 = time.monotonic()
    try:
        for g in growers:
            assert g.wait(300) == 0
        grown = time.monotonic()
        o = Oracle(m.status_dir, m.checkpoints_dir)
        assert len(o.runs) == 400 + 4000

        def in_step() -> bool:
            st = stats(v)
            return (
                listed(v) == [r.key for r in o.jobs()]
                and st.total_runs == len(o.runs)
                and {c.state: c.count for c in st.state_counts} == o.state_counts()
            )

        v.wait_for(in_step, "the index to match the grown tree", 120)
    finally:
        stop.set()
        for c in clients:
            c.join(60)
        for g in growers:
            if g.poll() is None:
                g.kill()
    assert [c.errors for c in clients] == [[] for _ in clients]
    # Every client had calls answered while the tree was growing ...
    assert all(any(t0 <= end <= grown for _, end in c.spans) for c in clients)
    # ... and saw the index grow by steps, not all at once at the end.
    totals = set().union(*(c.totals for c in clients))
    assert len({t for t in totals if 400 < t < 4400}) >= 3, sorted(totals)
    assert indexer.batches - batches_before >= 3
    # Exactly the tree: contents, and the stats' counts; nothing left to read.
    o = Oracle(m.status_dir, m.checkpoints_dir)
    got = {key_of(j): (j.state, j.reason) for j in v.list_all()[0]}
    assert got == {r.key: (r.state, r.data.get("reason", "")) for r in o.runs.values()}
    assert indexer.backlog == 0
    assert stats(v).watched_directories == expected_watches(o, m.checkpoints_dir)
