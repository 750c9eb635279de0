"""Freshness: changes on disk show in the viewer's lists shortly after, with
inotify and with polling. Each test waits by polling the RPC with a deadline
(no speed is asserted) and then checks the whole answer against a fresh
brute-force scan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.common.layout import Layout, make_run_checkpoint_dir
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from baton.viewer_api.indexer import rescan_pause
from baton.viewer_api.scan import FINAL_STATES
from tests.checks import error_info
from tests.treegen import Manifest, format_ts, generate, write_status
from tests.viewer_harness import InProcessViewer, SubprocessViewer, ViewerHandle, can_limit_watches
from tests.viewer_oracle import Ckpt, Oracle, Run

S = job_pb2
DEADLINE = 5.0


@dataclass
class Tree:
    m: Manifest
    v: ViewerHandle

    def oracle(self) -> Oracle:
        return Oracle(self.m.status_dir, self.m.checkpoints_dir)

    def listed_runs(self, **flt: Any) -> list[tuple[str, str, str, str]]:
        jobs, _ = self.v.list_all(**flt)
        return [(j.project, j.group, j.name, j.run_id) for j in jobs]

    def listed_ckpts(self, **flt: Any) -> list[tuple[str, str, str, str, str]]:
        out: list[tuple[str, str, str, str, str]] = []
        token = ""
        while True:
            resp = self.v.stub.ListCheckpoints(
                vpb.ListCheckpointsRequest(page_token=token, **flt), timeout=10
            )
            out.extend((c.project, c.group, c.name, c.run_id, c.suffix) for c in resp.checkpoints)
            token = resp.next_page_token
            if not token:
                return out

    def wait(self, check: Callable[[], bool], what: str) -> None:
        self.v.wait_for(check, what, timeout=DEADLINE)

    def wait_in_step(self) -> None:
        """Until ListJobs, ListCheckpoints and the stats all match a scan of the disk."""

        def same() -> bool:
            o = self.oracle()
            if self.listed_runs() != [r.key for r in o.jobs()]:
                return False
            if self.listed_ckpts() != [c.key for c in o.checkpoints()]:
                return False
            st = self.v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=10)
            return (
                st.total_runs == len(o.runs)
                and {c.state: c.count for c in st.state_counts} == o.state_counts()
                and (st.checkpoint_count, st.checkpoint_bytes) == o.ckpt_totals()
            )

        self.wait(same, "the viewer to match a scan of the tree")


@pytest.fixture(params=["inotify", "poll"])
def tree(request: pytest.FixtureRequest, tmp_path: Path, viewer_factory: Any) -> Tree:
    m = generate(tmp_path / "tree", runs=60, checkpoints=12, seed=21)
    settings: dict[str, Any] = {"home": tmp_path / "tree", "watch": request.param}
    if request.param == "poll":
        settings["poll_interval"] = 0.2
    v = viewer_factory(**settings)
    st = v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=10)
    assert st.watch_mode == request.param and st.total_runs == 60
    return Tree(m, v)


def key_of(job: job_pb2.Job) -> tuple[str, str, str, str]:
    return (job.project, job.group, job.name, job.run_id)


def _pick(o: Oracle, state: int) -> Run:
    return next(r for r in o.jobs() if r.state == state and r.job_id)


def _ended(run: Run, state: str, **extra: Any) -> dict[str, Any]:
    data = {**run.data, "state": state, "reason": "changed by the test", **extra}
    data["endTime"] = format_ts(time.time_ns() // 1000)
    return data


def test_rewritten_status_shows_in_lists(tree: Tree) -> None:
    o = tree.oracle()
    run = _pick(o, S.JOB_STATE_RUNNING)
    write_status(run.path, _ended(run, "JOB_STATE_SUCCEEDED", exitCode=0))
    tree.wait(
        lambda: (
            run.key in tree.listed_runs(states=[S.JOB_STATE_SUCCEEDED])
            and run.key not in tree.listed_runs(states=[S.JOB_STATE_RUNNING])
        ),
        "the rewritten run under its new state",
    )
    tree.wait_in_step()
    # A writer that rewrites the file in place (no rename) is seen too.
    other = _pick(tree.oracle(), S.JOB_STATE_QUEUED)
    started = {**other.data, "state": "JOB_STATE_RUNNING", "startTime": format_ts(time.time_ns() // 1000)}
    with open(other.path / "status.json", "w") as f:
        f.write(json.dumps(started))
    tree.wait(
        lambda: other.key in tree.listed_runs(states=[S.JOB_STATE_RUNNING]), "the run rewritten in place"
    )
    tree.wait_in_step()
    # Starting changes its state, not its place: lists are by submission time.
    assert tree.listed_runs() == [r.key for r in tree.oracle().jobs()]


def _new_run(base: Path, run_id: str, template: Run) -> None:
    p, g, n = base.parts[-3:]
    run_dir = base / run_id
    run_dir.mkdir(parents=True)
    data = {**template.data, "project": p, "group": g, "name": n, "runId": run_id, "id": run_id}
    data["createTime"] = data["startTime"] = format_ts(time.time_ns() // 1000)
    data["runDir"] = str(run_dir)
    write_status(run_dir, data)
    (run_dir / "output.log").write_bytes(b"hello\n")


def test_added_runs_show(tree: Tree, tmp_path: Path) -> None:
    o = tree.oracle()
    template = _pick(o, S.JOB_STATE_SUCCEEDED)
    p, g, n, _ = template.key
    status = tree.m.status_dir
    # Next to others; under a brand-new project/group/name; and moved in whole from elsewhere.
    _new_run(status / p / g / n, "added-1", template)
    _new_run(status / "fresh-project" / "g0" / "n0", "added-2", template)
    outside = tmp_path / "staging" / "x" / "y" / "z"
    _new_run(outside, "added-3", template)
    os.rename(outside / "added-3", status / p / g / n / "added-3")
    tree.wait(
        lambda: (
            {(p, g, n, "added-1"), ("fresh-project", "g0", "n0", "added-2"), (p, g, n, "added-3")}
            <= set(tree.listed_runs())
        ),
        "three added runs",
    )
    tree.wait_in_step()
    # The new directories are followed from now on: a second run under them shows too.
    _new_run(status / "fresh-project" / "g0" / "n0", "added-4", template)
    _new_run(status / "fresh-project" / "g1" / "n0", "added-5", template)
    tree.wait(
        lambda: {"added-4", "added-5"} <= {k[3] for k in tree.listed_runs(project="fresh-project")},
        "runs added under the new project",
    )
    tree.wait_in_step()
    got = tree.v.stub.GetJob(vpb.ViewerGetJobRequest(job_id="added-5"), timeout=10)
    assert (got.project, got.group, got.name, got.run_id) == ("fresh-project", "g1", "n0", "added-5")


def test_removed_runs_disappear(tree: Tree, tmp_path: Path) -> None:
    o = tree.oracle()
    runs = o.jobs()
    one = runs[len(runs) // 2]
    shutil.rmtree(one.path)
    tree.wait(lambda: one.key not in tree.listed_runs(), "the deleted run to go")
    tree.wait_in_step()
    # A whole job directory, and a whole project moved out of the tree.
    o = tree.oracle()
    job_dir = next(r for r in o.jobs() if r.key[:3] != one.key[:3]).path.parent
    shutil.rmtree(job_dir)
    project = sorted({k[0] for k in o.runs} - {job_dir.parent.parent.name})[0]
    os.rename(tree.m.status_dir / project, tmp_path / "moved-away")
    tree.wait(
        lambda: (
            not any(k[0] == project or Path(*k[:3]) == Path(*job_dir.parts[-3:]) for k in tree.listed_runs())
        ),
        "the removed job and project to go",
    )
    tree.wait_in_step()
    with pytest.raises(grpc.RpcError) as err:
        tree.v.stub.GetJob(vpb.ViewerGetJobRequest(job_id=one.job_id), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _write_ckpt(path: Path, files: dict[str, bytes]) -> None:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)


def test_checkpoints_added_by_rename_and_removed(tree: Tree) -> None:
    o = tree.oracle()
    existing = o.checkpoints()
    p, g, n, *_ = existing[0].key
    base = tree.m.checkpoints_dir / p / g / n
    # Being written: neither shows, nor counts.
    _write_ckpt(base / ".step-new", {"model.bin": b"m" * 1000, "config.json": b'{"lr": 1}'})
    _write_ckpt(base / "step-other.tmp", {"model.bin": b"o" * 10})
    # A sentinel change elsewhere: once it shows, the partial ones have been seen and skipped.
    sentinel = tree.m.checkpoints_dir / "new-proj" / "g" / "n"
    _write_ckpt(sentinel / ".s1", {"model.bin": b"s" * 5})
    os.rename(sentinel / ".s1", sentinel / "s1")
    tree.wait(lambda: ("new-proj", "g", "n", "", "s1") in tree.listed_ckpts(), "a checkpoint under a new job")
    assert not any(k[4].startswith(".") or k[4].endswith(".tmp") for k in tree.listed_ckpts())
    tree.wait_in_step()
    # Renamed into place: they show, with their sizes.
    os.rename(base / ".step-new", base / "step-new")
    os.rename(base / "step-other.tmp", base / "step-other")
    tree.wait(
        lambda: {(p, g, n, "", "step-new"), (p, g, n, "", "step-other")} <= set(tree.listed_ckpts()),
        "the renamed checkpoints",
    )
    tree.wait_in_step()
    got = tree.v.stub.GetCheckpoint(vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix="step-new"))
    assert (got.size_bytes, got.file_count, got.config_file) == (1009, 2, "config.json")
    # Removed: gone from the list, the stats and GetCheckpoint. (From a plain layout or a
    # live run's directory: an ended run's directory is not watched, see below.)
    victim = next(c for c in reversed(existing) if not in_ended_run(o, c))
    shutil.rmtree(victim.path)
    shutil.rmtree(base / "step-other")
    tree.wait(
        lambda: (
            victim.key not in tree.listed_ckpts() and (p, g, n, "", "step-other") not in tree.listed_ckpts()
        ),
        "the deleted checkpoints to go",
    )
    tree.wait_in_step()
    vp, vg, vn, *_ = victim.key
    with pytest.raises(grpc.RpcError) as err:
        tree.v.stub.GetCheckpoint(vpb.GetCheckpointRequest(project=vp, group=vg, name=vn, suffix=victim.ref))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    stats = tree.v.stub.GetCheckpointStats(vpb.GetCheckpointStatsRequest(), timeout=10)
    assert (stats.checkpoint_count, stats.total_bytes) == tree.oracle().ckpt_totals()
    # Removed from an ended run's directory (which takes no watch: its run makes no more
    # checkpoints): gone at the latest after the next reconciliation scan.
    ended = next(c for c in existing if in_ended_run(o, c))
    shutil.rmtree(ended.path)
    assert isinstance(tree.v, InProcessViewer)
    tree.v.reconcile()
    tree.wait(lambda: ended.key not in tree.listed_ckpts(), "the ended run's deleted checkpoint to go")
    tree.wait_in_step()


def in_live_run(o: Oracle, c: Ckpt) -> bool:
    """Whether a checkpoint lies in the checkpoint directory of a run that may still change."""
    run = o.runs.get(c.key[:4]) if c.run_id else None
    return run is not None and run.state not in FINAL_STATES


def in_ended_run(o: Oracle, c: Ckpt) -> bool:
    """Whether a checkpoint lies in the checkpoint directory of a run that has ended."""
    run = o.runs.get(c.key[:4]) if c.run_id else None
    return run is not None and run.state in FINAL_STATES


def _rename_in(run_dir: Path, suffix: str, files: dict[str, bytes]) -> None:
    """Write a checkpoint under a hidden name, then rename it into place, as jobs must."""
    _write_ckpt(run_dir / f".{suffix}", files)
    os.rename(run_dir / f".{suffix}", run_dir / suffix)


def test_checkpoints_of_runs_made_after_the_start_show(tree: Tree) -> None:
    """Runs' checkpoint directories made after the viewer started (the directory made, its
    marker written, then checkpoints renamed in, as the conductor and a job do) show with
    their run ids; so does a checkpoint added to a live run's directory that was there at
    the start, and a run made by the conductor's own helper under a brand-new job."""
    o = tree.oracle()
    old = next(c for c in o.checkpoints() if in_live_run(o, c))
    p, g, n, old_run, shared = old.key
    base = tree.m.checkpoints_dir / p / g / n
    _rename_in(base / old_run, "step-000777", {"model.bin": b"a" * 100})
    # Seen unmarked first (an empty plain checkpoint, for all the viewer can tell), then marked.
    late = base / "run-late"
    late.mkdir()
    tree.wait(lambda: (p, g, n, "", "run-late") in tree.listed_ckpts(), "the unmarked directory")
    (late / ".baton-run").write_text(json.dumps({"job_id": "job-late", "run_id": "run-late"}))
    tree.wait(lambda: (p, g, n, "", "run-late") not in tree.listed_ckpts(), "the marked directory to go")
    _rename_in(late, shared, {"model.bin": b"b" * 10, "config.yaml": b"lr: 2\n"})
    _rename_in(late, "step-000900", {"model.bin": b"c" * 20})
    # A job directory and a run's directory made at once, then filled.
    layout = Layout.under(tree.m.status_dir, tree.m.checkpoints_dir)
    made = make_run_checkpoint_dir(layout, "late-proj", "g", "n", "r1", job_id="job-r1")
    _rename_in(made, "s1", {"model.bin": b"d"})
    expected = {
        (p, g, n, old_run, "step-000777"),
        (p, g, n, "run-late", shared),
        (p, g, n, "run-late", "step-000900"),
        ("late-proj", "g", "n", "r1", "s1"),
    }
    tree.wait(lambda: expected <= set(tree.listed_ckpts()), "the checkpoints of the late runs")
    tree.wait_in_step()
    # Two runs now have the suffix: bare, it is ambiguous; with a run id, each is found.
    with pytest.raises(grpc.RpcError) as err:
        tree.v.stub.GetCheckpoint(vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=shared))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err.value).reason == "CHECKPOINT_AMBIGUOUS"
    matches = error_info(err.value).metadata["matches"].split(",")
    assert {f"{old_run}/{shared}", f"run-late/{shared}"} <= set(matches)
    got = tree.v.stub.GetCheckpoint(
        vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=f"run-late/{shared}")
    )
    assert (got.run_id, got.suffix, got.config_file, got.size_bytes) == (
        "run-late",
        shared,
        "config.yaml",
        16,
    )
    latest = tree.v.stub.GetLatestCheckpoint(
        vpb.GetLatestCheckpointRequest(project=p, group=g, name=n, run_id="run-late")
    )
    assert latest.run_id == "run-late"
    listed = tree.v.stub.ListCheckpoints(
        vpb.ListCheckpointsRequest(project=p, group=g, name=n, run_id="run-late"), timeout=10
    )
    assert sorted(c.suffix for c in listed.checkpoints) == sorted([shared, "step-000900"])
    # A run's directory removed: its checkpoints go with it. One unmarked: they are no
    # checkpoints any more, and it is a plain one itself.
    shutil.rmtree(late)
    os.unlink(made / ".baton-run")
    tree.wait(
        lambda: (
            not any(k[3] in ("run-late", "r1") for k in tree.listed_ckpts())
            and ("late-proj", "g", "n", "", "r1") in tree.listed_ckpts()
        ),
        "the removed and unmarked runs' checkpoints to go",
    )
    tree.wait_in_step()


def test_followed_log_sees_appends_and_the_end(tree: Tree) -> None:
    o = tree.oracle()
    run = next(r for r in o.jobs(states=(S.JOB_STATE_RUNNING,)) if r.job_id and r.log() is not None)
    before = run.log() or b""
    stream = tree.v.stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=run.job_id, follow=True), timeout=30)
    got: list[job_pb2.LogChunk] = []
    done = threading.Event()

    def read() -> None:
        try:
            for chunk in stream:
                got.append(chunk)
        finally:
            done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    received = lambda: b"".join(c.data for c in got)  # noqa: E731
    tree.wait(lambda: received() == before, "the log as it was")
    with open(run.path / "output.log", "ab") as f:
        f.write(b"appended line\n")
    tree.wait(lambda: received() == before + b"appended line\n", "the appended line")
    write_status(run.path, _ended(run, "JOB_STATE_FAILED", exitCode=3))
    assert done.wait(DEADLINE), "the followed log did not end after the run ended"
    reader.join(5)
    assert got[-1].complete and got[-1].state == S.JOB_STATE_FAILED and got[-1].exit_code == 3
    assert got[-1].offset == len(before) + len(b"appended line\n")
    assert received() == before + b"appended line\n"


def test_a_burst_of_new_directories_is_not_missed(tree: Tree) -> None:
    """Many runs appear under brand-new directories, each rewritten at once (as a conductor
    does: QUEUED, RUNNING, SUCCEEDED within milliseconds). None may be missed or left stale:
    a watch added after its directory was scanned loses what happened in between."""
    now = time.time_ns() // 1000
    expected: dict[tuple[str, str, str, str], int] = {}
    for i in range(200):
        key = (f"burst-{i:03d}", "g", "n", "r1")
        run_dir = tree.m.status_dir.joinpath(*key)
        run_dir.mkdir(parents=True)
        job = {"id": f"burst-{i}", "project": key[0], "group": "g", "name": "n", "runId": "r1",
               "createTime": format_ts(now + i)}  # fmt: skip
        for state in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"):
            write_status(run_dir, {**job, "state": state})
        expected[key] = S.JOB_STATE_SUCCEEDED
    seen: dict[tuple[str, str, str, str], int] = {}

    def all_succeeded() -> bool:
        nonlocal seen
        jobs, _ = tree.v.list_all()
        seen = {
            (j.project, j.group, j.name, j.run_id): j.state for j in jobs if j.project.startswith("burst-")
        }
        return seen == expected

    try:
        tree.wait(all_succeeded, "200 new runs to show as SUCCEEDED")
    except AssertionError:
        missing = sorted(k[0] for k in expected if k not in seen)
        stale = sorted(k[0] for k, s in seen.items() if s != S.JOB_STATE_SUCCEEDED)
        raise AssertionError(f"missing: {missing}; with an old state: {stale}") from None
    tree.wait_in_step()


def test_changes_during_the_cold_scan_are_not_lost(
    tmp_path: Path, viewer_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs rewritten and added while the cold scan's worker processes read the tree all
    show, by inotify alone: the workers watch each directory before listing it, and events
    for their watches that come before the viewer knows them are held, not dropped."""
    from baton.viewer_api import parallel_scan

    m = generate(tmp_path / "tree", runs=800, checkpoints=0, seed=5)
    monkeypatch.setattr(parallel_scan, "PARALLEL_SCAN_MIN_RUNS", 0)  # use workers even at this size
    runs = sorted(m.status_dir.glob("*/*/*/*/status.json"))
    stop = threading.Event()
    written = 0

    def writer() -> None:
        nonlocal written
        now = time.time_ns() // 1000
        while not stop.is_set():
            path = runs[written % len(runs)]
            data = json.loads(path.read_bytes())
            data["reason"] = f"rewrite {written}"
            write_status(path.parent, data)
            new_dir = path.parent.parent / f"added-{written:05d}"
            new_dir.mkdir()
            write_status(new_dir, {"id": f"added-{written}", "state": "JOB_STATE_QUEUED",
                                   "createTime": format_ts(now + written)})  # fmt: skip
            written += 1
            time.sleep(0.001)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        # No reconciliation scan can mend a loss: only inotify can bring the index in step.
        v = viewer_factory(home=tmp_path / "tree", watch="inotify", reconcile_interval=3600, scan_workers=2)
    finally:
        stop.set()
        thread.join()
    assert written > 20, "the writer should have been busy while the viewer started"
    tree = Tree(m, v)
    tree.wait_in_step()
    # The lists hold each run's latest content, not only its latest state.
    on_disk = {r.key: r.data.get("reason", "") for r in tree.oracle().runs.values()}
    assert {key_of(j): j.reason for j in v.list_all()[0]} == on_disk


def test_out_of_inotify_watches_is_reported_and_rescans_keep_lists_fresh(tmp_path: Path) -> None:
    """With the kernel's watch limit too low for the tree, the viewer still indexes it all,
    says how many directories it could not watch (stats and a warning), and shows changes
    there at its next reconciliation scan."""
    reason = can_limit_watches()
    if reason:
        pytest.skip(reason)
    m = generate(tmp_path / "tree", runs=60, checkpoints=4, seed=8)
    v = SubprocessViewer(
        tmp_path / "tree", tmp_path / "viewer.log", "--reconcile-interval", "0.5", watch_limit=20
    ).start()
    try:
        tree = Tree(m, v)
        stats = v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=10)
        assert stats.watch_mode == "inotify" and stats.total_runs == 60
        # Watched: at most the limit, of the ~50 directories down to the job directories and
        # the live runs' (the checkpoint tree's take a few more).
        assert stats.watched_directories <= 20 and stats.unwatched_directories >= 25
        warnings = [json.loads(line) for line in (tmp_path / "viewer.log").read_text().splitlines()
                    if "inotify_watches_exhausted" in line]  # fmt: skip
        assert warnings and warnings[0]["unwatched"] == stats.unwatched_directories
        tree.wait_in_step()
        o = tree.oracle()
        changed = {}
        for run in list(o.runs.values())[::6]:
            write_status(m.status_dir.joinpath(*run.key), _ended(run, "JOB_STATE_FAILED"))
            changed[run.key] = S.JOB_STATE_FAILED
        tree.wait(
            lambda: {key_of(j): j.state for j in v.list_all()[0] if key_of(j) in changed} == changed,
            "rewritten runs in unwatched directories to show after a rescan",
        )
        tree.wait_in_step()
    finally:
        v.stop()


def test_trees_made_after_the_viewer_started_show(tmp_path: Path, viewer_factory: Any) -> None:
    """A viewer started before its trees exist (the conductor not yet run) shows them once
    they do, and a tree removed and made again, by inotify alone."""
    home = tmp_path / "late" / "home"
    v = viewer_factory(home=home, watch="inotify", reconcile_interval=3600)
    # Written elsewhere and moved into place, as a checkpoint is: complete when it appears.
    staged = generate(tmp_path / "staging", runs=30, checkpoints=5, seed=12)
    home.parent.mkdir()
    staged.root.rename(home)
    m = dataclasses.replace(
        staged, root=home, status_dir=home / "status", checkpoints_dir=home / "checkpoints"
    )
    tree = Tree(m, v)
    tree.wait_in_step()
    assert len(tree.listed_runs()) == 30 and len(tree.listed_ckpts()) == 5
    shutil.rmtree(m.status_dir)
    tree.wait_in_step()
    assert tree.listed_runs() == []
    again = generate(tmp_path / "again", runs=10, checkpoints=0, seed=13)
    again.status_dir.rename(m.status_dir)
    tree.wait_in_step()
    assert len(tree.listed_runs()) == 10
    # Swapped for another at once: the old tree moved aside, a new one moved in.
    other = generate(tmp_path / "other", runs=7, checkpoints=0, seed=14)
    m.status_dir.rename(tmp_path / "aside")
    other.status_dir.rename(m.status_dir)
    tree.wait_in_step()
    assert len(tree.listed_runs()) == 7
    # A run moved to a new name is watched there: a rewrite of its status shows.
    run = tree.oracle().jobs()[0]
    moved = m.status_dir.joinpath(*run.key[:3], "moved-run")
    m.status_dir.joinpath(*run.key).rename(moved)
    tree.wait(lambda: "moved-run" in {k[3] for k in tree.listed_runs()}, "the moved run to show")
    write_status(moved, _ended(run, "JOB_STATE_CANCELLED"))
    tree.wait_in_step()
    # The tree moved aside is not the viewer's: changes there do not show.
    shutil.rmtree(tmp_path / "aside")
    tree.wait_in_step()


def test_a_reconciliation_scan_does_not_undo_newer_changes(tmp_path: Path, viewer_factory: Any) -> None:
    """A scan that read a status.json before inotify saw it change again must not put the
    older content back when it is merged (nothing would come to correct it): the race,
    played out in order. The scan's read is real; only its timing is arranged."""
    from baton.viewer_api import scan

    m = generate(tmp_path / "tree", runs=20, checkpoints=0, seed=15)
    v = viewer_factory(home=tmp_path / "tree", watch="inotify", reconcile_interval=3600)
    assert v.running is not None
    indexer = v.running.indexer
    run = _pick(Tree(m, v).oracle(), S.JOB_STATE_RUNNING)
    run_dir = m.status_dir.joinpath(*run.key)
    # A reconciliation begins (what inotify changes from now on is noted) ...
    began = v.call(_monotonic())
    indexer._reconcile_began = began
    # ... its scan reads the tree as it was ...
    before = scan.scan_status(str(m.status_dir))
    assert run.key in {rf.key for rf in before.runs}
    # ... then a run is rewritten, and inotify brings the change in.
    write_status(run_dir, _ended(run, "JOB_STATE_FAILED"))
    tree = Tree(m, v)

    def state() -> int:
        return {key_of(j): j.state for j in v.list_all()[0]}[run.key]

    tree.wait(lambda: state() == S.JOB_STATE_FAILED, "the rewrite to show")
    # The scan's merge comes last, with what it read.
    v.call(indexer._merge_scan(before, scan.ScanResult(), began))
    assert state() == S.JOB_STATE_FAILED
    indexer._reconcile_began = None
    tree.wait_in_step()


async def _monotonic() -> float:
    return time.monotonic()


def test_safety_net_rescans_take_at_most_a_tenth_of_the_time() -> None:
    """A tree whose rescan takes longer than a tenth of --reconcile-interval is rescanned less
    often, not back to back: at a million runs on a cold disk one takes minutes."""
    assert rescan_pause(300.0, 0.0) == 300.0
    assert rescan_pause(300.0, 30.0) == pytest.approx(300.0)
    assert rescan_pause(300.0, 480.0) == pytest.approx(4320.0)
    for scan_s in (0.5, 33.4, 480.0, 3600.0):
        pause = rescan_pause(300.0, scan_s)
        assert scan_s / (scan_s + pause) <= 0.1 + 1e-9
