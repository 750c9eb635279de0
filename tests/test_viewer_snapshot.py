"""The viewer's index snapshot (``viewer_api.snapshot``): a restart serves from it at once, and
a snapshot made stale while the viewer was down (runs added, removed, rewritten; checkpoints
added and removed) converges to exactly what a fresh scan of the tree gives.

Shapes, not times: the benchmark (``bench/scale.py``) times the restart at a million runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from baton.viewer_api import snapshot
from baton.viewer_api.index import Index
from baton.viewer_api.scan import scan_checkpoints, scan_status
from tests.treegen import format_ts, generate, write_status
from tests.viewer_harness import InProcessViewer
from tests.viewer_oracle import Oracle

S = job_pb2
# Enough runs that the cold scan goes to worker processes (PARALLEL_SCAN_MIN_RUNS).
RUNS = 6000


def all_checkpoints(v: InProcessViewer) -> list[Any]:
    """Every checkpoint the viewer lists, page by page."""
    ckpts: list[Any] = []
    token = ""
    while True:
        request = vpb.ListCheckpointsRequest(page_token=token, page_size=1000)
        resp = v.stub.ListCheckpoints(request, timeout=10)
        ckpts.extend(resp.checkpoints)
        token = resp.next_page_token
        if not token:
            return ckpts


def _everything(v: InProcessViewer) -> dict[str, Any]:
    """What the viewer answers about the whole tree: every run's Job, every checkpoint, the counts."""
    jobs, totals = v.list_all()
    ckpts = all_checkpoints(v)
    stats = v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=10)
    projects = v.stub.ListProjects(vpb.ListProjectsRequest(), timeout=10)
    return {
        "jobs": [j.SerializeToString(deterministic=True) for j in jobs],
        "total": totals[-1],
        "checkpoints": [c.SerializeToString(deterministic=True) for c in ckpts],
        "runs": stats.total_runs,
        "states": sorted((c.state, c.count) for c in stats.state_counts),
        "checkpoint_totals": (stats.checkpoint_count, stats.checkpoint_bytes),
        "projects": [p.SerializeToString(deterministic=True) for p in projects.projects],
    }


def _wait_reconciled(v: InProcessViewer, timeout: float = 60.0) -> None:
    assert v.running is not None
    deadline = time.monotonic() + timeout
    indexer = v.running.indexer
    while indexer.from_snapshot or indexer.from_summaries or indexer.checkpoints_from_summaries:
        assert time.monotonic() < deadline, "the reconciliation after a start from the snapshot never ended"
        time.sleep(0.05)


def _wait_written(path: Path, since: float = 0.0, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_mtime > since):
        assert time.monotonic() < deadline, f"no snapshot written at {path}"
        time.sleep(0.05)


def _ended(data: dict[str, Any], state: str) -> dict[str, Any]:
    return {**data, "state": state, "reason": "rewritten while the viewer was down",
            "endTime": format_ts(time.time_ns() // 1000)}  # fmt: skip


def test_a_stale_snapshot_converges_to_a_fresh_scan(tmp_path: Path, viewer_factory: Any) -> None:
    m = generate(tmp_path / "tree", runs=RUNS, checkpoints=200, seed=5)
    cache = tmp_path / "viewer-state" / "index.json"
    settings = {"home": m.root, "index_cache": str(cache), "reconcile_interval": 3600}
    first = viewer_factory(**settings)
    assert first.running.indexer.cold_phases.get("scan_s") is not None  # no snapshot yet: a cold scan
    _wait_written(cache)
    before = _everything(first)
    first.stop()

    # While the viewer is down: runs removed (one alone, a whole job directory), added (next to
    # others and under a new project), rewritten (ended ones, whose directories no watch covers,
    # and live ones that end); a checkpoint removed and one added.
    o = Oracle(m.status_dir, m.checkpoints_dir)
    runs = o.jobs()
    ended = [r for r in runs if r.state in (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED) and r.job_id]
    live = [r for r in runs if r.state == S.JOB_STATE_RUNNING and r.job_id]
    shutil.rmtree(runs[7].path)
    gone_job = next(r for r in reversed(runs) if r.key[:3] != runs[7].key[:3]).path.parent
    shutil.rmtree(gone_job)
    template = ended[0]
    for base, run_id in [
        (template.path.parent, "added-next-to-others"),
        (m.status_dir / "new-proj" / "g" / "n", "added-new"),
    ]:
        run_dir = base / run_id
        run_dir.mkdir(parents=True)
        p, g, n = base.parts[-3:]
        data = {**template.data, "project": p, "group": g, "name": n, "runId": run_id, "id": run_id}
        data["createTime"] = format_ts(time.time_ns() // 1000)
        write_status(run_dir, data)
    rewritten = [r for r in ended[1:40] if r.path.exists()][:5] + [r for r in live if r.path.exists()][:5]
    for i, r in enumerate(rewritten):
        state = "JOB_STATE_CANCELLED" if r.state != S.JOB_STATE_CANCELLED else "JOB_STATE_FAILED"
        if i % 2:
            write_status(r.path, _ended(r.data, state))
        else:  # in place, as another program might: same inode, new mtime and size
            with open(r.path / "status.json", "w") as f:
                f.write(json.dumps(_ended(r.data, state)))
    ckpts = list(o.checkpoints())
    shutil.rmtree(ckpts[0].path)
    plain = m.checkpoints_dir / "new-proj" / "g" / "n" / "step-1"
    plain.mkdir(parents=True)
    (plain / "model.bin").write_bytes(b"x" * 100)

    written = cache.stat().st_mtime
    second = viewer_factory(**settings)
    assert second.running.indexer.cold_phases.get("snapshot_load_s") is not None, (
        "not started from the snapshot"
    )
    _wait_reconciled(second)
    after = _everything(second)
    assert after != before

    fresh = viewer_factory(home=m.root, index_cache="off", reconcile_interval=3600)
    assert fresh.running.indexer.cold_phases.get("scan_s") is not None
    assert after == _everything(fresh)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    assert after["runs"] == len(o.runs)
    assert [(j.project, j.group, j.name, j.run_id) for j in second.list_all()[0]] == [r.key for r in o.jobs()]
    for r in rewritten:  # GetJob reads the file; ListJobs shows the index's state
        (listed,) = [j for j in second.list_all(project=r.key[0], group=r.key[1], name=r.key[2])[0]
                     if j.run_id == r.key[3]]  # fmt: skip
        assert listed.state in (S.JOB_STATE_CANCELLED, S.JOB_STATE_FAILED) and listed.state != r.state

    # The converged index is written again for the next start, and a start from it is exact at once.
    _wait_written(cache, since=written)
    second.stop()
    third = viewer_factory(**settings)
    assert third.running.indexer.cold_phases.get("snapshot_load_s") is not None
    assert _everything(third) == after
    _wait_reconciled(third)
    assert _everything(third) == after


def test_changes_after_the_restart_show(tmp_path: Path, viewer_factory: Any) -> None:
    """Directories scanned by the reconciliation are watched: a run that starts after it shows."""
    m = generate(tmp_path / "tree", runs=300, checkpoints=20, seed=6)
    cache = tmp_path / "index.json"
    settings = {"home": m.root, "index_cache": str(cache), "reconcile_interval": 3600}
    first = viewer_factory(**settings)
    _wait_written(cache)
    first.stop()
    second = viewer_factory(**settings)
    assert second.running.indexer.cold_phases.get("snapshot_load_s") is not None
    _wait_reconciled(second)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    # A new run in a job directory (whose watch says so), and a live run that starts (its own).
    template = next(r for r in o.jobs() if r.state == S.JOB_STATE_SUCCEEDED and r.job_id)
    added = template.path.parent / "added-after-restart"
    added.mkdir()
    write_status(added, {**template.data, "id": "added-after-restart", "runId": "added-after-restart",
                         "state": "JOB_STATE_FAILED"})  # fmt: skip
    queued = next(r for r in o.jobs() if r.state == S.JOB_STATE_QUEUED and r.job_id)
    write_status(queued.path, {**queued.data, "state": "JOB_STATE_RUNNING"})

    def moved() -> bool:
        failed = {j.run_id for j in second.list_all(states=[S.JOB_STATE_FAILED])[0]}
        running = {j.run_id for j in second.list_all(states=[S.JOB_STATE_RUNNING])[0]}
        return "added-after-restart" in failed and queued.key[3] in running

    second.wait_for(moved, "changes made after the restart", timeout=10)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_tree", "wrong_types"])
def test_an_unusable_snapshot_is_ignored(tmp_path: Path, viewer_factory: Any, damage: str) -> None:
    m = generate(tmp_path / "tree", runs=200, checkpoints=20, seed=7)
    cache = tmp_path / "index.json"
    settings = {"home": m.root, "index_cache": str(cache), "reconcile_interval": 3600}
    first = viewer_factory(**settings)
    _wait_written(cache)
    want = _everything(first)
    first.stop()
    body = cache.read_bytes()
    if damage == "garbage":
        cache.write_bytes(b"\x00not json at all")
    elif damage == "truncated":
        cache.write_bytes(body[: len(body) // 2])
    elif damage == "other_tree":
        data = json.loads(body)
        data["status_root"] = "/somewhere/else/status"
        cache.write_text(json.dumps(data))
    else:
        data = json.loads(body)
        data["runs"][0][3] = "RUNNING"  # a state that is not an enum number
        cache.write_text(json.dumps(data))
    written = cache.stat().st_mtime
    second = viewer_factory(**settings)
    assert second.running.indexer.cold_phases.get("scan_s") is not None, "the unusable snapshot was used"
    assert _everything(second) == want
    _wait_written(cache, since=written)  # replaced by a good one
    assert snapshot.load(cache, str(m.status_dir.resolve()), str(m.checkpoints_dir.resolve())).runs


def test_a_snapshot_keeps_every_record(tmp_path: Path) -> None:
    """What is written is what is read back: every field of every run, checkpoint and problem."""
    m = generate(tmp_path / "tree", runs=500, checkpoints=50, seed=8)
    (m.status_dir / "p" / "g" / "n" / "bad-run").mkdir(parents=True)
    (m.status_dir / "p" / "g" / "n" / "bad-run" / "status.json").write_text("[1, 2]")
    st, ck = str(m.status_dir.resolve()), str(m.checkpoints_dir.resolve())
    status, ckpts = scan_status(st), scan_checkpoints(ck)
    index = Index()
    index.load(status.runs, ckpts.checkpoints, {**status.problems, **ckpts.problems})
    assert index.problems and index.checkpoint_count and any(e.live for e in index.runs.values())
    path = tmp_path / "state" / "index.json"
    snapshot.dump(path, st, ck, snapshot.Snapshot(list(index.runs.values()), list(index.all_checkpoints()),
                                                  dict(index.problems)))  # fmt: skip
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
    got = snapshot.load(path, st, ck)
    fields = ("key", "job_id", "state", "end_ts", "activity", "beat", "signature", "sort")
    assert sorted(tuple(getattr(e, f) for f in fields) for e in got.runs) == sorted(
        tuple(getattr(e, f) for f in fields) for e in index.runs.values()
    )
    assert sorted(got.checkpoints, key=repr) == sorted(index.all_checkpoints(), key=repr)
    assert got.problems == index.problems
    with pytest.raises(snapshot.SnapshotUnusable, match="another status_root"):
        snapshot.load(path, st + "-other", ck)
    with pytest.raises(snapshot.SnapshotUnusable, match="none yet"):
        snapshot.load(tmp_path / "absent.json", st, ck)


def test_the_default_place_is_the_viewers_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a = snapshot.default_path("/t1/status", "/t1/checkpoints")
    assert a.parent == tmp_path / "cache" / "baton" / "viewer"
    assert a != snapshot.default_path("/t2/status", "/t2/checkpoints")
    assert not str(a).startswith("/t1")
    assert os.path.isabs(a)
