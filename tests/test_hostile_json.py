"""JSON from jobs and the disk is bounded (issue 15, items 1 and 2).

Every reader of JSON that a job or the disk hands Baton (result.json, the
registry's rows and runtime notes, status.json in the viewer's cold scan,
its parallel scan workers, its polling and inotify updates and its
reconciliation, a checkpoint's config and job spec) refuses what is too deep
(32 levels) or too large, says why, and goes on: the job still ends with its
true state, the conductor still starts, the viewer still starts and indexes
everything else, and a bad file is counted in ``invalid_status_files``.
"""

from __future__ import annotations

import os
import shlex
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from baton.viewer_api import parallel_scan
from tests.checks import error_info
from tests.harness import InProcessConductor
from tests.procs import PY, spec_yaml
from tests.treegen import format_ts, job_bytes
from tests.viewer_harness import InProcessViewer

S = job_pb2
Factory = Callable[..., InProcessConductor]
# 100,000 levels in 400 KB: past every parser's stack, under every size cap.
DEEP = b'{"a":' * 40_000 + b"1" + b"}" * 40_000
DEEP_LIST = b"[" * 200_000 + b"]" * 200_000
HUGE = 200 << 20


def _status(key: tuple[str, str, str, str]) -> bytes:
    p, g, n, r = key
    now = time.time_ns() // 1000
    return job_bytes({
        "id": f"id-{r}", "project": p, "group": g, "name": n, "runId": r,
        "state": "JOB_STATE_SUCCEEDED", "createTime": format_ts(now - 5_000_000), "exitCode": 0,
    })  # fmt: skip


def _put(root: Path, key: tuple[str, str, str, str], raw: bytes | None = None) -> Path:
    run = root.joinpath(*key)
    run.mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_bytes(_status(key) if raw is None else raw)
    return run


def _huge(root: Path, key: tuple[str, str, str, str]) -> Path:
    """A 200 MB status.json that takes no disk (sparse): it must never be read whole."""
    run = root.joinpath(*key)
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "status.json", "wb") as f:
        f.write(b'{"id": "')
        f.truncate(HUGE)
    return run


def _listed(v: InProcessViewer) -> set[str]:
    return {j.run_id for j in v.list_all()[0]}


def _invalid(v: InProcessViewer) -> int:
    return v.stub.GetDashboardStats(vpb.GetDashboardStatsRequest(), timeout=10).invalid_status_files


# ------------------------------------------------------------------ viewer


@pytest.mark.parametrize("mode", ["inotify", "poll", "parallel"])
def test_a_deep_or_huge_status_json_is_counted_and_skipped_by_every_index_path(
    mode: str,
    tmp_path: Path,
    viewer_factory: Callable[..., InProcessViewer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status = tmp_path / "status"
    for i in range(3):
        _put(status, ("p", f"g{i}", "n", f"good{i}"))
    # There at start: the cold scan (in scan worker processes for "parallel").
    _put(status, ("p", "g0", "n", "deep-at-start"), DEEP)
    _put(status, ("p", "g1", "n", "deep-list"), DEEP_LIST)
    _huge(status, ("p", "g2", "n", "huge-at-start"))
    settings: dict[str, Any] = {"status_dir": status, "checkpoints_dir": tmp_path / "ckpt"}
    if mode == "poll":
        settings.update(watch="poll", poll_interval=0.2)
    if mode == "parallel":
        monkeypatch.setattr(parallel_scan, "PARALLEL_SCAN_MIN_RUNS", 1)
        settings.update(scan_workers=2)
    began = time.monotonic()
    v = viewer_factory(**settings)
    started = time.monotonic() - began
    assert _listed(v) == {"good0", "good1", "good2"}
    assert _invalid(v) == 3

    # Arriving while it runs, in one batch with a good run: the good one is not dropped.
    _put(status, ("p", "g0", "n", "deep-live"), DEEP)
    _huge(status, ("p", "g1", "n", "huge-live"))
    _put(status, ("p", "g1", "n", "good-live"))
    v.wait_for(lambda: "good-live" in _listed(v), "the good run that came with the bad ones", timeout=10)
    v.wait_for(lambda: _invalid(v) == 5, "both new bad files counted", timeout=10)
    # Reconciliation: the same answer, and no failure.
    began = time.monotonic()
    v.reconcile()
    reconciled = time.monotonic() - began
    assert _listed(v) == {"good0", "good1", "good2", "good-live"} and _invalid(v) == 5
    # Single-run reads of the bad ones: refused, not an internal error.
    for run in ("deep-at-start", "huge-live"):
        with pytest.raises(grpc.RpcError) as err:
            v.stub.GetJob(vpb.ViewerGetJobRequest(project="p", group="g0", name="n", run_id=run), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    print(f"\n{mode}: started in {started:.2f} s, reconciled in {reconciled:.2f} s with two 200 MB files")
    assert started < 20 and reconciled < 10


def _checkpoint(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    path = root / "p" / "g" / "n" / "s1"
    path.mkdir(parents=True)
    for name, raw in files.items():
        (path / name).write_bytes(raw)
    return {"project": "p", "group": "g", "name": "n", "suffix": "s1"}


BOMB = b"a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
    f"*a{i - 1}, *a{i - 1}]\n".encode()
    for i in range(1, 6)
)


@pytest.mark.parametrize(
    ("files", "rpc", "words"),
    [
        ({"job.json": DEEP}, "GetCheckpointJobSpec", "nests deeper than 32"),
        ({"config.json": DEEP_LIST}, "GetCheckpointConfig", "nests deeper than 32"),
        ({"config.yaml": b"a: " + b"[" * 100 + b"]" * 100}, "GetCheckpointConfig", "nests deeper"),
        ({"config.yaml": b"secret-token-9c1: [unclosed\n"}, "GetCheckpointConfig", "not valid YAML (line"),
        ({"config.yaml": BOMB}, "GetCheckpointConfig", "more than 1000000 values"),
    ],
    ids=["deep-job-json", "deep-config-json", "deep-config-yaml", "bad-yaml-unquoted", "alias-bomb"],
)
def test_a_checkpoint_file_that_is_too_deep_or_invalid_is_refused_without_quoting_it(
    files: dict[str, bytes],
    rpc: str,
    words: str,
    tmp_path: Path,
    viewer_factory: Callable[..., InProcessViewer],
) -> None:
    ref = _checkpoint(tmp_path / "ckpt", files)
    v = viewer_factory(status_dir=tmp_path / "status", checkpoints_dir=tmp_path / "ckpt")
    req = vpb.GetCheckpointJobSpecRequest if rpc == "GetCheckpointJobSpec" else vpb.GetCheckpointConfigRequest
    with pytest.raises(grpc.RpcError) as err:
        getattr(v.stub, rpc)(req(**ref), timeout=20)
    exc = err.value
    assert (exc.code(), error_info(exc).reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHECKPOINT_FILE_INVALID",
    )
    assert words in exc.details() and "secret-token" not in exc.details(), exc.details()
    assert len(exc.details()) < 200


# --------------------------------------------------------------- conductor


def _writes_result(content: str) -> str:
    """A job command that writes ``content`` (Python expression for a str) to BATON_RESULT_FILE."""
    code = f"import os; open(os.environ['BATON_RESULT_FILE'], 'w').write({content})"
    return f"{PY} -c {shlex.quote(code)}"


def test_every_bad_result_json_is_refused_with_a_reason_and_the_job_ends_as_it_did(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    c = conductor_factory(home=home, max_running=1)
    cases = {
        "deep-1000": ("'{\"a\":' * 999 + '{}' + '}' * 999", "nests deeper than 32 levels"),
        "deep-60": ("'{\"a\":' * 59 + '{}' + '}' * 59", "nests deeper than 32 levels"),
        "list-60": ("'{\"a\":' + '[' * 59 + ']' * 59 + '}'", "nests deeper than 32 levels"),
        "big": ("'{\"a\": \"' + 'x' * 70000 + '\"}'", "is larger than 64 KiB"),
    }
    ids = {
        name: c.submit(spec_yaml(name=name, command=_writes_result(expr))).id
        for name, (expr, _) in cases.items()
    }
    # A FIFO as result.json: opening it for reading would block the conductor's reader for good.
    fifo = c.submit(spec_yaml(name="fifo", command='mkfifo "$BATON_RESULT_FILE"')).id
    ok = c.submit(spec_yaml(name="ok", command=_writes_result('\'{"loss": {"v": [1, 2]}}\''))).id
    held = c.submit(spec_yaml(name="held", command="sleep 60")).id
    for name, (_, words) in cases.items():
        job = c.wait_ended(ids[name], timeout=20)
        assert (job.state, job.exit_code) == (S.JOB_STATE_SUCCEEDED, 0), (name, job.reason)
        assert f"result dropped: result.json {words}" in job.reason and not job.result.fields, (
            name,
            job.reason,
        )
    job = c.wait_ended(fifo, timeout=20)
    assert job.state == S.JOB_STATE_SUCCEEDED and "result.json is not a regular file" in job.reason, (
        job.reason
    )
    assert (
        c.wait_ended(ok, timeout=20)
        .result.fields["loss"]
        .struct_value.fields["v"]
        .list_value.values[1]
        .number_value
        == 2
    )
    # The slot was released every time: the last job runs, and Cancel answers.
    c.wait_for(held, "running", timeout=20)
    c.stub.CancelJob(pb.CancelJobRequest(job_id=held), timeout=10)
    assert c.wait_ended(held, timeout=20).state == S.JOB_STATE_CANCELLED
    listed = c.stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10)
    assert len(listed.jobs) == len(cases) + 3
    # And a new conductor on the same home starts and lists them all.
    c.stop()
    again = conductor_factory(home=home)
    assert len(again.stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10).jobs) == len(cases) + 3


def test_a_damaged_registry_never_blocks_start_up_each_bad_row_is_set_aside_and_counted(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    c = conductor_factory(home=home, max_running=10)
    names = ["blob", "deep-notes", "list-notes", "running", "fine"]
    ids = {}
    for name in names:
        command = "sleep 60" if name in ("running", "deep-notes") else "echo hi"
        ids[name] = c.submit(spec_yaml(name=name, command=command)).id
    for name in ("blob", "list-notes", "fine"):
        c.wait_ended(ids[name], timeout=20)
    for name in ("running", "deep-notes"):
        c.wait_for(ids[name], lambda j: j.external_id != "", timeout=20)
    revision = c.get(ids["fine"]).revision
    c.stop()
    with sqlite3.connect(home / "state" / "registry.db") as db:
        # What a damaged file or a hand edit leaves: an undecodable Job, runtime notes
        # nested 100,000 deep (a running job's and an ended one's), a damaged event.
        db.execute("UPDATE jobs SET job = ? WHERE id = ?", (b"\xff" * 40, ids["blob"]))
        db.execute("UPDATE jobs SET runtime = ? WHERE id = ?", (DEEP.decode(), ids["deep-notes"]))
        db.execute("UPDATE jobs SET runtime = ? WHERE id = ?", (DEEP_LIST.decode(), ids["list-notes"]))
        db.execute("UPDATE events SET job = ? WHERE revision = ?", (b"\xff" * 40, revision))
    began = time.monotonic()
    again = conductor_factory(home=home, max_running=10)
    took = time.monotonic() - began
    listed = {j.id for j in again.stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=10).jobs}
    assert listed == {ids[n] for n in names if n != "blob"}
    # A snapshot, sent on as stored, leaves the undecodable row out as the list does.
    snapshot: list[str] = []
    for response in again.stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=10):
        snapshot += [e.job.id for e in response.events if e.type == S.JOB_EVENT_TYPE_SNAPSHOT]
        if response.events[-1].type == S.JOB_EVENT_TYPE_SNAPSHOT_END:
            break
    assert sorted(snapshot) == sorted(listed)
    # An ended job's row is read when asked for (a start reads live ones only):
    # the list above came across the damaged one.
    info = again.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert info.damaged_registry_rows == 1
    # The running job whose notes cannot be read is set aside as FAILED, saying why.
    failed = again.wait_ended(ids["deep-notes"], timeout=20)
    assert failed.state == S.JOB_STATE_FAILED and "runtime notes are damaged" in failed.reason, failed.reason
    assert again.wait_for(ids["running"], "running", timeout=20)
    # A watcher catching up through the damaged event still gets every revision, in order.
    stream = again.stub.WatchJobs(pb.WatchJobsRequest(since_revision=revision - 1), timeout=5)
    first = next(iter(stream))
    stream.cancel()
    assert first.events[0].revision == revision and not first.events[0].HasField("job")
    print(f"\nrestart over a damaged registry: {took:.2f} s, {info.damaged_registry_rows} row set aside")
    again.stub.CancelJob(pb.CancelJobRequest(job_id=ids["running"]), timeout=10)
    assert os.path.exists(home / "state" / "registry.db")
