"""Viewer queries against a generated tree: every answer equals a brute-force scan.

The expectations come from ``tests/viewer_oracle.py`` (os.scandir + json, no
viewer code). The generated tree is not modified here; the tests that change
files make their own trees.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.checks import bad_request_fields, error_info
from tests.harness import InProcessConductor
from tests.treegen import STALE_SPLIT, Manifest, generate, job_bytes, write_status
from tests.viewer_harness import InProcessViewer, viewer_session
from tests.viewer_oracle import NS, Ckpt, Oracle, Run, as_plain, last_lines

S = job_pb2
ALL_STATES = [v.number for v in S.JobState.DESCRIPTOR.values if v.number != 0]
DEFAULT_STALE_AFTER = 300.0
CHUNK = 64 * 1024


@dataclass
class Gen:
    m: Manifest
    v: InProcessViewer
    o: Oracle
    started_ns: int


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gen]:
    root = tmp_path_factory.mktemp("viewer-queries")
    m = generate(root, runs=400, checkpoints=80, seed=7)
    started = time.time_ns()
    with viewer_session(home=root) as v:
        yield Gen(m, v, Oracle(m.status_dir, m.checkpoints_dir), started)


def key_of(job: job_pb2.Job) -> tuple[str, str, str, str]:
    return (job.project, job.group, job.name, job.run_id)


def as_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


def assert_same_job(job: job_pb2.Job, run: Run) -> None:
    assert key_of(job) == run.key
    assert as_dict(job) == run.data, f"{run.key}: the viewer's Job differs from its status.json"


def ts_close(ts: Any, ns: int, slack_ns: int = 1000) -> bool:
    """A Timestamp equal to ``ns`` up to float rounding (the index keeps seconds as floats)."""
    return abs(ts.ToNanoseconds() - ns) <= slack_ns


# ------------------------------------------------------------ the generator


def test_generator_writes_every_kind_of_run_and_checkpoint(gen: Gen) -> None:
    o, m = gen.o, gen.m
    assert len(o.runs) == m.runs == 400
    assert set(o.state_counts()) == set(ALL_STATES)
    assert m.fresh_running and m.stale_running and m.without_id and m.big_logs and m.without_log
    assert len(o.ckpts) == m.checkpoints == 80
    assert m.both_configs and m.no_config and m.no_job_spec and m.in_progress_checkpoints
    # Both layouts, in one job too, and suffixes that name more than one checkpoint of a job.
    assert 0 < len(m.in_runs) < m.checkpoints
    assert {c.key for c in o.ckpts.values() if c.run_id} == set(m.in_runs)
    assert any(c.run_id == "" for c in o.ckpts.values())
    layouts_of_jobs = {
        k[:3]: {c.run_id == "" for c in o.ckpts.values() if c.key[:3] == k[:3]} for k in o.ckpts
    }
    assert {True, False} in layouts_of_jobs.values()
    assert m.shared_suffixes
    for p, g, n, suffix in m.shared_suffixes:
        assert len(o.matching(p, g, n, suffix)) > 1
    assert {c.config_file for c in o.ckpts.values()} == {"config.yaml", "config.json", ""}
    assert sum(c.size for c in o.ckpts.values()) == m.checkpoint_bytes
    # Ties on the sort time exist, so the name tie-break is exercised.
    times = Counter(r.order_time for r in o.runs.values())
    assert max(times.values()) > 1
    assert len({r.key[0] for r in o.runs.values()}) >= 3


def test_generated_status_files_are_canonical_proto3_json(gen: Gen) -> None:
    for run in gen.o.runs.values():
        raw = (run.path / "status.json").read_text()
        job = json_format.Parse(raw, job_pb2.Job())
        assert as_dict(job) == run.data, run.key


def test_generator_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def fingerprint(root: Path) -> list[tuple[str, bytes, int | None]]:
        out: list[tuple[str, bytes, int | None]] = []
        for p in sorted(root.rglob("*")):
            rel = str(p.relative_to(root))
            if p.is_file():
                # runDir and checkpointDir name the root; the rest must be identical.
                out.append((rel, p.read_bytes().replace(str(root).encode(), b"ROOT"), None))
            elif "checkpoints" in p.parts and len(p.relative_to(root).parts) == 5:
                out.append((rel, b"", p.stat().st_mtime_ns))
            elif (
                "checkpoints" in p.parts
                and len(p.relative_to(root).parts) == 6
                and p.parent.joinpath(".baton-run").is_file()
            ):
                out.append((rel, b"", p.stat().st_mtime_ns))  # a checkpoint in a run's directory
        return out

    now = 1_800_000_000.25
    generate(tmp_path / "a", 60, 12, seed=5, now=now)
    generate(tmp_path / "b", 60, 12, seed=5, now=now)
    generate(tmp_path / "c", 60, 12, seed=6, now=now)
    a = fingerprint(tmp_path / "a")
    assert a == fingerprint(tmp_path / "b")
    assert a != fingerprint(tmp_path / "c")


# ------------------------------------------------------------------ ListJobs


def _biggest(counter: Counter[Any]) -> Any:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def pick_filter(name: str, o: Oracle) -> dict[str, Any]:
    runs = list(o.runs.values())
    projects = Counter(r.key[0] for r in runs)
    big_p = _biggest(projects)
    small_p = sorted(projects.items(), key=lambda kv: (kv[1], kv[0]))[0][0]
    big_pg = _biggest(Counter(r.key[:2] for r in runs if r.key[0] == big_p))
    big_pgn = _biggest(Counter(r.key[:3] for r in runs))
    # A group name used by more than one project, if there is one.
    group = _biggest(Counter(pg[1] for pg in {r.key[:2] for r in runs}))
    name_only = _biggest(Counter(r.key[2] for r in runs))
    battery: dict[str, dict[str, Any]] = {
        "all": {},
        "project": {"project": big_p},
        "small-project": {"project": small_p},
        "project-group": {"project": big_pg[0], "group": big_pg[1]},
        "project-group-name": dict(zip(("project", "group", "name"), big_pgn, strict=True)),
        "group-only": {"group": group},
        "name-only": {"name": name_only},
        "running": {"states": [S.JOB_STATE_RUNNING]},
        "terminal": {"states": [S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED]},
        "queued": {"states": [S.JOB_STATE_QUEUED]},
        "project-states": {"project": big_p, "states": [S.JOB_STATE_FAILED, S.JOB_STATE_PAUSED]},
        "pgn-state": {**dict(zip(("project", "group", "name"), big_pgn, strict=True)), "states": [6]},
        "name-states": {"name": name_only, "states": [2, 3, 5]},
        "group-name": {"group": group, "name": name_only},
        "repeated-state": {"states": [S.JOB_STATE_FAILED, S.JOB_STATE_FAILED]},
        "every-state": {"states": ALL_STATES},
        "no-such-project": {"project": "no-such-project"},
        "unspecified-state": {"states": [S.JOB_STATE_UNSPECIFIED]},
    }
    return battery[name]


FILTER_NAMES = [
    "all", "project", "small-project", "project-group", "project-group-name", "group-only", "name-only",
    "running", "terminal", "queued", "project-states", "pgn-state", "name-states", "group-name",
    "repeated-state", "every-state", "no-such-project", "unspecified-state",
]  # fmt: skip


@pytest.mark.parametrize("size", [1, 7, 100, 0])
@pytest.mark.parametrize("filter_name", FILTER_NAMES)
def test_list_jobs_pages_equal_brute_force(gen: Gen, filter_name: str, size: int) -> None:
    flt = pick_filter(filter_name, gen.o)
    expected = gen.o.jobs(
        flt.get("project", ""), flt.get("group", ""), flt.get("name", ""), tuple(flt.get("states", ()))
    )
    if filter_name not in ("no-such-project", "unspecified-state"):
        assert expected, f"filter {filter_name} matches nothing in the generated tree"
    per_page = size or 100
    got: list[job_pb2.Job] = []
    token = ""
    pages = 0
    while True:
        resp = gen.v.stub.ListJobs(
            vpb.ViewerListJobsRequest(page_size=size, page_token=token, **flt), timeout=10
        )
        pages += 1
        assert resp.total_size == len(expected), f"total_size on page {pages}"
        assert len(resp.jobs) <= per_page
        got.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            break
        assert pages <= len(expected) // per_page + 1, "more pages than the runs can fill"
    assert pages <= max(1, math.ceil(len(expected) / per_page)) + 1
    assert [key_of(j) for j in got] == [r.key for r in expected]
    if size in (7, 0):
        for job, run in zip(got, expected, strict=True):
            assert_same_job(job, run)


def test_list_jobs_page_size_is_capped_at_1000(gen: Gen) -> None:
    resp = gen.v.stub.ListJobs(vpb.ViewerListJobsRequest(page_size=5000), timeout=10)
    assert [key_of(j) for j in resp.jobs] == [r.key for r in gen.o.jobs()]
    assert resp.next_page_token == ""


def test_queued_runs_sort_by_create_time_among_started_ones(gen: Gen) -> None:
    # No start time: the create time places the run, among runs sorted by start time.
    jobs, _ = gen.v.list_all()
    queued = [i for i, j in enumerate(jobs) if j.state == S.JOB_STATE_QUEUED]
    assert queued and 0 < queued[len(queued) // 2] < len(jobs) - 1
    for i in queued:
        j = jobs[i]
        assert not j.HasField("start_time")
        if i > 0:
            prev = jobs[i - 1]
            prev_t = (prev.start_time if prev.HasField("start_time") else prev.create_time).ToNanoseconds()
            assert prev_t >= j.create_time.ToNanoseconds()


# --------------------------------------------------------------- ListJobRuns


@pytest.mark.parametrize("size", [1, 7, 0])
def test_list_job_runs_equals_brute_force(gen: Gen, size: int) -> None:
    pgns = Counter(r.key[:3] for r in gen.o.runs.values())
    chosen = [_biggest(pgns), *sorted(pgns)[:3], sorted(pgns, key=lambda k: (pgns[k], k))[0]]
    for p, g, n in chosen:
        got: list[job_pb2.Job] = []
        token = ""
        while True:
            resp = gen.v.stub.ListJobRuns(
                vpb.ListJobRunsRequest(project=p, group=g, name=n, page_size=size, page_token=token),
                timeout=10,
            )
            assert len(resp.jobs) <= (size or 100)
            got.extend(resp.jobs)
            token = resp.next_page_token
            if not token:
                break
        expected = gen.o.jobs(p, g, n)
        assert [key_of(j) for j in got] == [r.key for r in expected], (p, g, n)
        for job, run in zip(got, expected, strict=True):
            assert_same_job(job, run)


def test_list_job_runs_of_an_unknown_job_is_empty(gen: Gen) -> None:
    resp = gen.v.stub.ListJobRuns(
        vpb.ListJobRunsRequest(project="nope", group="nope", name="nope"), timeout=10
    )
    assert list(resp.jobs) == [] and resp.next_page_token == ""


# -------------------------------------------------------------- ListProjects


@pytest.mark.parametrize("size", [1, 2, 0])
def test_list_projects_counts_and_last_activity(gen: Gen, size: int) -> None:
    got: list[vpb.ProjectSummary] = []
    token = ""
    while True:
        resp = gen.v.stub.ListProjects(vpb.ListProjectsRequest(page_size=size, page_token=token), timeout=10)
        assert len(resp.projects) <= (size or 100)
        got.extend(resp.projects)
        token = resp.next_page_token
        if not token:
            break
    names = [p.project for p in got]
    assert len(names) == len(set(names)), "a project was listed twice"
    expected = gen.o.projects()
    assert set(names) == set(expected)
    for summary in got:
        runs, counts, last = expected[summary.project]
        assert summary.run_count == runs, summary.project
        states = [c.state for c in summary.state_counts]
        assert states == sorted(states) and all(c.count > 0 for c in summary.state_counts)
        assert {c.state: c.count for c in summary.state_counts} == counts, summary.project
        assert ts_close(summary.last_activity_time, last), summary.project


# ----------------------------------------------------------- ListRunningJobs


def _running(gen: Gen, **kw: Any) -> list[vpb.RunningJob]:
    out: list[vpb.RunningJob] = []
    token = ""
    while True:
        resp = gen.v.stub.ListRunningJobs(vpb.ListRunningJobsRequest(page_token=token, **kw), timeout=10)
        out.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            return out


def _stale_after(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * NS))
    return d


@pytest.mark.parametrize("project", ["", "big"])
@pytest.mark.parametrize("stale_after", [None, STALE_SPLIT])
@pytest.mark.parametrize("include_stale", [False, True])
@pytest.mark.parametrize("size", [3, 0])
def test_list_running_jobs_and_staleness(
    gen: Gen, project: str, stale_after: float | None, include_stale: bool, size: int
) -> None:
    if project == "big":
        project = _biggest(Counter(r.key[0] for r in gen.o.runs.values() if r.state == S.JOB_STATE_RUNNING))
    kw: dict[str, Any] = {"project": project, "include_stale": include_stale, "page_size": size}
    if stale_after is not None:
        kw["stale_after"] = _stale_after(stale_after)
    threshold = DEFAULT_STALE_AFTER if stale_after is None else stale_after
    now = time.time_ns()
    got = _running(gen, **kw)
    expected = gen.o.running(project, threshold, now, include_stale)
    assert [key_of(r.job) for r in got] == [r.key for r in expected]
    everyone = gen.o.running(project, threshold, now, True)
    if not include_stale:
        # Non-vacuous: the generated tree has stale runs this call left out.
        assert len(expected) < len(everyone)
    for rj, run in zip(got, expected, strict=True):
        age = run.heartbeat_age(now)
        assert rj.stale == (age > threshold), run.key
        assert abs(rj.heartbeat_age.ToNanoseconds() / NS - age) < 5.0, run.key
        assert_same_job(rj.job, run)
    if include_stale:
        assert any(r.stale for r in got) and any(not r.stale for r in got)


# ------------------------------------------------------------ ListRecentJobs


@pytest.mark.parametrize(
    ("hours", "limit", "project"),
    [(0, 0, ""), (1, 0, ""), (6, 1000, ""), (48, 5, ""), (24, 1000, ""), (400, 1000, ""), (24, 1000, "big")],
)
def test_list_recent_jobs(gen: Gen, hours: int, limit: int, project: str) -> None:
    if project == "big":
        project = _biggest(Counter(r.key[0] for r in gen.o.runs.values()))
    before = time.time_ns()
    resp = gen.v.stub.ListRecentJobs(
        vpb.ListRecentJobsRequest(project=project, hours=hours, limit=limit), timeout=10
    )
    after = time.time_ns()
    got = [key_of(j) for j in resp.jobs]
    candidates = [
        [r.key for r in gen.o.recent(project, hours or 24, limit or 50, t)] for t in (before, after)
    ]
    assert got in candidates
    for job in resp.jobs:
        assert_same_job(job, gen.o.runs[key_of(job)])
    if (hours, limit) == (0, 0):
        # The defaults: 24 hours and 50 runs; the tree has more than 50 in a day.
        assert len(got) == 50
        assert len(gen.o.recent("", 24, 1000, before)) > 50


# --------------------------------------------------------- GetDashboardStats


@pytest.mark.parametrize("project", ["", "big", "small"])
def test_dashboard_stats(gen: Gen, project: str) -> None:
    projects = Counter(r.key[0] for r in gen.o.runs.values())
    if project == "big":
        project = _biggest(projects)
    elif project == "small":
        project = sorted(projects.items(), key=lambda kv: (kv[1], kv[0]))[0][0]
    before = time.time_ns()
    st = gen.v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(project=project), timeout=10)
    after = time.time_ns()
    o = gen.o
    counts = o.state_counts(project)
    assert st.total_runs == sum(counts.values())
    assert {c.state: c.count for c in st.state_counts} == counts
    running = o.jobs(project, states=(S.JOB_STATE_RUNNING,))
    assert st.running == len(running)
    assert st.stale == sum(1 for r in running if r.heartbeat_age(before) > DEFAULT_STALE_AFTER)
    failures = [[r.key for r in o.recent_failures(project, t)] for t in (before, after)]
    assert [key_of(j) for j in st.recent_failures] in [f[:10] for f in failures]
    assert st.recent_failure_count in [len(f) for f in failures]
    ckpt_count, ckpt_bytes = o.ckpt_totals(project)
    assert (st.checkpoint_count, st.checkpoint_bytes) == (ckpt_count, ckpt_bytes)
    assert (st.invalid_status_files, st.invalid_names, st.outside_links) == (0, 0, 0)
    assert st.watch_mode == "inotify"
    assert gen.started_ns - NS <= st.last_full_scan_time.ToNanoseconds() <= after
    if not project:
        assert st.recent_failure_count > 10 and len(st.recent_failures) == 10
        assert st.checkpoint_bytes == gen.m.checkpoint_bytes and st.checkpoint_count == gen.m.checkpoints
        assert st.stale > 0


# --------------------------------------------------------------- checkpoints


def ckpt_key(c: vpb.Checkpoint) -> tuple[str, str, str, str, str]:
    return (c.project, c.group, c.name, c.run_id, c.suffix)


def assert_same_ckpt(got: vpb.Checkpoint, c: Ckpt) -> None:
    assert ckpt_key(got) == c.key
    assert got.path == str(c.path)
    assert ts_close(got.create_time, c.mtime_ns), c.key
    assert (got.size_bytes, got.file_count) == (c.size, c.files), c.key
    assert got.config_file == c.config_file, c.key
    assert got.has_job_spec == c.has_job_spec, c.key


def _ckpt_filters(o: Oracle) -> list[dict[str, str]]:
    jobs = Counter(c.key[:3] for c in o.ckpts.values())
    p, g, n = _biggest(jobs)
    runs = Counter(c.key[:4] for c in o.ckpts.values() if c.run_id)
    rp, rg, rn, run = _biggest(runs)
    return [
        {},
        {"project": p},
        {"project": p, "group": g},
        {"project": p, "group": g, "name": n},
        {"project": rp, "group": rg, "name": rn, "run_id": run},
        {"run_id": run},
    ]


@pytest.mark.parametrize("size", [1, 7, 0])
def test_list_checkpoints_equals_brute_force(gen: Gen, size: int) -> None:
    for flt in _ckpt_filters(gen.o):
        got: list[vpb.Checkpoint] = []
        token = ""
        while True:
            resp = gen.v.stub.ListCheckpoints(
                vpb.ListCheckpointsRequest(page_size=size, page_token=token, **flt), timeout=10
            )
            assert len(resp.checkpoints) <= (size or 100)
            got.extend(resp.checkpoints)
            token = resp.next_page_token
            if not token:
                break
        expected = gen.o.checkpoints(**flt)
        assert len(expected) > (1 if flt else 50)
        assert [ckpt_key(c) for c in got] == [c.key for c in expected], flt
        for g, c in zip(got, expected, strict=True):
            assert_same_ckpt(g, c)


def test_get_checkpoint_and_latest(gen: Gen) -> None:
    assert any(not gen.o.addressable(c) for c in gen.o.ckpts.values()), "no plain checkpoint shares a suffix"
    for c in gen.o.ckpts.values():
        p, g, n, _, suffix = c.key
        if not gen.o.addressable(c):
            continue  # see test_a_shared_suffix_is_ambiguous_and_each_ref_finds_one
        got = gen.v.stub.GetCheckpoint(vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=c.ref))
        assert_same_ckpt(got, c)
        if len(gen.o.matching(p, g, n, suffix)) == 1:
            # Alone with its suffix: the bare suffix finds it too, whatever its run.
            got = gen.v.stub.GetCheckpoint(
                vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=suffix)
            )
            assert_same_ckpt(got, c)
    for p, g, n in {c.key[:3] for c in gen.o.ckpts.values()}:
        latest = gen.o.latest(p, g, n)
        assert latest is not None
        got = gen.v.stub.GetLatestCheckpoint(vpb.GetLatestCheckpointRequest(project=p, group=g, name=n))
        assert_same_ckpt(got, latest)
    for p, g, n, run in {c.key[:4] for c in gen.o.ckpts.values() if c.run_id}:
        latest = gen.o.latest(p, g, n, run)
        assert latest is not None
        req = vpb.GetLatestCheckpointRequest(project=p, group=g, name=n, run_id=run)
        assert_same_ckpt(gen.v.stub.GetLatestCheckpoint(req), latest)


def test_a_shared_suffix_is_ambiguous_and_each_ref_finds_one(gen: Gen) -> None:
    for p, g, n, suffix in sorted(set(gen.m.shared_suffixes)):
        matching = gen.o.matching(p, g, n, suffix)
        assert len(matching) > 1
        with pytest.raises(grpc.RpcError) as err:
            gen.v.stub.GetCheckpoint(vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=suffix))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_fields(err.value) == ["suffix"]
        info = error_info(err.value)
        assert info.reason == "CHECKPOINT_AMBIGUOUS"
        assert info.metadata["matches"].split(",") == [c.ref for c in matching]
        assert info.metadata["match_count"] == str(len(matching))
        assert suffix in err.value.details() and len(err.value.details()) < 1000
        for c in matching:
            # A plain one among them is left with no ref of its own: the bare suffix is taken.
            if c.run_id:
                req = vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=c.ref)
                assert_same_ckpt(gen.v.stub.GetCheckpoint(req), c)


def test_checkpoint_config_yaml_before_json(gen: Gen) -> None:
    seen: Counter[str] = Counter()
    for c in gen.o.ckpts.values():
        p, g, n, _, _ = c.key
        if not gen.o.addressable(c):
            continue
        req = vpb.GetCheckpointConfigRequest(project=p, group=g, name=n, suffix=c.ref)
        expected = gen.o.config(c)
        if expected is None:
            with pytest.raises(grpc.RpcError) as err:
                gen.v.stub.GetCheckpointConfig(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            seen["none"] += 1
            continue
        data, source = expected
        got = gen.v.stub.GetCheckpointConfig(req, timeout=10)
        assert (got.source_file, got.run_id, got.suffix) == (source, c.run_id, c.suffix), c.key
        assert as_dict(got.config) == as_plain(data), c.key
        assert got.config["format"] == source.removeprefix("config."), c.key
        seen[source] += 1
    for key in gen.m.both_configs:
        p, g, n, _, _ = key
        if not gen.o.addressable(gen.o.ckpts[key]):
            continue
        got = gen.v.stub.GetCheckpointConfig(
            vpb.GetCheckpointConfigRequest(project=p, group=g, name=n, suffix=gen.o.ckpts[key].ref)
        )
        assert got.source_file == "config.yaml" and got.config["format"] == "yaml"
        seen["both"] += 1
    assert seen["config.yaml"] and seen["config.json"] and seen["none"] and seen["both"]


def test_checkpoint_config_and_job_spec_of_the_latest(gen: Gen) -> None:
    for p, g, n in {c.key[:3] for c in gen.o.ckpts.values()}:
        latest = gen.o.latest(p, g, n)
        assert latest is not None
        expected = gen.o.config(latest)
        req = vpb.GetCheckpointConfigRequest(project=p, group=g, name=n)
        if expected is None:
            with pytest.raises(grpc.RpcError) as err:
                gen.v.stub.GetCheckpointConfig(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        else:
            got = gen.v.stub.GetCheckpointConfig(req, timeout=10)
            assert (got.run_id, got.suffix, got.source_file) == (latest.run_id, latest.suffix, expected[1])
            assert as_dict(got.config) == as_plain(expected[0])
        spec_req = vpb.GetCheckpointJobSpecRequest(project=p, group=g, name=n)
        if latest.has_job_spec:
            got_spec = gen.v.stub.GetCheckpointJobSpec(spec_req, timeout=10)
            assert (got_spec.run_id, got_spec.suffix) == (latest.run_id, latest.suffix)
        else:
            with pytest.raises(grpc.RpcError) as err:
                gen.v.stub.GetCheckpointJobSpec(spec_req, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_checkpoint_job_spec(gen: Gen) -> None:
    for c in gen.o.ckpts.values():
        p, g, n, _, _ = c.key
        if not gen.o.addressable(c):
            continue
        req = vpb.GetCheckpointJobSpecRequest(project=p, group=g, name=n, suffix=c.ref)
        if not c.has_job_spec:
            with pytest.raises(grpc.RpcError) as err:
                gen.v.stub.GetCheckpointJobSpec(req, timeout=10)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            continue
        got = gen.v.stub.GetCheckpointJobSpec(req, timeout=10)
        assert (got.run_id, got.suffix) == (c.run_id, c.suffix)
        assert as_dict(got.job_spec) == as_plain(json.loads((c.path / "job.json").read_text())), c.key


def test_checkpoint_stats(gen: Gen) -> None:
    # Summed across runs: the stats take no run filter.
    filters = [f for f in _ckpt_filters(gen.o) if "run_id" not in f]
    for flt in [*filters, {"project": "no-such"}]:
        got = gen.v.stub.GetCheckpointStats(vpb.GetCheckpointStatsRequest(**flt), timeout=10)
        assert (got.checkpoint_count, got.total_bytes) == gen.o.ckpt_totals(**flt), flt


# ---------------------------------------------------------------------- logs


def _log_runs(gen: Gen) -> list[Run]:
    """Runs to read logs of: the big ones, those without a log or id, and a spread of others."""
    runs = gen.o.runs
    chosen = [runs[k] for k in gen.m.big_logs + gen.m.without_log[:3] + gen.m.without_id[:3]]
    chosen += [r for i, r in enumerate(sorted(runs.values(), key=lambda r: r.key)) if i % 17 == 0]
    return chosen


def _ref(run: Run, by_id: bool) -> dict[str, Any]:
    if by_id and run.job_id:
        return {"job_id": run.job_id}
    p, g, n, r = run.key
    return {"project": p, "group": g, "name": n, "run_id": r}


def test_read_log_whole_and_in_pieces(gen: Gen) -> None:
    for i, run in enumerate(_log_runs(gen)):
        data = run.log() or b""
        ref = _ref(run, by_id=i % 2 == 0)
        out = b""
        offset = 0
        while True:
            resp = gen.v.stub.ReadLog(vpb.ReadLogRequest(offset=offset, **ref), timeout=10)
            assert resp.offset == offset and resp.size_bytes == len(data), run.key
            assert len(resp.data) <= CHUNK
            assert resp.next_offset == offset + len(resp.data)
            out += resp.data
            offset = resp.next_offset
            if offset >= resp.size_bytes:
                break
        assert out == data, run.key
        if len(data) > 150:
            resp = gen.v.stub.ReadLog(vpb.ReadLogRequest(offset=50, limit=100, **ref), timeout=10)
            assert resp.data == data[50:150] and resp.next_offset == 150


@pytest.mark.parametrize("lines", [1, 5, 0])
def test_tail_log(gen: Gen, lines: int) -> None:
    for run in _log_runs(gen):
        data = run.log() or b""
        resp = gen.v.stub.TailLog(vpb.TailLogRequest(tail_lines=lines, **_ref(run, by_id=False)), timeout=10)
        assert resp.data == last_lines(data, lines or 100), run.key
        assert resp.next_offset == len(data) and data[resp.offset :] == resp.data


def test_stream_log_without_follow(gen: Gen) -> None:
    for run in _log_runs(gen):
        data = run.log() or b""
        cases: list[tuple[dict[str, Any], bytes | None]] = [
            ({}, data),
            ({"offset": min(7, len(data))}, data[7:]),
            ({"tail_lines": 3}, None),
        ]
        for req_kw, want in cases:
            request = vpb.ViewerStreamLogsRequest(**req_kw, **_ref(run, by_id=True))
            chunks = list(gen.v.stub.StreamLogs(request, timeout=10))
            body = b"".join(c.data for c in chunks)
            assert body == (last_lines(data, 3) if want is None else want), (run.key, req_kw)
            pos = chunks[0].offset if chunks else 0
            for c in chunks:
                assert len(c.data) <= CHUNK and not c.truncated
                if c.data:
                    assert c.offset == pos
                    pos += len(c.data)


def test_stream_log_follow_of_ended_runs_ends_with_complete(gen: Gen) -> None:
    ended = [r for r in _log_runs(gen) if r.state in (6, 7, 8) and r.log() is not None]
    ended += [r for r in gen.o.runs.values() if r.state in (7, 8) and "signal" in r.data][:3]
    assert any("signal" in r.data for r in ended) and any("exitCode" in r.data for r in ended)
    for run in ended:
        request = vpb.ViewerStreamLogsRequest(follow=True, **_ref(run, True))
        chunks = list(gen.v.stub.StreamLogs(request, timeout=10))
        assert chunks and chunks[-1].complete, run.key
        # StreamLog, the deprecated first name, is the same call.
        assert list(gen.v.stub.StreamLog(request, timeout=10)) == chunks
        last = chunks[-1]
        assert b"".join(c.data for c in chunks) == run.log()
        assert last.state == run.state
        assert last.offset == len(run.log() or b"")
        assert last.HasField("exit_code") == ("exitCode" in run.data), run.key
        if "exitCode" in run.data:
            assert last.exit_code == run.data["exitCode"]
        assert last.HasField("signal") == ("signal" in run.data), run.key
        if "signal" in run.data:
            assert last.signal == run.data["signal"]
        assert not any(c.complete for c in chunks[:-1])


# -------------------------------------------------------------------- GetJob


def test_get_job_by_id_and_by_path(gen: Gen) -> None:
    for run in gen.o.runs.values():
        if run.job_id:
            assert_same_job(gen.v.stub.GetJob(vpb.ViewerGetJobRequest(job_id=run.job_id), timeout=10), run)
        p, g, n, r = run.key
        req = vpb.ViewerGetJobRequest(project=p, group=g, name=n, run_id=r)
        assert_same_job(gen.v.stub.GetJob(req, timeout=10), run)


def test_get_job_reads_the_file_fresh(tmp_path: Path, viewer_factory: Any) -> None:
    m = generate(tmp_path / "t", runs=30, checkpoints=0, seed=11)
    # Polling once an hour: the index will not see the change, only a fresh read can.
    v = viewer_factory(home=tmp_path / "t", watch="poll", poll_interval=3600, reconcile_interval=3600)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    run = next(r for r in o.jobs() if r.state == S.JOB_STATE_RUNNING and r.job_id)
    changed = {**run.data, "state": "JOB_STATE_SUCCEEDED", "exitCode": 0, "reason": "changed on disk"}
    changed["endTime"] = changed["heartbeatTime"]
    write_status(run.path, changed)
    got = v.stub.GetJob(vpb.ViewerGetJobRequest(job_id=run.job_id), timeout=10)
    assert as_dict(got) == changed
    p, g, n, r = run.key
    got = v.stub.GetJob(vpb.ViewerGetJobRequest(project=p, group=g, name=n, run_id=r), timeout=10)
    assert as_dict(got) == changed
    # The list still shows the indexed copy, so the answer above did not come from the index.
    listed = v.stub.ListJobRuns(
        vpb.ListJobRunsRequest(project=p, group=g, name=n, page_size=1000), timeout=10
    )
    assert {key_of(j): j.state for j in listed.jobs}[run.key] == S.JOB_STATE_RUNNING
    assert (run.path / "status.json").read_bytes() == job_bytes(changed)


# ---------------------------------------------------------- a real conductor


def test_runs_of_a_real_conductor(conductor: InProcessConductor, viewer_factory: Any) -> None:
    v = viewer_factory(home=conductor.home)
    spec = "name: {name}\nproject: real\ngroup: g1\ncommand: '{cmd}'\n"
    ok = conductor.submit(spec.format(name="ok", cmd="echo one; echo two"))
    bad = conductor.submit(spec.format(name="bad", cmd="printf partial; exit 7"))
    ckpt = conductor.submit(
        spec.format(
            name="saver",
            cmd='d=$BATON_CHECKPOINT_DIR; mkdir -p "$d/.step-1"; printf weights > "$d/.step-1/model.bin"; '
            'printf "lr: 0.5\\n" > "$d/.step-1/config.yaml"; mv "$d/.step-1" "$d/step-1"',
        )
    )
    hold = conductor.submit(spec.format(name="hold", cmd="echo started; sleep 600"))
    for job in (ok, bad, ckpt):
        conductor.wait_ended(job.id)
    conductor.wait_for(hold.id, lambda j: j.state == S.JOB_STATE_RUNNING and j.external_id != "")

    last: dict[str, tuple[int, int]] = {}

    def matches() -> bool:
        listed = {j.id: j.state for j in v.list_all(project="real")[0]}
        for jid in (ok.id, bad.id, ckpt.id, hold.id):
            last[jid] = (listed.get(jid, -1), conductor.get(jid).state)
        return all(seen == want for seen, want in last.values())

    try:
        v.wait_for(matches, "the conductor's runs in ListJobs with their states", timeout=10)
    except AssertionError:
        raise AssertionError(f"(viewer state, conductor state) by job id, -1 = not listed: {last}") from None
    for job in (ok, bad, ckpt):
        want = conductor.get(job.id)
        got = v.stub.GetJob(vpb.ViewerGetJobRequest(job_id=job.id), timeout=10)
        assert as_dict(got) == as_dict(want)
    states = {j.name: j.state for j in v.list_all(project="real")[0]}
    assert states == {
        "ok": S.JOB_STATE_SUCCEEDED,
        "bad": S.JOB_STATE_FAILED,
        "saver": S.JOB_STATE_SUCCEEDED,
        "hold": S.JOB_STATE_RUNNING,
    }
    running = v.stub.ListRunningJobs(vpb.ListRunningJobsRequest(project="real"), timeout=10).jobs
    assert [r.job.id for r in running] == [hold.id] and not running[0].stale

    o = Oracle(conductor.home / "status", conductor.home / "checkpoints")
    assert [key_of(j) for j in v.list_all()[0]] == [r.key for r in o.jobs()]
    for job, text, code in ((ok, b"one\ntwo\n", 0), (bad, b"partial", 7)):
        chunks = list(v.stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=job.id, follow=True), timeout=10))
        assert b"".join(c.data for c in chunks) == text
        assert chunks[-1].complete and chunks[-1].exit_code == code
        assert chunks[-1].state == (S.JOB_STATE_SUCCEEDED if code == 0 else S.JOB_STATE_FAILED)

    v.wait_for(
        lambda: (
            len(v.stub.ListCheckpoints(vpb.ListCheckpointsRequest(project="real"), timeout=10).checkpoints)
            == 1
        ),
        "the checkpoint the job wrote",
    )
    c = v.stub.GetLatestCheckpoint(vpb.GetLatestCheckpointRequest(project="real", group="g1", name="saver"))
    assert (c.suffix, c.size_bytes, c.file_count, c.config_file) == ("step-1", 7 + 8, 2, "config.yaml")
    cfg = v.stub.GetCheckpointConfig(vpb.GetCheckpointConfigRequest(project="real", group="g1", name="saver"))
    assert as_dict(cfg.config) == {"lr": 0.5} and cfg.source_file == "config.yaml"

    # A followed log of a running job: its output, then the end when the conductor cancels it.
    stream = v.stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=hold.id, follow=True), timeout=30)
    seen = b""
    while seen != b"started\n":
        seen += next(stream).data
        assert b"started\n".startswith(seen)
    conductor.stub.CancelJob(_cancel_request(hold.id), timeout=10)
    rest = list(stream)
    assert rest and rest[-1].complete and rest[-1].state == S.JOB_STATE_CANCELLED
    assert b"".join(c.data for c in rest) == b""


def _cancel_request(job_id: str) -> Any:
    from baton.v1 import conductor_pb2

    return conductor_pb2.CancelJobRequest(job_id=job_id)
