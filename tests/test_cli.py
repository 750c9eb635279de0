"""Every ``baton`` verb against real servers, for people and for scripts
(``--json`` output is parsed), with the exit statuses scripts rely on.

Most verbs run in this process (``client.cli.main``) for speed; the exit
status of a real process, ``baton up`` and the live table run as subprocesses.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from baton.client import ConductorClient, exitcodes
from baton.client.cli import main
from tests.harness import REPO
from tests.services import PY, Stack, lines_job, spec, stack
from tests.tcpproxy import TcpProxy

TRAIN = f"{PY} tests/jobs/train.py --steps 400 --interval 0.01 --every 50"


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("cli") / "home") as s:
        yield s


class Baton:
    """``baton`` in this process, pointed at the test's services."""

    def __init__(self, services: Stack, capsys: pytest.CaptureFixture[str]) -> None:
        self.services = services
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        where = ["--conductor", self.services.address, "--viewer", self.services.viewer_address]
        code = main([*where, *argv])
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def lines(self, *argv: str) -> list[dict[str, Any]]:
        out = self(*argv, "--json")[1]
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def baton(services: Stack, capsys: pytest.CaptureFixture[str]) -> Baton:
    return Baton(services, capsys)


def write_spec(path: Path, name: str, command: str, **fields: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(spec(name, command, **fields))
    return path


def wait_viewer(baton: Baton, job_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        code, out, _ = baton("get", job_id, "--from", "viewer", "--json")
        if code == 0 and json.loads(out)["state"] == f"JOB_STATE_{state}":
            return dict(json.loads(out))
        assert time.monotonic() < deadline, out
        time.sleep(0.05)


# ---------------------------------------------------------------- submit and follow


def test_submit_follow_exits_with_the_jobs_exit_code(baton: Baton, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "fails.yaml", "fails", "echo hello; echo oops >&2; exit 7")
    code, out, err = baton("submit", str(path), "--follow")
    assert code == 7
    assert out == "hello\noops\n"
    assert "FAILED" in err and "exit 7" in err

    lines = baton.lines("submit", str(path), "--follow")
    assert list(lines[0]) == ["job"] and lines[0]["job"]["name"] == "fails"
    logs = [line["log"] for line in lines[1:]]
    assert b"".join(base64.b64decode(c["data"]) for c in logs) == b"hello\noops\n"
    assert logs[-1]["complete"] is True
    assert logs[-1]["state"] == "JOB_STATE_FAILED" and logs[-1]["exitCode"] == 7

    ok = write_spec(tmp_path / "ok.yaml", "ok", "echo fine")
    assert baton("submit", str(ok), "--follow")[:2] == (0, "fine\n")


def test_submit_follow_as_a_process(services: Stack, tmp_path: Path) -> None:
    """The real exit status of `baton submit --follow`: the job's, or 80 when it is cancelled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env |= {"BATON_CONDUCTOR": services.address, "BATON_VIEWER": services.viewer_address}
    failing = write_spec(tmp_path / "f.yaml", "exit3", "echo bye; exit 3")
    done = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", "submit", str(failing), "--follow"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3 and done.stdout == "bye\n"

    sleeper = write_spec(tmp_path / "s.yaml", "sleeper", "echo started; exec sleep 60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.client.cli", "submit", str(sleeper), "--follow", "--json"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    job_id = json.loads(proc.stdout.readline())["job"]["id"]
    with ConductorClient(services.address) as client:
        client.cancel_job(job_id, grace=5, reason="test over")
    proc.wait(30)
    assert proc.returncode == exitcodes.CANCELLED == 80


def test_logs_follow_through_cut_connections(services: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """`baton logs -f` rides out dropped connections: every byte once, then the job's outcome."""
    proxy = TcpProxy(services.address)
    try:
        with ConductorClient(services.address) as client:
            job = client.submit_job(spec("cut", lines_job(150, 0.01), project="cuts"))
        result: list[int] = []
        capsys.readouterr()
        follower = threading.Thread(
            target=lambda: result.append(main(["logs", job.id, "-f", "--conductor", proxy.address]))
        )
        follower.start()
        while follower.is_alive() and proxy.cuts < 3:
            time.sleep(0.3)
            proxy.cut()
        follower.join(60)
        out, err = capsys.readouterr()
        with ConductorClient(services.address) as client:
            ended = client.get_job(job.id)
        assert result == [0]
        assert out == (Path(ended.run_dir) / "output.log").read_text()
        assert "resumed" in err and "nothing was lost" in err
    finally:
        proxy.close()


def test_submit_resolves_a_relative_workdir_against_the_spec(baton: Baton, tmp_path: Path) -> None:
    path = tmp_path / "project" / "job.yaml"
    path.parent.mkdir()
    path.write_text("name: where\nworkdir: .\ncommand: pwd\n")
    code, out, _ = baton("submit", str(path), "--follow")
    assert code == 0 and out.strip() == str(path.parent.resolve())


def test_submit_without_follow_and_dry_run(baton: Baton, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "plain.yaml", "plain", "true")
    code, out, _ = baton("submit", str(path))
    assert code == 0 and out.startswith("submitted ") and "default/default/plain" in out
    job = baton.json("submit", str(path), "--request-id", "rid-1")
    assert job["name"] == "plain" and job["requestId"] == "rid-1"
    assert baton.json("submit", str(path), "--request-id", "rid-1")["id"] == job["id"]
    dry = baton.json("submit", str(path), "--dry-run")
    assert dry["name"] == "plain" and dry["state"] == "JOB_STATE_QUEUED"
    code, out, _ = baton("submit", str(path), "--dry-run")
    assert code == 0 and out.startswith("would submit")


def test_bad_spec_names_the_field(baton: Baton, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: Bad Name\ncommand: echo\n")
    code, _, err = baton("submit", str(path))
    assert code == exitcodes.USAGE and "spec.name" in err
    code, _, err = baton("submit", str(path), "--json")
    error = json.loads(err)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and error["fieldViolations"][0]["field"] == "spec.name"
    code, _, err = baton("submit", str(tmp_path / "missing.yaml"))
    assert code == exitcodes.USAGE and "missing.yaml" in err


# ---------------------------------------------------------------- reading


def test_ls_get_logs(baton: Baton, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "r.yaml", "reader", "printf 'a\\nb\\nc\\n'", project="readers")
    assert baton("submit", str(path), "--follow")[0] == 0
    jobs = baton.json("ls", "--project", "readers")["jobs"]
    assert [j["name"] for j in jobs] == ["reader"] and jobs[0]["state"] == "JOB_STATE_SUCCEEDED"
    job_id = jobs[0]["id"]
    assert baton.json("ls", "--project", "readers", "--state", "failed")["jobs"] == []
    assert baton.json("ls", "--state", "succeeded,failed", "--limit", "1")["jobs"][0]["id"]

    code, out, _ = baton("ls", "--project", "readers")
    assert code == 0 and job_id in out and "readers/default/reader" in out and "SUCCEEDED" in out
    code, out, err = baton("ls", "--project", "nobody")
    assert code == 0 and out == "" and "no jobs" in err

    assert baton.json("get", job_id)["id"] == job_id
    code, out, _ = baton("get", job_id)
    assert code == 0 and "SUCCEEDED" in out and "readers/default/reader" in out and "exit code" in out
    wait_viewer(baton, job_id, "SUCCEEDED")
    code, out, _ = baton("get", job_id, "--from", "viewer")
    assert code == 0 and job_id in out and "SUCCEEDED" in out
    assert [j["id"] for j in baton.json("ls", "--from", "viewer", "--project", "readers")["jobs"]] == [job_id]

    assert baton("logs", job_id)[:2] == (0, "a\nb\nc\n")
    assert baton("logs", job_id, "--tail", "1")[:2] == (0, "c\n")
    assert baton("logs", job_id, "--offset", "2", "--from", "viewer")[:2] == (0, "b\nc\n")
    code, out, _ = baton("logs", job_id, "-f")
    assert (code, out) == (0, "a\nb\nc\n")
    chunks = [line["log"] for line in baton.lines("logs", job_id)]
    assert base64.b64decode(chunks[0]["data"]) == b"a\nb\nc\n" and chunks[-1]["complete"] is True


def watching(services: Stack, run: Any) -> Any:
    """Run ``run(since)`` (a watch from the current revision) in a thread, and submit a job."""
    with ConductorClient(services.address) as client:
        since = client.get_conductor_info().revision
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(run(str(since))))
        thread.start()
        job = client.submit_job(spec("watched", "true", project="watching"))
        client.wait_for_job(job.id, timeout=30)  # so that the next watch sees none of its changes
    thread.join(30)
    assert result, "the watch did not end"
    return result[0]


def test_watch(baton: Baton, services: Stack) -> None:
    events = watching(services, lambda since: baton.lines("watch", "--since", since, "--count", "2"))
    assert [list(e) for e in events] == [["event"]] * 2, events
    assert [e["event"]["job"]["state"] for e in events] == ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING"]
    assert [e["event"]["type"] for e in events] == ["JOB_EVENT_TYPE_UPDATED"] * 2
    revisions = [int(e["event"]["revision"]) for e in events]
    assert revisions[1] > revisions[0]

    # For people, to a pipe: a line per change.
    code, out, _ = watching(services, lambda since: baton("watch", "--since", since, "--count", "2"))
    lines = out.splitlines()
    assert code == 0 and [line.split()[1] for line in lines] == ["updated"] * 2
    assert "watching/default/watched" in lines[0] and "QUEUED" in lines[0] and "RUNNING" in lines[1]

    # From revision 0: the snapshot first, a job a line.
    snapshot = baton.lines("watch", "--project", "watching", "--count", "2")
    assert [e["event"]["type"] for e in snapshot] == ["JOB_EVENT_TYPE_SNAPSHOT"] * 2
    code, out, _ = baton("watch", "--project", "watching", "--count", "1")
    assert code == 0 and out.split()[1] == "snapshot" and "watching/default/watched" in out

    # The snapshot's end is an event of its own type, with no job: a line of its own.
    framed = baton.lines("watch", "--project", "watching", "--count", "3")
    types = [e["event"]["type"] for e in framed]
    assert types == ["JOB_EVENT_TYPE_SNAPSHOT"] * 2 + ["JOB_EVENT_TYPE_SNAPSHOT_END"]
    assert "job" not in framed[2]["event"]
    assert {e["event"]["revision"] for e in framed} == {framed[2]["event"]["revision"]}
    code, out, _ = baton("watch", "--project", "watching", "--count", "3")
    assert code == 0 and out.splitlines()[2].split()[1:] == ["end", "of", "snapshot"]


def test_watch_live_table_on_a_terminal(services: Stack) -> None:
    """On a terminal `baton watch` is a live table (FORCE_COLOR makes rich take the pipe for one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env |= {"BATON_CONDUCTOR": services.address, "FORCE_COLOR": "1", "COLUMNS": "160"}

    def run(since: str) -> tuple[int, str]:
        command = [sys.executable, "-m", "baton.client.cli", "watch", "--since", since, "--count", "2"]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, timeout=60)
        return done.returncode, done.stdout.decode()

    code, text = watching(services, run)
    assert code == 0
    assert "\x1b[" in text  # drawn and redrawn with terminal codes, states in colour
    assert "watching/default/watched" in text and "RUNNING" in text and "revision" in text


# ---------------------------------------------------------------- control


def test_pause_checkpoint_resume_wait(baton: Baton, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "t.yaml", "trainer", TRAIN, project="ctl")
    job_id = baton.json("submit", str(path))["id"]
    with ConductorClient(baton.services.address) as client:
        client.wait_for_job(job_id, states={2}, timeout=30)  # RUNNING
    time.sleep(0.7)
    paused = baton.json("pause", job_id, "--checkpoint")
    assert paused["state"] == "JOB_STATE_PAUSED" and paused["pauseMode"] == "PAUSE_MODE_CHECKPOINT"
    code, _, err = baton("pause", job_id)
    assert code == exitcodes.WRONG_STATE and "PAUSED" in err

    checkpoints = baton.json("checkpoints", "--project", "ctl", "--name", "trainer")["checkpoints"]
    assert checkpoints and checkpoints[0]["configFile"] == "config.yaml"
    code, out, _ = baton("checkpoints", "--project", "ctl")
    assert code == 0 and checkpoints[0]["suffix"] in out and "ctl/default/trainer" in out

    code, out, _ = baton("resume", job_id)
    assert code == 0 and out.startswith("resumed") and ("RUNNING" in out or "QUEUED" in out)
    code, out, _ = baton("wait", job_id)
    assert code == 0 and "SUCCEEDED" in out
    assert baton.json("wait", job_id)["state"] == "JOB_STATE_SUCCEEDED"
    code, log, _ = baton("logs", job_id)
    assert f"resumed from {checkpoints[0]['path']}" in log

    second = baton.json("submit", str(path))["id"]
    with ConductorClient(baton.services.address) as client:
        client.wait_for_job(second, states={2}, timeout=30)
    code, out, _ = baton("pause", second, "--suspend")
    assert code == 0 and "PAUSED" in out
    assert baton.json("resume", second)["state"] == "JOB_STATE_RUNNING"
    code, out, _ = baton("cancel", second, "--grace", "5", "--reason", "enough")
    assert code == 0 and "CANCELLED" in out and "enough" in out
    assert baton("wait", second)[0] == exitcodes.CANCELLED


def test_cancel_and_delete(baton: Baton, tmp_path: Path) -> None:
    path = write_spec(tmp_path / "c.yaml", "victim", "exec sleep 60")
    job_id = baton.json("submit", str(path))["id"]
    cancelled = baton.json("cancel", job_id, "--reason", "not needed")
    assert cancelled["state"] == "JOB_STATE_CANCELLED" and cancelled["reason"] == "not needed"
    code, _, err = baton("cancel", job_id)
    assert code == exitcodes.WRONG_STATE and job_id in err
    deleted = baton.json("delete", job_id)
    assert deleted["jobId"] == job_id and int(deleted["revision"]) > 0
    code, _, err = baton("delete", job_id)
    assert code == exitcodes.NOT_FOUND and job_id in err
    code, _, err = baton("get", job_id, "--json")
    assert code == exitcodes.NOT_FOUND and json.loads(err)["error"]["reason"] == "JOB_NOT_FOUND"

    other = baton.json("submit", str(write_spec(tmp_path / "d.yaml", "brief", "true")))["id"]
    baton("wait", other)
    code, out, _ = baton("delete", other)
    assert code == 0 and f"deleted {other}" in out


def test_stats(baton: Baton, tmp_path: Path) -> None:
    job_id = baton.json("submit", str(write_spec(tmp_path / "x.yaml", "counted", "exit 1", project="st")))[
        "id"
    ]
    assert baton("wait", job_id)[0] == 1
    wait_viewer(baton, job_id, "FAILED")
    stats = baton.json("stats", "--project", "st")
    assert stats["totalRuns"] == "1" and stats["recentFailures"][0]["id"] == job_id
    code, out, _ = baton("stats", "--project", "st")
    assert code == 0 and "FAILED 1" in out and "Recent failures" in out and job_id in out


# ---------------------------------------------------------------- unreachable, up


def test_an_unreachable_conductor_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["ls", "--conductor", "127.0.0.1:9", "--timeout", "3"])
    err = capsys.readouterr().err
    assert code == exitcodes.UNAVAILABLE == 69
    assert "cannot reach the Baton conductor at 127.0.0.1:9" in err and "baton up" in err
    code = main(["stats", "--viewer", "127.0.0.1:9", "--json", "--timeout", "3"])
    error = json.loads(capsys.readouterr().err)["error"]
    assert code == 69 and error["code"] == "UNAVAILABLE" and error["address"] == "127.0.0.1:9"
    assert "baton viewer" in error["message"]


def test_up_serves_all_three_until_sigterm(tmp_path: Path) -> None:
    address_file = tmp_path / "addresses.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.client.cli", "up", "--home", str(tmp_path / "home"), "--json",
         "--listen", "127.0.0.1:0", "--viewer-listen", "127.0.0.1:0", "--gateway-listen", "127.0.0.1:0",
         "--address-file", str(address_file)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        addresses = json.loads(address_file.read_text())
        assert announced == addresses and set(addresses) == {"conductor", "viewer", "gateway", "home"}
        env |= {"BATON_CONDUCTOR": addresses["conductor"], "BATON_VIEWER": addresses["viewer"]}
        spec_file = write_spec(tmp_path / "u.yaml", "upped", "echo up")
        for argv in (["submit", str(spec_file), "--follow"], ["stats", "--json"]):
            done = subprocess.run(
                [sys.executable, "-m", "baton.client.cli", *argv],
                env=env, cwd=REPO, capture_output=True, text=True,
            )
            assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["totalRuns"] in ("0", "1")
        # The gateway up beside them calls the same conductor.
        with urllib.request.urlopen(f"http://{addresses['gateway']}/v1/jobs?page_size=1") as answer:
            assert json.loads(answer.read())["jobs"][0]["name"] == "upped"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_duration_flags_take_durations_and_refuse_nonsense(
    baton: Baton, services: Stack, tmp_path: Path
) -> None:
    """`--grace 5s`, `--older-than 7d`, `--timeout 2s`: durations; a bare number is seconds."""
    path = write_spec(tmp_path / "g.yaml", "graceful", "echo up; exec sleep 60")
    job_id = baton.json("submit", str(path))["id"]
    services.conductor.wait_for(job_id, "running")
    code, out, err = baton("--timeout", "5s", "cancel", job_id, "--grace", "2s")
    assert code == exitcodes.CANCELLED or code == exitcodes.OK, (code, out, err)
    assert services.conductor.wait_ended(job_id).state == 8  # CANCELLED
    code, _, _ = baton("clear", "--older-than", "7d", "--dry-run")
    assert code == exitcodes.OK
    for argv in (
        ["cancel", job_id, "--grace", "soon"],
        ["clear", "--older-than", "a week"],
        ["--timeout", "x", "ls"],
    ):
        with pytest.raises(SystemExit) as usage:
            main([*argv])
        assert usage.value.code == exitcodes.USAGE
        assert "is not a duration such as 90s" in baton.capsys.readouterr().err


def test_a_misspelt_state_names_the_states_there_are(baton: Baton) -> None:
    code, _, err = baton("ls", "--state", "runing")
    assert code == exitcodes.USAGE
    assert "'runing' is not a state" in err
    assert "queued, running, pausing, paused" in err and "JOB_STATE" not in err


def test_steps_takes_a_step_by_name_as_well_as_by_number(baton: Baton, services: Stack) -> None:
    steps = [{"name": "fetch", "command": "echo fetched"}, {"name": "train", "command": "echo trained"}]
    with ConductorClient(services.address) as client:
        job_id = client.submit_job(yaml.safe_dump({"name": "named-steps", "steps": steps})).id
    services.conductor.wait_ended(job_id)
    by_name = baton.json("steps", job_id, "train")
    assert by_name["step"]["name"] == "train" and by_name == baton.json("steps", job_id, "2")
    code, _, err = baton("steps", job_id, "evaluate")
    assert code == exitcodes.USAGE and "fetch, train" in err


def test_ctrl_c_stops_watch_with_130_and_submit_follow_says_the_job_goes_on(
    services: Stack, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env |= {"BATON_CONDUCTOR": services.address, "BATON_VIEWER": services.viewer_address}
    # With its stack on SIGABRT: should it ever not stop, the failure says where it was.
    watch = subprocess.Popen(
        [sys.executable, "-m", "baton.client.cli", "watch", "--json"],
        env=env | {"PYTHONFAULTHANDLER": "1"}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watch.stdout is not None
    watch.stdout.readline()  # watching
    watch.send_signal(signal.SIGINT)
    try:
        _, err = watch.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        watch.send_signal(signal.SIGABRT)
        _, err = watch.communicate(timeout=20)
        pytest.fail(f"baton watch did not stop on SIGINT; where it was:\n{err}")
    assert watch.returncode == exitcodes.INTERRUPTED == 130, err

    sleeper = write_spec(tmp_path / "s.yaml", "followed", "echo started; exec sleep 60")
    follow = subprocess.Popen(
        [sys.executable, "-m", "baton.client.cli", "submit", str(sleeper), "--follow"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert follow.stdout is not None
    assert follow.stdout.readline() == "started\n"
    follow.send_signal(signal.SIGINT)
    _, err = follow.communicate(timeout=20)
    assert follow.returncode == exitcodes.INTERRUPTED
    job_id = err.split("job ")[-1].split()[0]
    assert "goes on" in err
    with ConductorClient(services.address) as client:
        assert client.get_job(job_id).state == 2  # still RUNNING: following was only watching
        client.cancel_job(job_id, grace=1)


def test_ls_at_80_columns_never_cuts_a_job_id(services: Stack, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env |= {"BATON_CONDUCTOR": services.address, "COLUMNS": "80"}
    long_name = "a-rather-long-job-name-for-a-sweep-shard"
    with ConductorClient(services.address) as client:
        job = client.submit_job(
            spec(long_name, "echo x; exit 3", project="a-long-project-name", group="experiments-2026")
        )
    services.conductor.wait_ended(job.id)
    done = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", "ls", "--project", "a-long-project-name"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert any(line.startswith(job.id + " ") for line in lines), lines
    assert "FAILED" in done.stdout, "the state stays; the path and the reason give way"


def test_get_shows_the_result_and_every_step(baton: Baton, services: Stack) -> None:
    steps = [
        {"name": "prepare", "command": "echo prepared"},
        {"name": "fit", "command": 'echo \'{"loss": 0.25}\' > "$BATON_RESULT_FILE"'},
    ]
    with ConductorClient(services.address) as client:
        job_id = client.submit_job(yaml.safe_dump({"name": "with-result", "steps": steps})).id
    services.conductor.wait_ended(job_id)
    code, out, _ = baton("get", job_id)
    assert code == exitcodes.OK
    assert '{"loss": 0.25}' in out
    assert "prepare" in out and "fit" in out and out.count("SUCCEEDED") >= 3  # the job and both steps


def test_a_bad_spec_is_told_once_with_a_did_you_mean_and_dry_run_shows_the_resolved_spec(
    baton: Baton, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: typo\ncomand: echo hi\npause: {grace: 5s, singal: SIGINT}\n")
    code, _, err = baton("submit", str(bad), "--dry-run")
    assert code == exitcodes.USAGE
    assert "spec.comand: unknown field; did you mean 'command'?" in err
    assert "spec.pause.singal: unknown field; did you mean 'signal'?" in err
    assert err.count("spec.comand") == 1, err
    good = write_spec(tmp_path / "good.yaml", "resolved", "echo hi", retries=2)
    code, out, _ = baton("submit", str(good), "--dry-run")
    assert code == exitcodes.OK
    resolved = yaml.safe_load(out.split("\n", 1)[1])
    assert resolved["retries"] == 2 and resolved["pause"] == {"signal": "SIGTERM", "grace": "30s"}
    assert resolved["executor"] == "local" and resolved["project"] == "default"


def test_every_verb_help_says_what_it_does_shows_an_example_and_lists_connection_flags_last(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from baton.client.cli import EXAMPLES

    for verb, example in EXAMPLES.items():
        with pytest.raises(SystemExit) as done:
            main([verb, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        body = text.split("\n\n", 1)[1]  # after the usage
        assert body[0].isupper() and f"example:\n  {example}\n" in body, (verb, body[:200])
        sections = [
            line for line in body.splitlines() if line and not line.startswith(" ") and line.endswith(":")
        ]
        assert sections[-1].startswith("connection"), (verb, sections)


def test_shell_completion_for_bash_completes_verbs_and_their_flags(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["completion", "bash"]) == exitcodes.OK
    script = tmp_path / "baton.bash"
    script.write_text(capsys.readouterr().out)

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        probe = (
            f"source {script}; COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}; "
            f'COMP_LINE="{line}"; COMP_POINT={len(line)}; _shtab_baton; printf "%s\\n" "${{COMPREPLY[@]}}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
        return done.stdout.split()

    assert complete("baton can") == ["cancel"]
    assert complete("baton cancel --gr") == ["--grace"]
    assert "checkpoints" in complete("baton che")
    assert main(["completion", "zsh"]) == exitcodes.OK
    zsh = capsys.readouterr().out
    assert zsh.startswith("#compdef baton") and "cancel" in zsh and "--older-than" in zsh


def test_every_viewer_query_has_a_verb(baton: Baton, services: Stack, tmp_path: Path) -> None:
    """projects, running (stale marked), recent, runs of one name, a checkpoint's files, any run."""
    trained = write_spec(
        tmp_path / "vq.yaml", "vq-trainer", f"{PY} tests/jobs/train.py --steps 20 --interval 0.01 --every 10",
        project="vq",
    )  # fmt: skip
    job_id = baton.json("submit", str(trained))["id"]
    services.conductor.wait_ended(job_id)
    wait_viewer(baton, job_id, "SUCCEEDED")
    sleeper = write_spec(tmp_path / "vs.yaml", "vq-sleeper", "exec sleep 60", project="vq")
    sleeping = baton.json("submit", str(sleeper))["id"]
    wait_viewer(baton, sleeping, "RUNNING")

    assert "vq" in [p["project"] for p in baton.json("projects")["projects"]]
    assert job_id in [j["id"] for j in baton.json("recent", "--project", "vq")["jobs"]]
    assert [j["id"] for j in baton.json("runs", "vq/default/vq-trainer")["jobs"]] == [job_id]
    running = baton.json("running", "--project", "vq")["jobs"]
    assert [(r["job"]["id"], r["stale"]) for r in running] == [(sleeping, False)]
    assert baton.json("running", "--project", "vq", "--stale")["jobs"] == []

    config = baton.json("checkpoint-config", "vq/default/vq-trainer")
    assert config["config"]["steps"] == 20 and config["suffix"] == "step-000020"
    code, out, _ = baton("checkpoint-config", "vq/default/vq-trainer", f"{job_id}/step-000010")
    assert code == 0 and "steps: 20" in out
    assert baton.json("checkpoint-job-spec", "vq/default/vq-trainer")["jobSpec"]["job_id"] == job_id

    # A run no conductor knows, written by another program: found where it lives.
    foreign = services.home / "status" / "vq" / "default" / "imported" / "run-1"
    foreign.mkdir(parents=True)
    (foreign / "status.json").write_text(json.dumps({"id": "run-1", "runId": "run-1", "project": "vq",
                                                     "group": "default", "name": "imported",
                                                     "state": "JOB_STATE_SUCCEEDED"}))  # fmt: skip
    deadline = time.monotonic() + 10
    code, out, err = baton("get", "vq/default/imported/run-1")
    while code != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
        code, out, err = baton("get", "vq/default/imported/run-1")
    assert code == 0 and "vq/default/imported" in out and "SUCCEEDED" in out, err
    baton("cancel", sleeping, "--grace", "1s")
