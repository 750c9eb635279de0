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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import ConductorClient, exitcodes
from client.cli import main
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
        [sys.executable, "-m", "client.cli", "submit", str(failing), "--follow"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3 and done.stdout == "bye\n"

    sleeper = write_spec(tmp_path / "s.yaml", "sleeper", "echo started; exec sleep 60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "submit", str(sleeper), "--follow", "--json"],
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
        command = [sys.executable, "-m", "client.cli", "watch", "--since", since, "--count", "2"]
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


def test_up_serves_both_until_sigterm(tmp_path: Path) -> None:
    address_file = tmp_path / "addresses.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "up", "--home", str(tmp_path / "home"), "--json",
         "--listen", "127.0.0.1:0", "--viewer-listen", "127.0.0.1:0", "--address-file", str(address_file)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        announced = json.loads(proc.stdout.readline())
        addresses = json.loads(address_file.read_text())
        assert announced == addresses and set(addresses) == {"conductor", "viewer", "home"}
        env |= {"BATON_CONDUCTOR": addresses["conductor"], "BATON_VIEWER": addresses["viewer"]}
        spec_file = write_spec(tmp_path / "u.yaml", "upped", "echo up")
        for argv in (["submit", str(spec_file), "--follow"], ["stats", "--json"]):
            done = subprocess.run(
                [sys.executable, "-m", "client.cli", *argv], env=env, cwd=REPO, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["totalRuns"] in ("0", "1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
