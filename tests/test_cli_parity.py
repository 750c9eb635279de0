"""Issue 8's verbs: health, steps, checkpoints rm, clear, info, for people and scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.client import exitcodes
from baton.client.cli import main
from tests.services import Stack, spec, stack


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("cli8") / "home", max_running=4) as s:
        yield s


def run(s: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--conductor", s.address, "--viewer", s.viewer_address, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(s: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(s, capsys, "--json", *argv)
    assert code == exitcodes.OK, err
    return json.loads(out)


def submit(s: Stack, tmp_path: Path, name: str, command: str, **fields: Any) -> str:
    return s.conductor.submit(spec(name, command, **fields)).id


def test_health_of_a_running_job_and_after_it_ends(
    services: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    job_id = submit(services, tmp_path, "healthy", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    job = services.conductor.wait_for(job_id, lambda j: j.external_id != "")
    doc = as_json(services, capsys, "health", job_id)
    assert doc["hasProcess"] is True and doc["alive"] is True
    assert int(doc["pid"]) == int(job.external_id) and doc["processCount"] >= 1
    code, out, _ = run(services, capsys, "health", job_id)
    assert code == exitcodes.OK and f"{job.external_id} (alive)" in out and "RUNNING" in out
    gate.touch()
    services.conductor.wait_ended(job_id)
    doc = as_json(services, capsys, "health", job_id)
    assert doc["hasProcess"] is False and "no process" in doc["detail"]
    code, _, err = run(services, capsys, "health", "no-such-job")
    assert code == exitcodes.NOT_FOUND and "no-such-job" in err


def test_steps_table_one_step_and_out_of_range(
    services: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    steps = [
        {"name": "fetch", "command": "echo fetched-1; echo fetched-2"},
        {"name": "train", "command": "echo trained"},
        {"name": "report", "command": "echo reported"},
    ]
    job_id = services.conductor.submit(yaml.safe_dump({"name": "three", "steps": steps})).id
    services.conductor.wait_ended(job_id)
    code, out, _ = run(services, capsys, "steps", job_id)
    assert code == exitcodes.OK
    for name in ("fetch", "train", "report"):
        assert name in out
    assert out.count("SUCCEEDED") == 3
    doc = as_json(services, capsys, "steps", job_id)
    assert [s["name"] for s in doc["steps"]] == ["fetch", "train", "report"]
    code, out, _ = run(services, capsys, "steps", job_id, "1", "--tail", "5")
    assert code == exitcodes.OK and "fetched-1\nfetched-2" in out and "trained" not in out
    doc = as_json(services, capsys, "steps", job_id, "2", "--tail", "5")
    assert doc["step"]["name"] == "train"
    code, _, err = run(services, capsys, "--json", "steps", job_id, "9")
    assert code == exitcodes.USAGE
    assert json.loads(err)["error"]["fieldViolations"][0]["field"] == "step"


def test_checkpoints_rm_refused_while_running_then_removes_exactly_those(
    services: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = services.home / "checkpoints" / "proj" / "default" / "keeper"
    for suffix in ("c1", "c2", "c3"):
        (base / suffix).mkdir(parents=True)
        (base / suffix / "model.bin").write_bytes(b"x" * 100)
    other = services.home / "checkpoints" / "proj" / "default" / "other" / "c1"
    other.mkdir(parents=True)
    gate = tmp_path / "gate"
    job_id = submit(
        services, tmp_path, "keeper", f"while [ ! -e {gate} ]; do sleep 0.05; done", project="proj"
    )
    services.conductor.wait_for(job_id, "running")
    code, _, err = run(services, capsys, "checkpoints", "rm", "proj/default/keeper")
    assert code == exitcodes.WRONG_STATE and "RUNNING" in err
    # The plain checkpoints are all there (beside the running job's own directory).
    assert sorted(p.name for p in base.iterdir() if p.name != job_id) == ["c1", "c2", "c3"]
    gate.touch()
    services.conductor.wait_ended(job_id)
    doc = as_json(services, capsys, "checkpoints", "rm", "proj/default/keeper", "c2")
    assert int(doc["deletedCount"]) == 1 and int(doc["deletedBytes"]) == 100
    code, out, _ = run(services, capsys, "checkpoints", "rm", "proj/default/keeper")
    assert code == exitcodes.OK and "removed 2 checkpoint(s)" in out
    assert not any(base.iterdir()) and other.is_dir()


def test_clear_and_info(services: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    failed = submit(services, tmp_path, "doomed", "exit 3", project="clearing")
    ok = submit(services, tmp_path, "fine", "true", project="clearing")
    for job_id in (failed, ok):
        services.conductor.wait_ended(job_id)
    gate = tmp_path / "gate"
    running = submit(services, tmp_path, "busy", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    services.conductor.wait_for(running, "running")
    doc = as_json(services, capsys, "info")
    assert doc["runningJobs"] >= 1 and int(doc["rssBytes"]) > 0 and doc["executors"][0]["name"] == "local"
    code, out, _ = run(services, capsys, "info")
    assert code == exitcodes.OK and "local (suspend, checkpoint)" in out
    time.sleep(1.1)
    doc = as_json(
        services, capsys, "clear", "--state", "failed", "--project", "clearing", "--older-than", "1s"
    )
    assert doc["jobIds"] == [failed]
    code, out, _ = run(services, capsys, "clear", "--project", "clearing")
    assert code == exitcodes.OK and "deleted 1 ended job(s)" in out
    code, _, err = run(services, capsys, "--json", "clear", "--state", "running")
    assert code == exitcodes.USAGE and "states[0]" in err
    assert services.conductor.get(running).state == 2  # untouched
    gate.touch()


def test_clear_wants_a_filter_or_all_and_can_show_what_would_go(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Its own services: `clear --all` would take the other tests' jobs.
    with stack(tmp_path / "home") as s:
        keep = submit(s, tmp_path, "kept", "true", project="keep")
        drop = submit(s, tmp_path, "dropped", "exit 1", project="drop")
        for job_id in (keep, drop):
            s.conductor.wait_ended(job_id)

        for argv in (["clear"], ["clear", "--dry-run"]):
            code, out, err = run(s, capsys, *argv)
            assert code == exitcodes.USAGE and out == "", (argv, out)
            assert "--all" in err and "--state" in err, err
        code, _, err = run(s, capsys, "--json", "clear")
        assert code == exitcodes.USAGE
        error = json.loads(err)["error"]
        assert error["reason"] == "CLEAR_FILTER_REQUIRED" and error["fieldViolations"][0]["field"] == "all"

        code, out, _ = run(s, capsys, "clear", "--all", "--dry-run")
        assert code == exitcodes.OK and "would delete 2 ended job(s)" in out, out
        assert keep in out and drop in out
        doc = as_json(s, capsys, "clear", "--all", "--dry-run")
        assert sorted(doc["jobIds"]) == sorted([keep, drop]) and int(doc["deletedCount"]) == 2
        doc = as_json(s, capsys, "clear", "--project", "drop", "--dry-run")
        assert doc["jobIds"] == [drop]
        assert {s.conductor.get(j).id for j in (keep, drop)} == {keep, drop}  # a preview deletes nothing

        code, out, _ = run(s, capsys, "clear", "--all")
        assert code == exitcodes.OK and "deleted 2 ended job(s)" in out, out
        code, _, _ = run(s, capsys, "get", keep)
        assert code == exitcodes.NOT_FOUND


def test_submit_resume_from_a_chosen_checkpoint(
    services: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = services.home / "checkpoints" / "res" / "default" / "resumer"
    (base / "older").mkdir(parents=True)
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(spec("resumer", 'echo "resume=${BATON_RESUME_FROM:-none}"', project="res"))
    doc = as_json(services, capsys, "submit", str(spec_file), "--resume-from", "older")
    done = services.conductor.wait_ended(doc["id"])
    assert done.resume_dir == str(base / "older") and done.resume_from == "older"
    code, out, _ = run(services, capsys, "logs", doc["id"])
    assert code == exitcodes.OK and f"resume={base / 'older'}" in out
    code, _, err = run(services, capsys, "submit", str(spec_file), "--resume-from", "absent")
    assert code == exitcodes.NOT_FOUND and "absent" in err


def test_checkpoints_show_the_run_that_wrote_each(
    services: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    base = services.home / "checkpoints" / "cli-runs" / "default" / "saver"
    for run_id in ("run-a", "run-b"):
        (base / run_id / "step-000080").mkdir(parents=True)
        (base / run_id / ".baton-run").write_text(json.dumps({"job_id": run_id, "run_id": run_id}))
    (base / "plain-1").mkdir()
    want = {("run-a", "step-000080"), ("run-b", "step-000080"), ("", "plain-1")}
    deadline = time.monotonic() + 10
    while True:
        doc = as_json(services, capsys, "checkpoints", "--project", "cli-runs")
        got = {(c["runId"], c["suffix"]) for c in doc["checkpoints"]}
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == want
    code, out, _ = run(services, capsys, "checkpoints", "--project", "cli-runs")
    assert code == exitcodes.OK
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["JOB", "RUN", "CHECKPOINT"]
    assert sorted(tuple(r.split()[1:3]) for r in rows) == [
        ("-", "plain-1"),
        ("run-a", "step-000080"),
        ("run-b", "step-000080"),
    ]
    doc = as_json(services, capsys, "checkpoints", "--project", "cli-runs", "--run", "run-b")
    assert [(c["runId"], c["suffix"]) for c in doc["checkpoints"]] == [("run-b", "step-000080")]
