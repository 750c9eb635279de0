"""Bad input for the viewer: on disk (broken status files, bad names, links out
of the root, logs deleted under a reader) and in requests (page tokens from
elsewhere, unknown runs, bad names). Each is skipped, counted, or answered
with the right status code, and the viewer keeps serving. And the viewer
never writes: not on a read-only mount, and not a byte, inode or mtime of the
tree it serves.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format
from inotify_simple import INotify
from inotify_simple import flags as F

from baton.v1 import conductor_pb2, job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.checks import bad_request_fields
from tests.harness import InProcessConductor
from tests.treegen import Manifest, format_ts, generate, job_bytes, write_status
from tests.viewer_harness import InProcessViewer, SubprocessViewer, can_mount_read_only, viewer_session
from tests.viewer_oracle import Oracle, Run

S = job_pb2
VIEWER = vpb.DESCRIPTOR.services_by_name["Viewer"]
DEADLINE = 5.0


def _valid_job(key: tuple[str, str, str, str], **extra: Any) -> dict[str, Any]:
    p, g, n, r = key
    now = time.time_ns() // 1000
    return {
        "id": f"id-{r}",
        "project": p,
        "group": g,
        "name": n,
        "runId": r,
        "state": "JOB_STATE_SUCCEEDED",
        "createTime": format_ts(now - 5_000_000),
        "startTime": format_ts(now - 4_000_000),
        "endTime": format_ts(now - 1_000_000),
        "exitCode": 0,
        **extra,
    }


def _put_run(run_dir: Path, raw: bytes | dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_bytes(job_bytes(raw) if isinstance(raw, dict) else raw)


# status.json contents that are not a Job, by case name.
def _broken(key: tuple[str, str, str, str]) -> dict[str, bytes]:
    whole = job_bytes(_valid_job(key))
    return {
        "truncated": whole[: len(whole) // 2],
        "empty": b"",
        "array": b"[1, 2, 3]",
        "unknown-state": job_bytes(_valid_job(key, state="JOB_STATE_EXPLODED")),
        "bad-timestamp": job_bytes(_valid_job(key, createTime=12345)),
        "not-utf8": b'\xff\xfe{"state": "JOB_STATE_RUNNING"}',
        "state-object": job_bytes(_valid_job(key, state={"x": 1})),
    }


@dataclass
class BadTree:
    m: Manifest
    outside: Path
    unknown_field_key: tuple[str, str, str, str]
    truncated_dir: Path
    bad_name_dir: Path
    # Every bad entry made, for tests that delete them again.
    bad_paths: list[Path]
    # What the stats must count.
    invalid_status: int
    invalid_names: int
    outside_links: int

    def oracle(self) -> Oracle:
        return Oracle(self.m.status_dir, self.m.checkpoints_dir)


def make_bad_tree(root: Path) -> BadTree:
    """A generated tree plus every kind of bad input the stats count."""
    m = generate(root / "home", runs=40, checkpoints=8, seed=31)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    p, g, n, _ = o.jobs()[0].key
    job_dir = m.status_dir / p / g / n
    outside = root / "outside"
    # Invalid status.json files, each in a well-named run directory.
    broken = _broken((p, g, n, "x"))
    for case, raw in broken.items():
        _put_run(job_dir / f"broken-{case}", raw)
    # An unknown field (a newer conductor may add some): indexed, the field ignored.
    unknown_key = (p, g, n, "with-unknown-field")
    _put_run(job_dir / unknown_key[3], _valid_job(unknown_key, futureField={"nested": [1, 2]}, zzNew="x"))
    # Names that break the rule, at each level; each hides a valid-looking run.
    s = m.status_dir
    bad_names = [
        s / "Bad_Project" / "g" / "n" / "r1",
        s / p / "has space" / "n" / "r1",
        s / p / g / "-lead" / "r1",
        job_dir / "RUN-UPPER",
        job_dir / ("a" * 64),
    ]
    for d in bad_names:
        _put_run(d, _valid_job(("a", "b", "c", "d")))
    bad_paths = [job_dir / f"broken-{case}" for case in broken]
    bad_paths += [s / "Bad_Project", s / p / "has space", s / p / g / "-lead", *bad_names[3:]]
    # Not problems: hidden and in-progress names, stray files, an empty run directory.
    _put_run(s / ".hidden-project" / "g" / "n" / "r1", _valid_job(("a", "b", "c", "d")))
    (s / "README.txt").write_text("not a project\n")
    (job_dir / "empty-run").mkdir()
    # Links leading outside the root: a run dir, a project dir and a status.json.
    _put_run(outside / "run", _valid_job((p, g, n, "link-out")))
    _put_run(outside / "proj" / "g" / "n" / "r1", _valid_job(("linked-project", "g", "n", "r1")))
    (job_dir / "link-out").symlink_to(outside / "run")
    (s / "linked-project").symlink_to(outside / "proj")
    (job_dir / "status-link").mkdir()
    (job_dir / "status-link" / "status.json").symlink_to(outside / "run" / "status.json")
    bad_paths += [job_dir / "link-out", s / "linked-project", job_dir / "status-link"]
    # Checkpoints: a bad suffix, a bad project name, a link out; in-progress ones are not problems.
    c = m.checkpoints_dir
    cp, cg, cn, *_ = next(iter(o.checkpoints())).key
    for d in (c / cp / cg / cn / "Bad Suffix", c / "UPPER" / "g" / "n" / "s1"):
        d.mkdir(parents=True)
        (d / "model.bin").write_bytes(b"x" * 100)
    (outside / "ckpt").mkdir(parents=True)
    (outside / "ckpt" / "model.bin").write_bytes(b"y" * 100)
    (c / cp / cg / cn / "linked-ckpt").symlink_to(outside / "ckpt")
    bad_paths += [c / cp / cg / cn / "Bad Suffix", c / "UPPER", c / cp / cg / cn / "linked-ckpt"]
    return BadTree(
        m,
        outside,
        unknown_key,
        job_dir / "broken-truncated",
        job_dir / "RUN-UPPER",
        bad_paths,
        invalid_status=len(broken),
        invalid_names=len(bad_names) + 2,
        outside_links=4,
    )


def stats(v: InProcessViewer | SubprocessViewer) -> vpb.GetDashboardStatsResponse:
    return v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=10)


def key_of(job: job_pb2.Job) -> tuple[str, str, str, str]:
    return (job.project, job.group, job.name, job.run_id)


def assert_serving(v: InProcessViewer | SubprocessViewer, o: Oracle) -> None:
    """The viewer still answers, and (once caught up) its lists equal the brute-force scan."""

    def lists() -> tuple[list[Any], list[Any]]:
        got = v.stub.ListCheckpoints(vpb.ListCheckpointsRequest(page_size=1000), timeout=10).checkpoints
        return [key_of(j) for j in v.list_all()[0]], [
            (c.project, c.group, c.name, c.run_id, c.suffix) for c in got
        ]

    expected = ([r.key for r in o.jobs()], [c.key for c in o.checkpoints()])
    deadline = time.monotonic() + DEADLINE
    while lists() != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lists() == expected


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BadTree, InProcessViewer]]:
    t = make_bad_tree(tmp_path_factory.mktemp("viewer-bad"))
    with viewer_session(home=t.m.root) as v:
        yield t, v


# ------------------------------------------------------------- bad files


def test_bad_files_are_skipped_and_counted(bad: tuple[BadTree, InProcessViewer]) -> None:
    t, v = bad
    st = stats(v)
    assert (st.invalid_status_files, st.invalid_names, st.outside_links) == (
        t.invalid_status,
        t.invalid_names,
        t.outside_links,
    )
    o = t.oracle()
    assert st.total_runs == len(o.runs) == t.m.runs + 1  # the run with an unknown field
    assert (st.checkpoint_count, st.checkpoint_bytes) == o.ckpt_totals()
    assert_serving(v, o)
    listed = {key_of(j) for j in v.list_all()[0]}
    assert not any(k[0] in ("Bad_Project", "linked-project", ".hidden-project") for k in listed)
    assert not any(k[3].startswith("broken-") or k[3] in ("link-out", "status-link") for k in listed)


def test_unknown_fields_are_ignored(bad: tuple[BadTree, InProcessViewer]) -> None:
    t, v = bad
    p, g, n, r = t.unknown_field_key
    by_path = v.stub.GetJob(vpb.ViewerGetJobRequest(project=p, group=g, name=n, run_id=r), timeout=10)
    by_id = v.stub.GetJob(vpb.ViewerGetJobRequest(job_id=f"id-{r}"), timeout=10)
    expected = {
        k: val
        for k, val in t.oracle().runs[t.unknown_field_key].data.items()
        if k not in ("futureField", "zzNew")
    }
    assert json_format.MessageToDict(by_path) == expected
    assert json_format.MessageToDict(by_id) == expected
    listed = v.list_all(project=p, group=g, name=n, states=[S.JOB_STATE_SUCCEEDED])[0]
    assert t.unknown_field_key in {key_of(j) for j in listed}


NOT_A_JOB = {
    **_broken(("p", "g", "n", "r")),
    "exit-code-text": job_bytes(_valid_job(("p", "g", "n", "r"), exitCode="abc")),
    "spec-not-object": job_bytes(_valid_job(("p", "g", "n", "r"), spec="python train.py")),
    "revision-text": job_bytes(_valid_job(("p", "g", "n", "r"), revision="many")),
}


@pytest.mark.parametrize("case", sorted(NOT_A_JOB))
def test_a_status_json_that_is_not_a_job_is_skipped_and_counted(
    case: str, tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    m = generate(tmp_path / "home", runs=12, checkpoints=0, seed=41)
    run_dir = m.status_dir / "p" / "g" / "n" / "r"
    _put_run(run_dir, NOT_A_JOB[case])
    v = viewer_factory(home=m.root)
    st = stats(v)
    listed = {key_of(j) for j in v.list_all()[0]}
    assert ("p", "g", "n", "r") not in listed, f"a status.json that is not a Job ({case}) was indexed"
    assert st.invalid_status_files == 1 and st.total_runs == 12
    assert_serving(v, Oracle(m.status_dir, m.checkpoints_dir))


def test_a_status_json_that_is_a_directory(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    m = generate(tmp_path / "home", runs=12, checkpoints=0, seed=42)
    (m.status_dir / "p" / "g" / "n" / "r" / "status.json").mkdir(parents=True)
    v = viewer_factory(home=m.root)
    st = stats(v)
    assert st.total_runs == 12 and st.invalid_status_files == 1
    assert_serving(v, Oracle(m.status_dir, m.checkpoints_dir))


def test_fixing_and_breaking_files_updates_index_and_counts(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    t = make_bad_tree(tmp_path)
    v = viewer_factory(home=t.m.root)
    base = stats(v)
    assert base.invalid_status_files == t.invalid_status
    # The truncated file is rewritten whole: the run shows, one problem less.
    key = tuple(t.truncated_dir.parts[-4:])
    write_status(t.truncated_dir, _valid_job(key))  # type: ignore[arg-type]
    v.wait_for(
        lambda: (
            key in {key_of(j) for j in v.list_all()[0]}
            and stats(v).invalid_status_files == t.invalid_status - 1
        ),
        "the repaired run to show and the count to drop",
        DEADLINE,
    )
    # A good file of a live run (its directory watched) turns to garbage (written in place):
    # the index keeps what it had, and GetJob, finding the file unreadable, answers from the index.
    final = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
    victim = next(
        r for r in t.oracle().jobs() if r.job_id and r.key[3].startswith("2") and r.state not in final
    )
    (victim.path / "status.json").write_bytes(b'{"state": ')
    v.wait_for(
        lambda: stats(v).invalid_status_files == t.invalid_status, "the broken file to be counted", DEADLINE
    )
    assert victim.key in {key_of(j) for j in v.list_all()[0]}
    got = v.stub.GetJob(vpb.ViewerGetJobRequest(job_id=victim.job_id), timeout=10)
    assert json_format.MessageToDict(got) == victim.data
    # The badly named run directory is renamed to a good name: it shows, one problem less.
    good = t.bad_name_dir.with_name("run-upper")
    os.rename(t.bad_name_dir, good)
    write_status(good, _valid_job(tuple(good.parts[-4:])))  # type: ignore[arg-type]
    v.wait_for(
        lambda: tuple(good.parts[-4:]) in {key_of(j) for j in v.list_all()[0]}, "the renamed run", DEADLINE
    )
    v.wait_for(
        lambda: stats(v).invalid_names == t.invalid_names - 1,
        f"invalid_names to drop to {t.invalid_names - 1} (is {stats(v).invalid_names})",
        DEADLINE,
    )


def test_counts_drop_when_bad_entries_are_deleted(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    t = make_bad_tree(tmp_path)
    v = viewer_factory(home=t.m.root)
    assert stats(v).invalid_status_files == t.invalid_status
    # Delete every broken run, every badly named directory and every link out of the root.
    for path in t.bad_paths:
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path)

    def clean() -> bool:
        st = stats(v)
        return (st.invalid_status_files, st.invalid_names, st.outside_links) == (0, 0, 0)

    v.wait_for(clean, f"the problem counts to drop to zero (now {stats(v)})", DEADLINE)
    assert_serving(v, t.oracle())


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_bad_entries_added_later_are_skipped_and_counted(
    mode: str, tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    m = generate(tmp_path / "home", runs=30, checkpoints=6, seed=61)
    settings: dict[str, Any] = {"home": m.root, "watch": mode}
    if mode == "poll":
        settings["poll_interval"] = 0.2
    v = viewer_factory(**settings)
    assert stats(v).total_runs == 30
    o = Oracle(m.status_dir, m.checkpoints_dir)
    p, g, n, _ = o.jobs()[0].key
    s, outside = m.status_dir, tmp_path / "outside"
    _put_run(s / p / g / n / "broken-late", b'{"state": "JOB_STATE_RUNN')
    _put_run(s / "Late_Bad" / "g" / "n" / "r", _valid_job(("x", "g", "n", "r")))
    _put_run(s / p / g / "BadName" / "r", _valid_job(("x", "g", "n", "r")))
    _put_run(outside / "run", _valid_job((p, g, n, "late-link")))
    _put_run(outside / "proj" / "g" / "n" / "r", _valid_job(("late-proj", "g", "n", "r")))
    (s / p / g / n / "late-link").symlink_to(outside / "run")
    (s / "late-proj").symlink_to(outside / "proj")
    cp, cg, cn, *_ = next(iter(o.checkpoints())).key
    (outside / "ckpt").mkdir()
    (outside / "ckpt" / "model.bin").write_bytes(b"z" * 50)
    (m.checkpoints_dir / cp / cg / cn / "late-ckpt-link").symlink_to(outside / "ckpt")
    # A good run last: once it shows, everything before it has been seen.
    _put_run(s / p / g / n / "good-late", _valid_job((p, g, n, "good-late")))
    v.wait_for(
        lambda: (p, g, n, "good-late") in {key_of(j) for j in v.list_all()[0]}, "the good run", DEADLINE
    )
    listed = {key_of(j) for j in v.list_all()[0]}
    leaked = sorted(
        k for k in listed if k[3] in ("late-link", "broken-late") or k[0] in ("late-proj", "Late_Bad")
    )
    assert not leaked, f"runs reached through a bad entry were indexed: {leaked}"
    ckpts = v.stub.ListCheckpoints(vpb.ListCheckpointsRequest(page_size=1000), timeout=10).checkpoints
    assert "late-ckpt-link" not in {c.suffix for c in ckpts}
    want = (1, 2, 3)

    def counted() -> bool:
        st = stats(v)
        return (st.invalid_status_files, st.invalid_names, st.outside_links) == want

    v.wait_for(counted, f"the late bad entries to be counted as {want} (now {stats(v)})", DEADLINE)
    assert_serving(v, Oracle(m.status_dir, m.checkpoints_dir))


# ------------------------------------------------------ logs deleted mid-stream


class _Follower:
    """A followed StreamLogs read on a thread: chunks, and how it ended."""

    def __init__(self, v: InProcessViewer, job_id: str) -> None:
        self.chunks: list[job_pb2.LogChunk] = []
        self.error: grpc.RpcError | None = None
        self.done = threading.Event()
        self.call = v.stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=job_id, follow=True), timeout=30)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for chunk in self.call:
                self.chunks.append(chunk)
        except grpc.RpcError as err:
            self.error = err
        finally:
            self.done.set()

    def data(self) -> bytes:
        return b"".join(c.data for c in self.chunks)


def _running_with_log(o: Oracle) -> Run:
    return next(r for r in o.jobs(states=(S.JOB_STATE_RUNNING,)) if r.job_id and (r.log() or b"").strip())


@pytest.mark.parametrize("how", ["log-unlinked-then-run-ends", "run-dir-removed"])
def test_log_deleted_while_followed(
    how: str, tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    m = generate(tmp_path / "home", runs=40, checkpoints=0, seed=51)
    v = viewer_factory(home=m.root, feed_heartbeat=0.2)
    o = Oracle(m.status_dir, m.checkpoints_dir)
    run = _running_with_log(o)
    before = run.log() or b""
    f = _Follower(v, run.job_id)
    v.wait_for(lambda: f.data() == before, "the log so far", DEADLINE)
    if how == "log-unlinked-then-run-ends":
        (run.path / "output.log").unlink()
        time.sleep(0.5)
        assert not f.done.is_set(), "the stream ended while its run was still running"
        write_status(run.path, {**run.data, "state": "JOB_STATE_FAILED", "exitCode": 2})
    else:
        shutil.rmtree(run.path)
    assert f.done.wait(DEADLINE), "the followed stream did not end"
    assert f.data() == before, "bytes were invented or repeated after the log was deleted"
    if f.error is not None:
        assert f.error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), f.error
    else:
        assert f.chunks[-1].complete
        assert f.chunks[-1].state == S.JOB_STATE_FAILED and f.chunks[-1].exit_code == 2
    if how == "run-dir-removed":
        assert f.error is not None and f.error.code() == grpc.StatusCode.NOT_FOUND
    assert_serving(v, Oracle(m.status_dir, m.checkpoints_dir))


# ---------------------------------------------------------------- bad requests


def _code_and_fields(fn: Callable[[], Any]) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(grpc.RpcError) as err:
        result = fn()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    code = err.value.code()
    return code, bad_request_fields(err.value) if code == grpc.StatusCode.INVALID_ARGUMENT else []


def _first_token(fn: Callable[..., Any], req: Any) -> str:
    token = fn(req, timeout=10).next_page_token
    assert token, f"{type(req).__name__} gave no next_page_token: the tree is too small for this test"
    return token


def _tokens(v: InProcessViewer, o: Oracle) -> dict[str, str]:
    s = v.stub
    p, g, n = max({r.key[:3] for r in o.runs.values()}, key=lambda k: len(o.jobs(*k)))
    return {
        "jobs": _first_token(s.ListJobs, vpb.ViewerListJobsRequest(page_size=1)),
        "jobs-project": _first_token(s.ListJobs, vpb.ViewerListJobsRequest(page_size=1, project=p)),
        "runs": _first_token(s.ListJobRuns, vpb.ListJobRunsRequest(project=p, group=g, name=n, page_size=1)),
        "projects": _first_token(s.ListProjects, vpb.ListProjectsRequest(page_size=1)),
        "running": _first_token(
            s.ListRunningJobs, vpb.ListRunningJobsRequest(page_size=1, include_stale=True)
        ),
        "checkpoints": _first_token(s.ListCheckpoints, vpb.ListCheckpointsRequest(page_size=1)),
    }


def _list_calls(v: InProcessViewer, o: Oracle) -> dict[str, Callable[[str], Any]]:
    """Each list RPC with the filters its token above was made for, given a token."""
    s = v.stub
    p, g, n = max({r.key[:3] for r in o.runs.values()}, key=lambda k: len(o.jobs(*k)))
    return {
        "jobs": lambda t: s.ListJobs(vpb.ViewerListJobsRequest(page_size=1, page_token=t), timeout=10),
        "jobs-project": lambda t: s.ListJobs(
            vpb.ViewerListJobsRequest(page_size=1, project=p, page_token=t), timeout=10
        ),
        "runs": lambda t: s.ListJobRuns(
            vpb.ListJobRunsRequest(project=p, group=g, name=n, page_size=1, page_token=t), timeout=10
        ),
        "projects": lambda t: s.ListProjects(vpb.ListProjectsRequest(page_size=1, page_token=t), timeout=10),
        "running": lambda t: s.ListRunningJobs(
            vpb.ListRunningJobsRequest(page_size=1, include_stale=True, page_token=t), timeout=10
        ),
        "checkpoints": lambda t: s.ListCheckpoints(
            vpb.ListCheckpointsRequest(page_size=1, page_token=t), timeout=10
        ),
    }


def test_page_tokens_from_elsewhere_are_invalid_argument(bad: tuple[BadTree, InProcessViewer]) -> None:
    t, v = bad
    o = t.oracle()
    tokens = _tokens(v, o)
    calls = _list_calls(v, o)
    for name, call in calls.items():
        call(tokens[name])  # its own token works
        for other, token in tokens.items():
            if other == name:
                continue
            code, fields = _code_and_fields(functools.partial(call, token))
            assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), (name, other)
    assert_serving(v, o)


GARBAGE_TOKENS = [
    "!!!not-base64!!!",
    "abc",
    base64.urlsafe_b64encode(b"not json").decode(),
    base64.urlsafe_b64encode(b"[1, 2]").decode(),
    base64.urlsafe_b64encode(json.dumps({"f": "0" * 16, "p": [0, "a", "b", "c", "d"]}).encode()).decode(),
    "x" * 5000,
]


@pytest.mark.parametrize("token", GARBAGE_TOKENS, ids=lambda t: t[:12])
def test_garbage_page_tokens_are_invalid_argument(bad: tuple[BadTree, InProcessViewer], token: str) -> None:
    t, v = bad
    for name, call in _list_calls(v, t.oracle()).items():
        code, fields = _code_and_fields(functools.partial(call, token))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]), name


def _retoken(token: str, position: Any) -> str:
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        pytest.skip("page tokens are not base64 JSON here: nothing to tamper with")
    if not isinstance(body, dict) or "p" not in body:
        pytest.skip("page tokens carry no position field here: nothing to tamper with")
    body["p"] = position
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


TAMPERED_POSITIONS = [
    "x",
    7,
    {"a": 1},
    [1, 2],
    ["a", "b", "c", "d", "e"],
    [1.5, 2, "b", "c", "d"],
    [None, None, None, None, None],
]


@pytest.mark.parametrize("position", TAMPERED_POSITIONS, ids=lambda p: json.dumps(p)[:20])
def test_tampered_page_tokens_never_crash(bad: tuple[BadTree, InProcessViewer], position: Any) -> None:
    """A client edits the position inside a real token (tokens are not signed, so an edit of
    the right shape cannot be told from a real one): the answer is a page, or INVALID_ARGUMENT
    naming page_token, never an internal error."""
    t, v = bad
    o = t.oracle()
    tokens = _tokens(v, o)
    failures = []
    for name, call in _list_calls(v, o).items():
        forged = _retoken(tokens[name], position)
        try:
            call(forged)
        except grpc.RpcError as err:
            fields = bad_request_fields(err) if err.code() == grpc.StatusCode.INVALID_ARGUMENT else []
            if (err.code(), fields) != (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]):
                failures.append(f"{name}: {err.code().name} {err.details()!r}")
    assert not failures, failures
    assert_serving(v, o)


def test_a_conductor_page_token_is_refused(
    conductor: InProcessConductor, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    for i in range(3):
        conductor.wait_ended(conductor.submit(f"name: j{i}\ncommand: 'true'\n").id)
    token = conductor.stub.ListJobs(conductor_pb2.ListJobsRequest(page_size=1), timeout=10).next_page_token
    assert token
    v = viewer_factory(home=conductor.home)
    v.wait_for(lambda: len(v.list_all()[0]) == 3, "the conductor's runs")
    for call in (
        lambda: v.stub.ListJobs(vpb.ViewerListJobsRequest(page_size=1, page_token=token), timeout=10),
        lambda: v.stub.ListJobRuns(
            vpb.ListJobRunsRequest(project="default", group="default", name="j0", page_token=token),
            timeout=10,
        ),
    ):
        assert _code_and_fields(call) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])
    # And the other way round: a viewer token is no good to the conductor.
    vtoken = v.stub.ListJobs(vpb.ViewerListJobsRequest(page_size=1), timeout=10).next_page_token
    code, fields = _code_and_fields(
        lambda: conductor.stub.ListJobs(
            conductor_pb2.ListJobsRequest(page_size=1, page_token=vtoken), timeout=10
        )
    )
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_token"])


def _unknown_requests(o: Oracle) -> list[tuple[str, Any]]:
    c = next(iter(o.checkpoints()))
    p, g, n, *_ = c.key
    no_run: dict[str, Any] = {"project": "p", "group": "g", "name": "n", "run_id": "no-such-run"}
    return [
        ("GetJob", vpb.ViewerGetJobRequest(job_id="no-such-job")),
        ("GetJob", vpb.ViewerGetJobRequest(**no_run)),
        ("ReadLog", vpb.ReadLogRequest(job_id="no-such-job")),
        ("ReadLog", vpb.ReadLogRequest(**no_run)),
        ("TailLog", vpb.TailLogRequest(job_id="no-such-job")),
        ("TailLog", vpb.TailLogRequest(**no_run)),
        ("StreamLogs", vpb.ViewerStreamLogsRequest(job_id="no-such-job")),
        ("StreamLogs", vpb.ViewerStreamLogsRequest(follow=True, **no_run)),
        ("GetCheckpoint", vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix="no-such")),
        ("GetCheckpoint", vpb.GetCheckpointRequest(project="x", group="y", name="z", suffix="s")),
        ("GetLatestCheckpoint", vpb.GetLatestCheckpointRequest(project="x", group="y", name="z")),
        ("GetCheckpointConfig", vpb.GetCheckpointConfigRequest(project=p, group=g, name=n, suffix="no-such")),
        ("GetCheckpointConfig", vpb.GetCheckpointConfigRequest(project="x", group="y", name="z")),
        (
            "GetCheckpointJobSpec",
            vpb.GetCheckpointJobSpecRequest(project=p, group=g, name=n, suffix="no-such"),
        ),
    ]


def test_unknown_runs_and_checkpoints_are_not_found(bad: tuple[BadTree, InProcessViewer]) -> None:
    t, v = bad
    o = t.oracle()
    for method, req in _unknown_requests(o):
        code, _ = _code_and_fields(functools.partial(getattr(v.stub, method), req, timeout=10))
        assert code == grpc.StatusCode.NOT_FOUND, (method, req)
    # A run that is in the tree but broken or badly named is unknown too, not an error of another kind.
    p, g, n, _ = t.truncated_dir.parts[-4:]
    code, _ = _code_and_fields(
        lambda: v.stub.ReadLog(vpb.ReadLogRequest(project=p, group=g, name=n, run_id="broken-empty"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert_serving(v, o)


BAD_NAME_REQUESTS: list[tuple[str, Any, str]] = [
    ("GetJob", vpb.ViewerGetJobRequest(project="../etc", group="g", name="n", run_id="r"), "project"),
    ("GetJob", vpb.ViewerGetJobRequest(project="p", group="G", name="n", run_id="r"), "group"),
    ("GetJob", vpb.ViewerGetJobRequest(project="p", group="g", name="a/b", run_id="r"), "name"),
    ("GetJob", vpb.ViewerGetJobRequest(project="p", group="g", name="n", run_id=".."), "run_id"),
    ("GetJob", vpb.ViewerGetJobRequest(project="p", group="g", name="n"), "run_id"),
    ("GetJob", vpb.ViewerGetJobRequest(), "job_id"),
    ("ListJobRuns", vpb.ListJobRunsRequest(group="g", name="n"), "project"),
    ("ListJobRuns", vpb.ListJobRunsRequest(project="p", group="x y", name="n"), "group"),
    ("ListJobRuns", vpb.ListJobRunsRequest(project="p", group="g", name="n/../../x"), "name"),
    ("GetCheckpoint", vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix="../x"), "suffix"),
    ("GetCheckpoint", vpb.GetCheckpointRequest(project="p", group="g", name="n"), "suffix"),
    ("GetCheckpoint", vpb.GetCheckpointRequest(project="p", group="g", name="UP", suffix="s"), "name"),
    ("GetCheckpoint", vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix="r/s/x"), "suffix"),
    ("GetCheckpoint", vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix="r/../s"), "suffix"),
    ("GetCheckpoint", vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix="/s"), "suffix"),
    (
        "GetCheckpoint",
        vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix="x" * 5000),
        "suffix",
    ),
    (
        "GetLatestCheckpoint",
        vpb.GetLatestCheckpointRequest(project="p", group="g", name="n", run_id=".."),
        "run_id",
    ),
    (
        "GetCheckpointJobSpec",
        vpb.GetCheckpointJobSpecRequest(project="p", group="g", name="n", suffix="R1/step-1"),
        "suffix",
    ),
    ("GetLatestCheckpoint", vpb.GetLatestCheckpointRequest(project="a/b", group="g", name="n"), "project"),
    ("GetCheckpointConfig", vpb.GetCheckpointConfigRequest(project="p", group="g", name=".."), "name"),
    (
        "GetCheckpointConfig",
        vpb.GetCheckpointConfigRequest(project="p", group="g", name="n", suffix=".x"),
        "suffix",
    ),
    ("GetCheckpointJobSpec", vpb.GetCheckpointJobSpecRequest(project="p", group="-x", name="n"), "group"),
    ("ReadLog", vpb.ReadLogRequest(project="p", group="g", name="n", run_id="../../etc"), "run_id"),
    ("TailLog", vpb.TailLogRequest(project="P", group="g", name="n", run_id="r"), "project"),
    ("StreamLogs", vpb.ViewerStreamLogsRequest(project="p", group="g", name="x" * 64, run_id="r"), "name"),
]


@pytest.mark.parametrize(("method", "req", "field"), BAD_NAME_REQUESTS, ids=lambda x: str(x)[:40])
def test_bad_names_in_requests_are_invalid_argument(
    bad: tuple[BadTree, InProcessViewer], method: str, req: Any, field: str
) -> None:
    _, v = bad
    code, fields = _code_and_fields(lambda: getattr(v.stub, method)(req, timeout=10))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


def test_a_long_ref_is_refused_without_being_quoted(bad: tuple[BadTree, InProcessViewer]) -> None:
    _, v = bad
    ref = "a" * 60 + "/" + "b" * 3000
    with pytest.raises(grpc.RpcError) as err:
        v.stub.GetCheckpoint(
            vpb.GetCheckpointRequest(project="p", group="g", name="n", suffix=ref), timeout=10
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a" * 60 not in (err.value.details() or "") and len(err.value.details() or "") < 200


def test_bad_numbers_in_requests_are_invalid_argument(bad: tuple[BadTree, InProcessViewer]) -> None:
    t, v = bad
    o = t.oracle()
    run = next(r for r in o.jobs() if r.job_id and r.log())
    size = len(run.log() or b"")
    jid = run.job_id
    cases: list[tuple[str, Any, str]] = [
        ("ListJobs", vpb.ViewerListJobsRequest(page_size=-1), "page_size"),
        ("ListProjects", vpb.ListProjectsRequest(page_size=-5), "page_size"),
        ("ListCheckpoints", vpb.ListCheckpointsRequest(page_size=-1), "page_size"),
        ("ListRecentJobs", vpb.ListRecentJobsRequest(hours=-1), "hours"),
        ("ListRecentJobs", vpb.ListRecentJobsRequest(limit=-1), "limit"),
        ("ReadLog", vpb.ReadLogRequest(job_id=jid, offset=-1), "offset"),
        ("ReadLog", vpb.ReadLogRequest(job_id=jid, limit=-5), "limit"),
        ("ReadLog", vpb.ReadLogRequest(job_id=jid, offset=size + 1), "offset"),
        ("TailLog", vpb.TailLogRequest(job_id=jid, tail_lines=-1), "tail_lines"),
        ("StreamLogs", vpb.ViewerStreamLogsRequest(job_id=jid, offset=-1), "offset"),
        ("StreamLogs", vpb.ViewerStreamLogsRequest(job_id=jid, tail_lines=-3), "tail_lines"),
        (
            "ListRunningJobs",
            vpb.ListRunningJobsRequest(stale_after=duration_pb2.Duration(seconds=-5)),
            "stale_after",
        ),
    ]
    failures = []
    for method, req, field in cases:
        try:
            got = _code_and_fields(functools.partial(getattr(v.stub, method), req, timeout=10))
        except pytest.fail.Exception:
            failures.append(f"{method}({req}): accepted")
            continue
        if got != (grpc.StatusCode.INVALID_ARGUMENT, [field]):
            failures.append(f"{method}({req}): {got}")
    assert not failures, failures
    assert_serving(v, o)


# ------------------------------------------------------------ never writes


def exercise_every_rpc(stub: Any, o: Oracle) -> set[str]:
    """Call every Viewer RPC (successes and refusals) and check a few answers; the methods called."""
    called: set[str] = set()

    def call(method: str, req: Any, *, fails: grpc.StatusCode | None = None) -> Any:
        called.add(method)
        fn = getattr(stub, method)
        try:
            out = fn(req, timeout=10)
            if method in ("StreamLogs", "StreamLog"):
                out = list(out)
        except grpc.RpcError as err:
            assert fails is not None and err.code() == fails, (method, req, err)
            return None
        assert fails is None, f"{method} should have failed with {fails}"
        return out

    runs = o.jobs()
    jobs: list[job_pb2.Job] = []
    token = ""
    while True:
        resp = call("ListJobs", vpb.ViewerListJobsRequest(page_size=7, page_token=token))
        jobs.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            break
    assert [key_of(j) for j in jobs] == [r.key for r in runs]
    call("ListJobs", vpb.ViewerListJobsRequest(states=[S.JOB_STATE_RUNNING], project=runs[0].key[0]))
    call("ListJobs", vpb.ViewerListJobsRequest(page_token="garbage"), fails=grpc.StatusCode.INVALID_ARGUMENT)
    for r in runs[::5]:
        p, g, n, rid = r.key
        if r.job_id:
            call("GetJob", vpb.ViewerGetJobRequest(job_id=r.job_id))
        call("GetJob", vpb.ViewerGetJobRequest(project=p, group=g, name=n, run_id=rid))
        call("ListJobRuns", vpb.ListJobRunsRequest(project=p, group=g, name=n))
        call("ReadLog", vpb.ReadLogRequest(project=p, group=g, name=n, run_id=rid))
        call("TailLog", vpb.TailLogRequest(project=p, group=g, name=n, run_id=rid, tail_lines=3))
        call("StreamLogs", vpb.ViewerStreamLogsRequest(project=p, group=g, name=n, run_id=rid))
        call("StreamLog", vpb.ViewerStreamLogsRequest(project=p, group=g, name=n, run_id=rid))
        if r.state in (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED):
            chunks = call(
                "StreamLogs", vpb.ViewerStreamLogsRequest(project=p, group=g, name=n, run_id=rid, follow=True)
            )
            assert chunks[-1].complete
    call("GetJob", vpb.ViewerGetJobRequest(job_id="no-such"), fails=grpc.StatusCode.NOT_FOUND)
    call("GetJob", vpb.ViewerGetJobRequest(project="../x", group="g", name="n", run_id="r"),
         fails=grpc.StatusCode.INVALID_ARGUMENT)  # fmt: skip
    call("ListProjects", vpb.ListProjectsRequest(page_size=1))
    call("ListRunningJobs", vpb.ListRunningJobsRequest(include_stale=True))
    call("ListRunningJobs", vpb.ListRunningJobsRequest(stale_after=duration_pb2.Duration(seconds=3600)))
    call("ListRecentJobs", vpb.ListRecentJobsRequest(hours=48, limit=10))
    call("GetDashboardStats", vpb.GetDashboardStatsRequest())
    call("GetDashboardStats", vpb.GetDashboardStatsRequest(project=runs[0].key[0]))
    ckpts = call("ListCheckpoints", vpb.ListCheckpointsRequest()).checkpoints
    assert [(c.project, c.group, c.name, c.run_id, c.suffix) for c in ckpts] == [
        c.key for c in o.checkpoints()
    ]
    for c in o.checkpoints():
        p, g, n, run_id, _ = c.key
        if not o.addressable(c):
            call("GetCheckpoint", vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=c.ref),
                 fails=grpc.StatusCode.INVALID_ARGUMENT)  # fmt: skip
            continue
        call("GetCheckpoint", vpb.GetCheckpointRequest(project=p, group=g, name=n, suffix=c.ref))
        call("GetLatestCheckpoint", vpb.GetLatestCheckpointRequest(project=p, group=g, name=n))
        call("GetLatestCheckpoint", vpb.GetLatestCheckpointRequest(project=p, group=g, name=n, run_id=run_id))
        call("ListCheckpoints", vpb.ListCheckpointsRequest(project=p, group=g, name=n, run_id=run_id))
        where = {"project": p, "group": g, "name": n, "suffix": c.ref}
        call("GetCheckpointConfig", vpb.GetCheckpointConfigRequest(**where),
             fails=None if c.config_file else grpc.StatusCode.NOT_FOUND)  # fmt: skip
        call("GetCheckpointJobSpec", vpb.GetCheckpointJobSpecRequest(**where),
             fails=None if c.has_job_spec else grpc.StatusCode.NOT_FOUND)  # fmt: skip
        call("GetCheckpointStats", vpb.GetCheckpointStatsRequest(project=p, group=g, name=n))
    call("GetCheckpointStats", vpb.GetCheckpointStatsRequest())
    # A followed stream of a running job, given up by the client.
    running = next(r for r in runs if r.state == S.JOB_STATE_RUNNING and r.job_id and r.log())
    stream = stub.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=running.job_id, follow=True), timeout=10)
    next(stream)
    stream.cancel()
    return called


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: type, mode, size, mtime, ctime, inode, links, and content hash or target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                extra: Any = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            else:
                extra = None
            out[os.path.relpath(path, root)] = (
                st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_nlink, extra,
            )  # fmt: skip
    return out


class WriteWatch:
    """Our own inotify watch on every directory of a tree: writes, creates, deletes, moves, attributes."""

    MASK = (
        F.MODIFY | F.ATTRIB | F.CLOSE_WRITE | F.CREATE | F.DELETE | F.DELETE_SELF
        | F.MOVED_FROM | F.MOVED_TO | F.MOVE_SELF
    )  # fmt: skip

    def __init__(self, root: Path) -> None:
        self.inotify = INotify(nonblocking=True)
        self.dirs: dict[int, str] = {}
        for dirpath, _, _ in os.walk(root):
            self.dirs[self.inotify.add_watch(dirpath, self.MASK)] = dirpath

    def events(self) -> list[str]:
        found = []
        for ev in self.inotify.read(timeout=0):
            flags = "|".join(f.name for f in F.from_mask(ev.mask))
            found.append(f"{flags} {os.path.join(self.dirs.get(ev.wd, '?'), ev.name)}")
        return found

    def close(self) -> None:
        self.inotify.close()


def test_the_viewer_never_writes(tmp_path: Path) -> None:
    t = make_bad_tree(tmp_path)
    root = t.m.root
    o = t.oracle()
    before = snapshot(root)
    outside_before = snapshot(t.outside)
    watch, watch_outside = WriteWatch(root), WriteWatch(t.outside)
    try:
        with viewer_session(home=root, watch="inotify") as v:
            called = exercise_every_rpc(v.stub, o)
            v.reconcile()
            called |= exercise_every_rpc(v.stub, o)
        with viewer_session(home=root, watch="poll", poll_interval=0.1) as v:
            time.sleep(0.3)
            called |= exercise_every_rpc(v.stub, o)
        events = watch.events() + watch_outside.events()
    finally:
        watch.close()
        watch_outside.close()
    assert called == {m.name for m in VIEWER.methods}, "some RPC was not exercised"
    assert events == [], f"something wrote into the tree while the viewer served it: {events}"
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"paths changed while the viewer served: {changed[:10]}"
    assert snapshot(t.outside) == outside_before


def test_the_viewer_serves_a_read_only_mount(tmp_path: Path) -> None:
    reason = can_mount_read_only()
    if reason is not None:
        pytest.skip(reason)
    t = make_bad_tree(tmp_path)
    root = t.m.root
    o = t.oracle()
    before = snapshot(root)
    v = SubprocessViewer(root, tmp_path / "viewer.log", read_only=True).start()
    try:
        called = exercise_every_rpc(v.stub, o)
        assert called == {m.name for m in VIEWER.methods}
        st = stats(v)
        assert (st.invalid_status_files, st.invalid_names, st.outside_links) == (
            t.invalid_status,
            t.invalid_names,
            t.outside_links,
        )
        assert st.total_runs == len(o.runs)
        # Changes made through a writable view of the same files still show through the read-only one.
        run = next(r for r in o.jobs(states=(S.JOB_STATE_RUNNING,)) if r.job_id)
        write_status(run.path, {**run.data, "state": "JOB_STATE_SUCCEEDED", "exitCode": 0})
        v.wait_for(
            lambda: run.key in {key_of(j) for j in v.list_all(states=[S.JOB_STATE_SUCCEEDED])[0]},
            "a change made outside the read-only mount",
        )
        assert v.proc is not None and v.proc.poll() is None
    finally:
        v.stop()
    log = (tmp_path / "viewer.log").read_text(errors="replace")
    assert "Read-only file system" not in log, log[-2000:]
    after = snapshot(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    # Only what the test itself rewrote: the status file, and so its directory.
    rel = run.path.relative_to(root)
    assert changed == sorted([str(rel), str(rel / "status.json")])
