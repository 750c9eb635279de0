"""What the Ray Jobs REST API of a real Ray head does (ray 2.60.0): the facts a
Baton Ray executor relies on, measured against a head that the test session
starts itself (tools/testclusters/ray.py). urllib only, no ``ray`` import.

Run alone with ``pytest -m ray``. Each test names the fact it pins down.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO
from tools.testclusters.ray import MARKER_VAR, RayHead, call

pytestmark = pytest.mark.ray

PROBE = f"{shlex.quote(sys.executable)} -S {shlex.quote(str(REPO / 'tests' / 'jobs' / 'ray_probe.py'))}"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# Every field of GET /api/jobs/{id} for a job submitted through the Jobs API.
JOB_FIELDS = {
    "type",
    "job_id",
    "submission_id",
    "driver_info",
    "status",
    "entrypoint",
    "message",
    "error_type",
    "start_time",
    "end_time",
    "metadata",
    "runtime_env",
    "driver_agent_http_address",
    "driver_node_id",
    "driver_exit_code",
}


def new_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def submit(head: RayHead, **body: Any) -> tuple[int, Any]:
    return call(head.address, "POST", "/api/jobs/", body)


def submit_ok(head: RayHead, **body: Any) -> None:
    status, answer = submit(head, **body)
    assert status == 200, answer


def job(head: RayHead, sid: str) -> dict[str, Any]:
    status, body = call(head.address, "GET", f"/api/jobs/{sid}")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def wait_for(
    head: RayHead, sid: str, statuses: set[str], timeout: float = 60.0
) -> tuple[dict[str, Any], list[str]]:
    """Poll GET every 10 ms until the status is one of ``statuses``; also return every status seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        body = job(head, sid)
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        if body["status"] in statuses:
            return body, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"job {sid} still {body['status']} after {timeout} s (seen {seen})")
        time.sleep(0.01)


def wait_file(path: Path, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    facts: dict[str, Any] = json.loads(path.read_text())
    return facts


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_quietly(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_head_is_up_and_listens_on_loopback_only(ray_head: RayHead) -> None:
    """GET /api/version answers; every TCP socket this head listens on is on 127.0.0.1."""
    assert ray_head.start_seconds < 60
    status, version = call(ray_head.address, "GET", "/api/version")
    assert status == 200
    assert version["ray_version"] == "2.60.0"
    assert set(version) >= {"version", "ray_version", "ray_commit", "session_name"}
    pids = set(ray_head.processes())
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                listening.append((table, fields[1]))
    assert listening, "found no listening socket of the head"
    loopback = ("0100007F:", "0000000000000000FFFF00000100007F:", "00000000000000000000000001000000:")
    assert [addr for _, addr in listening if not addr.startswith(loopback)] == []


def test_submit_returns_ids_and_get_reports_every_field(ray_head: RayHead, tmp_path: Path) -> None:
    """POST /api/jobs/ answers 200 {"job_id": <submission_id>, "submission_id": ...} at once (the job is
    PENDING); GET shows PENDING -> RUNNING -> SUCCEEDED with driver_exit_code 0, times in ms since
    the epoch, and echoes metadata, runtime_env and the entrypoint."""
    sid = new_id()
    out = tmp_path / "facts.json"
    before_ms = time.time() * 1000
    status, body = submit(
        ray_head,
        entrypoint=f"{PROBE} --out {out} --seconds 0.5",
        submission_id=sid,
        entrypoint_num_cpus=1,
        entrypoint_num_gpus=1,
        entrypoint_memory=100 * 1024 * 1024,
        runtime_env={"env_vars": {"BATON_JOB_ID": sid, "FOO": "bar"}},
        metadata={"baton_job": sid},
    )
    assert (status, body) == (200, {"job_id": sid, "submission_id": sid})
    first = job(ray_head, sid)
    assert set(first) == JOB_FIELDS
    assert first["status"] in {"PENDING", "RUNNING"}
    running, _ = wait_for(ray_head, sid, {"RUNNING"} | TERMINAL)
    assert running["status"] == "RUNNING"
    assert running["message"] == "Job is currently running."
    assert running["end_time"] is None and running["driver_exit_code"] is None
    assert running["driver_agent_http_address"].startswith("http://127.0.0.1:")
    done, _ = wait_for(ray_head, sid, TERMINAL)
    assert done["status"] == "SUCCEEDED"
    assert done["message"] == "Job finished successfully."
    assert done["driver_exit_code"] == 0
    assert done["error_type"] is None
    assert done["type"] == "SUBMISSION"
    assert done["submission_id"] == sid
    assert done["job_id"] is None  # the Ray driver job id: only when the entrypoint calls ray.init()
    assert done["metadata"] == {"baton_job": sid}
    assert done["runtime_env"] == {"env_vars": {"BATON_JOB_ID": sid, "FOO": "bar"}}
    assert done["entrypoint"].startswith(PROBE)
    # start_time is the submission (set while PENDING), in ms since the epoch.
    assert before_ms - 1000 <= done["start_time"] <= done["end_time"] <= time.time() * 1000 + 1000
    facts = wait_file(out)
    assert facts["env"]["FOO"] == "bar"
    assert facts["env"]["BATON_JOB_ID"] == sid
    listed = call(ray_head.address, "GET", "/api/jobs/")[1]
    assert [j["status"] for j in listed if j["submission_id"] == sid] == ["SUCCEEDED"]


def test_failed_job_reports_exit_code_and_log_tail(ray_head: RayHead, tmp_path: Path) -> None:
    """A non-zero exit: FAILED, driver_exit_code, error_type JOB_ENTRYPOINT_COMMAND_ERROR, and a message
    that quotes the exit code and the end of the log."""
    sid = new_id()
    submit_ok(ray_head, entrypoint=f"{PROBE} --out {tmp_path / 'f.json'} --exit-code 3", submission_id=sid)
    done, _ = wait_for(ray_head, sid, TERMINAL)
    assert done["status"] == "FAILED"
    assert done["driver_exit_code"] == 3
    assert done["error_type"] == "JOB_ENTRYPOINT_COMMAND_ERROR"
    assert done["message"].startswith("Job entrypoint command failed with exit code 3, last available logs")
    assert "probe done" in done["message"]


def test_same_submission_id_twice_is_refused(ray_head: RayHead, tmp_path: Path) -> None:
    """A second POST with a submission_id the head knows: HTTP 500 (not 409/400), a text/plain
    traceback ending in "ValueError: Job with submission_id <id> already exists. Please use a
    different submission_id." The first job is untouched and nothing runs twice."""
    sid = new_id()
    ran = tmp_path / "ran.json"
    body = {"entrypoint": f"{PROBE} --out {ran} --seconds 0.5", "submission_id": sid}
    submit_ok(ray_head, **body)
    status, text = submit(ray_head, **{**body, "entrypoint": f"{PROBE} --out {tmp_path / 'second.json'}"})
    assert status == 500
    assert isinstance(text, str)
    refusal = (
        f"ValueError: Job with submission_id {sid} already exists. Please use a different submission_id."
    )
    assert refusal in text
    done, _ = wait_for(ray_head, sid, TERMINAL)
    assert done["status"] == "SUCCEEDED"
    assert done["entrypoint"] == body["entrypoint"]
    # Also refused once the job is over (until DELETE /api/jobs/{id} forgets it).
    status, text = submit(ray_head, **body)
    assert status == 500 and "already exists" in text
    assert not (tmp_path / "second.json").exists()


UNKNOWN_JOB_CALLS = (
    ("GET", "/api/jobs/nope"),
    ("POST", "/api/jobs/nope/stop"),
    ("GET", "/api/jobs/nope/logs"),
)


def test_unknown_job_and_bad_requests(ray_head: RayHead) -> None:
    """404 "Job <id> does not exist" (text/plain) for GET, stop and logs of an unknown id; 400 with a
    TypeError traceback for a submission without entrypoint or with an unknown field."""
    for method, path in UNKNOWN_JOB_CALLS:
        assert call(ray_head.address, method, path) == (404, "Job nope does not exist")
    status, text = submit(ray_head, submission_id=new_id())
    assert status == 400 and "missing 1 required positional argument: 'entrypoint'" in text
    status, text = submit(ray_head, entrypoint="true", submission_id=new_id(), bogus=1)
    assert status == 400 and "unexpected keyword argument 'bogus'" in text


def test_logs_hold_rays_lines_and_the_output(ray_head: RayHead, tmp_path: Path) -> None:
    """GET /api/jobs/{id}/logs -> {"logs": "<whole text>"}: Ray's own lines ("... INFO job_manager.py:...
    -- Runtime env is setting up." and "Running entrypoint for job <id>: <entrypoint>") mixed with
    the job's stdout+stderr, and not always in order (Ray's line is flushed after the job starts)."""
    sid = new_id()
    submit_ok(
        ray_head, entrypoint=f"{PROBE} --out {tmp_path / 'l.json'}; echo to-stderr >&2", submission_id=sid
    )
    wait_for(ray_head, sid, TERMINAL)
    status, body = call(ray_head.address, "GET", f"/api/jobs/{sid}/logs")
    assert status == 200 and set(body) == {"logs"}
    lines = body["logs"].splitlines()
    assert "Runtime env is setting up." in lines[0] and "INFO job_manager.py" in lines[0]
    assert f"Running entrypoint for job {sid}: {PROBE}" in body["logs"]
    assert "probe done" in lines and "to-stderr" in lines
    assert ray_head.logs_dir and Path(ray_head.logs_dir, f"job-driver-{sid}.log").read_text() == body["logs"]


def test_entrypoint_environment_and_process_tree(ray_head: RayHead, tmp_path: Path) -> None:
    """The entrypoint runs as `/bin/sh -c <entrypoint>` (the shell stays as its parent), in its own
    session and process group led by that shell, with cwd the head's working directory. Ray adds
    RAY_ADDRESS (the GCS), RAY_JOB_CONFIG_JSON_ENV_VAR, PYTHONUNBUFFERED=1, OMP_NUM_THREADS=1; with
    entrypoint_num_gpus=1 it sets CUDA_VISIBLE_DEVICES="0"; without GPUs it leaves it unset and sets
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES=1. The head's own environment is inherited."""
    gpu, plain = new_id(), new_id()
    submit_ok(
        ray_head, entrypoint=f"{PROBE} --out {tmp_path / 'g.json'}", submission_id=gpu, entrypoint_num_gpus=1
    )
    submit_ok(ray_head, entrypoint=f"{PROBE} --out {tmp_path / 'p.json'}", submission_id=plain)
    wait_for(ray_head, gpu, TERMINAL)
    wait_for(ray_head, plain, TERMINAL)
    g, p = wait_file(tmp_path / "g.json"), wait_file(tmp_path / "p.json")
    for facts, sid in ((g, gpu), (p, plain)):
        assert facts["parent_cmdline"].startswith(f"/bin/sh -c {PROBE}")
        assert facts["pgid"] == facts["sid"] == facts["ppid"]  # the shell leads a new session
        assert facts["cwd"] == ray_head.temp_dir
        env = facts["env"]
        assert env["RAY_ADDRESS"] == ray_head.gcs_address
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["OMP_NUM_THREADS"] == "1"
        assert env[MARKER_VAR] == ray_head.marker
        assert env["TMPDIR"] == ray_head.temp_dir  # RayHead's setting, so the head's stop removes it all
        config = json.loads(env["RAY_JOB_CONFIG_JSON_ENV_VAR"])
        assert config["metadata"] == {"job_submission_id": sid, "job_name": sid}
    assert g["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES" not in g["env"]
    assert "CUDA_VISIBLE_DEVICES" not in p["env"]
    assert p["env"]["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] == "1"


def test_stop_sends_sigterm_then_sigkill_after_3_s(ray_head: RayHead, tmp_path: Path) -> None:
    """POST /api/jobs/{id}/stop -> {"stopped": true} at once; the shell and every descendant get SIGTERM
    within a few ms, SIGKILL 3 s later (RAY_JOB_STOP_WAIT_TIME_S); STOPPED is reported only after
    that, with driver_exit_code null and message "Job was intentionally stopped.". Orphans the job
    left (parent gone: reparented to init), in its process group or in their own session, survive
    the stop. A second stop answers {"stopped": false}."""
    sid = new_id()
    out, trap = tmp_path / "s.json", tmp_path / "s.trap"
    cmd = f"{PROBE} --out {out} --trap {trap} --ignore-term --orphans --seconds 120"
    submit_ok(ray_head, entrypoint=cmd, submission_id=sid)
    facts = wait_file(out)
    orphans = [facts["orphan_same_group"], facts["orphan_own_session"]]
    try:
        assert job(ray_head, sid)["status"] == "RUNNING"
        t0 = time.time()
        assert call(ray_head.address, "POST", f"/api/jobs/{sid}/stop") == (200, {"stopped": True})
        gone_after = None
        while time.time() - t0 < 15:
            if gone_after is None and not alive(facts["pid"]):
                gone_after = time.time() - t0
                assert job(ray_head, sid)["status"] in {"RUNNING", "STOPPED"}
            if gone_after is not None and job(ray_head, sid)["status"] == "STOPPED":
                break
            time.sleep(0.01)
        stopped_after = time.time() - t0
        term_after = float(trap.read_text().split()[1]) - t0
        done = job(ray_head, sid)
        print(f"SIGTERM after {term_after:.3f} s, SIGKILL {gone_after} s, STOPPED {stopped_after:.3f} s")
        assert done["status"] == "STOPPED"
        assert done["message"] == "Job was intentionally stopped."
        assert done["driver_exit_code"] is None and done["error_type"] is None
        assert done["end_time"] is not None
        assert 0 <= term_after < 1.0
        assert gone_after is not None and 2.9 <= gone_after < 4.5
        assert not alive(facts["child"])
        time.sleep(2.5)  # Ray's fate-share watcher would kill the group within about 1 s
        assert [alive(pid) for pid in orphans] == [True, True]
        assert call(ray_head.address, "POST", f"/api/jobs/{sid}/stop") == (200, {"stopped": False})
    finally:
        kill_quietly(*orphans)


def test_stop_of_a_job_that_obeys_sigterm(ray_head: RayHead, tmp_path: Path) -> None:
    """A job that exits on SIGTERM is STOPPED (not FAILED) well before the 3 s SIGKILL deadline."""
    sid = new_id()
    out, trap = tmp_path / "o.json", tmp_path / "o.trap"
    submit_ok(ray_head, entrypoint=f"{PROBE} --out {out} --trap {trap} --seconds 120", submission_id=sid)
    wait_file(out)
    t0 = time.monotonic()
    assert call(ray_head.address, "POST", f"/api/jobs/{sid}/stop") == (200, {"stopped": True})
    done, _ = wait_for(ray_head, sid, TERMINAL)
    assert done["status"] == "STOPPED" and done["driver_exit_code"] is None
    assert time.monotonic() - t0 < 2.5
    assert trap.read_text().startswith("TERM ")


def test_oversized_request_stays_pending_and_cannot_be_stopped(ray_head: RayHead) -> None:
    """A job asking more GPUs or CPUs than the head has is accepted (200) and stays PENDING (Ray's
    default gives up after RAY_JOB_START_TIMEOUT_SECONDS = 900 s), with a message about waiting
    for resources and empty logs. Stop answers {"stopped": true} but the job stays PENDING, and
    DELETE is refused (500) while it is not terminal."""
    gpus, cpus = new_id(), new_id()
    submit_ok(ray_head, entrypoint="echo never", submission_id=gpus, entrypoint_num_gpus=3)
    submit_ok(ray_head, entrypoint="echo never", submission_id=cpus, entrypoint_num_cpus=3)
    time.sleep(5)
    for sid in (gpus, cpus):
        body = job(ray_head, sid)
        assert body["status"] == "PENDING"
        assert body["message"] == (
            "Job has not started yet. It may be waiting for resources "
            "(CPUs, GPUs, memory, custom resources) to become available."
        )
        assert call(ray_head.address, "GET", f"/api/jobs/{sid}/logs") == (200, {"logs": ""})
    assert call(ray_head.address, "POST", f"/api/jobs/{gpus}/stop") == (200, {"stopped": True})
    time.sleep(3)
    assert job(ray_head, gpus)["status"] == "PENDING"
    status, text = call(ray_head.address, "DELETE", f"/api/jobs/{cpus}")
    assert status == 500
    assert f"Attempted to delete job '{cpus}', but it is in a non-terminal state PENDING" in text


def test_head_settings_timeouts_and_stop_cleans_up(tmp_path: Path) -> None:
    """The head's environment sets the Jobs API's timeouts: RAY_JOB_START_TIMEOUT_SECONDS makes an
    unschedulable job FAILED (error_type JOB_SUPERVISOR_ACTOR_START_TIMEOUT) and RAY_JOB_STOP_WAIT_TIME_S
    shortens the SIGTERM->SIGKILL wait. RayHead.stop() ends every process of the head, orphans of
    its jobs included, removes its temp dir, and may be called twice."""
    # Every job must start within RAY_JOB_START_TIMEOUT_SECONDS, so not too short: a
    # supervisor worker takes 2-5 s to start on a busy 2-core machine.
    settings = {"RAY_JOB_START_TIMEOUT_SECONDS": "10", "RAY_JOB_STOP_WAIT_TIME_S": "1"}
    with RayHead(num_cpus=1, num_gpus=0, env=settings) as head:
        big, sid = new_id(), new_id()
        t0 = time.monotonic()
        submit_ok(head, entrypoint="echo never", submission_id=big, entrypoint_num_gpus=1)
        out, trap = tmp_path / "k.json", tmp_path / "k.trap"
        cmd = f"{PROBE} --out {out} --trap {trap} --ignore-term --orphans --seconds 120"
        submit_ok(head, entrypoint=cmd, submission_id=sid)
        facts = wait_file(out)
        t1 = time.monotonic()
        assert call(head.address, "POST", f"/api/jobs/{sid}/stop")[0] == 200
        while alive(facts["pid"]):
            assert time.monotonic() - t1 < 10
            time.sleep(0.01)
        assert 0.9 <= time.monotonic() - t1 < 2.5
        assert alive(facts["orphan_own_session"])

        done, seen = wait_for(head, big, TERMINAL, timeout=60)
        assert seen[-2:] == ["PENDING", "FAILED"]
        assert 10 <= time.monotonic() - t0 < 30
        assert done["error_type"] == "JOB_SUPERVISOR_ACTOR_START_TIMEOUT"
        assert done["message"].startswith("Job supervisor actor failed to start within 10.0 seconds.")
        assert done["driver_exit_code"] is None

        pids = head.processes()
        temp_dir = head.temp_dir
        assert facts["orphan_own_session"] in pids and facts["orphan_same_group"] in pids
    assert head.processes() == []
    # SIGKILLed processes take a moment to die on a loaded machine.
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if alive(pid)]
        time.sleep(0.05)
    assert not os.path.exists(temp_dir)
    head.stop()
