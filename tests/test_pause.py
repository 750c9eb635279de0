"""Pause and resume with real processes: SUSPEND freezes the whole group,
CHECKPOINT lets the job save and exit, and resume continues where it stood."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml

from baton.common.layout import RUN_MARKER
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.harness import REPO, InProcessConductor
from tests.procs import (
    SPIN,
    ProcStat,
    cmdline,
    group_members,
    log_lines,
    log_text,
    proc_stat,
    spec_yaml,
    train_command,
    wait_until,
)

Factory = Callable[..., InProcessConductor]


def pause(c: InProcessConductor, job_id: str, mode: int) -> job_pb2.Job:
    return c.stub.PauseJob(pb.PauseJobRequest(job_id=job_id, mode=mode), timeout=30)


def resume(c: InProcessConductor, job_id: str) -> job_pb2.Job:
    return c.stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), timeout=30)


def spinners(pgid: int) -> list[ProcStat]:
    """The Python processes of the group (the shells that started them excluded)."""
    return [p for p in group_members(pgid) if cmdline(p.pid).startswith(sys.executable + " ")]


def cpu_by_pid(procs: list[ProcStat]) -> dict[int, int]:
    out = {}
    for p in procs:
        st = proc_stat(p.pid)
        assert st is not None, f"process {p.pid} vanished"
        out[p.pid] = st.cpu_ticks
    return out


def run_reference(c: InProcessConductor, steps: int) -> str:
    """The result of the training job run straight through, never paused."""
    job = c.submit(spec_yaml(name="train-ref", project="demo", command=train_command(steps, 0, 10)))
    done = c.wait_ended(job.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    return (Path(done.run_dir) / "result.txt").read_text().strip()


def step_numbers(job: job_pb2.Job) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"^step=(\d+) ", log_text(job), re.MULTILINE)]


def wait_for_step(job: job_pb2.Job, step: int) -> None:
    wait_until(lambda: any(n >= step for n in step_numbers(job)), 30, f"{job.id} to reach step {step}")


def complete_checkpoints(checkpoint_dir: str) -> list[Path]:
    base = Path(checkpoint_dir)
    return sorted(p for p in base.iterdir() if p.is_dir() and p.name.startswith("step-"))


# ---------------------------------------------------------------------- SUSPEND


def test_suspend_freezes_every_process_of_the_group_and_resume_runs_it_on(
    conductor: InProcessConductor,
) -> None:
    # The leader shell starts a spinner child and a shell whose own child spins:
    # four processes, two levels of descendants, all in the job's group.
    command = f"{SPIN} --cpu 1.5 & a=$!; sh -c '{SPIN} --cpu 1.5 & wait $!' & b=$!; wait $a && wait $b"
    job = conductor.submit(spec_yaml(name="spinners", command=command))
    job = conductor.wait_for(job.id, lambda j: j.external_id != "")
    pgid = int(job.external_id)
    wait_until(lambda: len(spinners(pgid)) == 2, 20, "both spinners to start")
    # Both spinners have used some CPU, so they are past their start-up.
    wait_until(lambda: all(p.cpu_ticks > 0 for p in spinners(pgid)), 20, "the spinners to spin")

    paused = pause(conductor, job.id, job_pb2.PAUSE_MODE_SUSPEND)
    assert paused.state == job_pb2.JOB_STATE_PAUSED
    assert paused.pause_mode == job_pb2.PAUSE_MODE_SUSPEND
    members = wait_until(
        lambda: (m := group_members(pgid)) and all(p.state == "T" for p in m) and m,
        5,
        "every process of the group to be stopped",
    )
    assert len(members) == 4, [(p.pid, cmdline(p.pid)) for p in members]
    frozen = spinners(pgid)
    assert len(frozen) == 2
    before = cpu_by_pid(members)
    time.sleep(0.5)
    after = cpu_by_pid(members)
    assert after == before, "CPU time advanced while the job was suspended"
    assert all(p.state == "T" for p in group_members(pgid))
    assert conductor.get(job.id).state == job_pb2.JOB_STATE_PAUSED

    resumed = resume(conductor, job.id)
    assert resumed.state == job_pb2.JOB_STATE_RUNNING
    wait_until(
        lambda: all((st := proc_stat(p.pid)) is None or st.cpu_ticks > before[p.pid] for p in frozen),
        20,
        "the spinners to use CPU again",
    )
    assert not any(p.state == "T" for p in group_members(pgid))
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert done.exit_code == 0
    assert log_text(done).count("spun ") == 2
    assert group_members(pgid) == []


# ---------------------------------------------------------------------- CHECKPOINT


def test_checkpoint_pause_saves_exits_and_resume_continues_to_the_same_result(
    conductor: InProcessConductor,
) -> None:
    steps = 40
    job = conductor.submit(spec_yaml(name="train", project="demo", command=train_command(steps, 0.05, 10)))
    job = conductor.wait_for(job.id, lambda j: j.external_id != "")
    pgid = int(job.external_id)
    wait_for_step(job, 12)

    pausing = pause(conductor, job.id, job_pb2.PAUSE_MODE_CHECKPOINT)
    assert pausing.state in (job_pb2.JOB_STATE_PAUSING, job_pb2.JOB_STATE_PAUSED)
    paused = conductor.wait_for(job.id, "paused")
    assert paused.pause_mode == job_pb2.PAUSE_MODE_CHECKPOINT
    assert group_members(pgid) == [], "a process of the job outlived a checkpoint pause"
    assert proc_stat(pgid) is None

    # The job saved a checkpoint on SIGTERM, at the step it had reached.
    saved = [line for line in log_lines(paused) if line.startswith("paused at step=")]
    assert len(saved) == 1, log_text(paused)
    at = int(saved[0].split("=")[1])
    assert 12 <= at < steps
    newest = Path(paused.checkpoint_dir) / f"step-{at:06d}"
    assert complete_checkpoints(paused.checkpoint_dir)[-1] == newest
    assert {p.name for p in newest.iterdir()} == {"state.json", "config.yaml", "job.json"}
    assert yaml.safe_load((newest / "config.yaml").read_text())["steps"] == steps
    assert json.loads((newest / "job.json").read_text())["job_id"] == job.id
    # Nothing half-written is left: only complete checkpoints and the run's marker.
    hidden = {p.name for p in Path(paused.checkpoint_dir).iterdir() if p.name.startswith(".")}
    assert hidden == {RUN_MARKER}, hidden
    time.sleep(0.3)
    assert conductor.get(job.id).state == job_pb2.JOB_STATE_PAUSED

    resumed = resume(conductor, job.id)
    assert resumed.state == job_pb2.JOB_STATE_RUNNING
    assert resumed.resume_dir == str(newest)
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert done.resume_dir == str(newest)
    text = log_text(done)
    assert f"resumed from {newest} at step={at} " in text
    assert text.count("starting at step=0") == 1, "the job started over instead of resuming"
    # Every step ran exactly once: nothing was redone, nothing skipped.
    assert step_numbers(done) == list(range(1, steps + 1))
    result = (Path(done.run_dir) / "result.txt").read_text().strip()
    assert result == run_reference(conductor, steps)
    assert f"result={result}" in text


def test_a_job_ignoring_the_pause_signal_is_killed_at_the_grace_and_resumes_from_its_newest_checkpoint(
    conductor: InProcessConductor,
) -> None:
    steps = 80
    job = conductor.submit(
        spec_yaml(
            name="stubborn",
            project="demo",
            command=train_command(steps, 0.05, 10, "--ignore-term"),
            pause={"grace": "1s"},
        )
    )
    job = conductor.wait_for(job.id, lambda j: j.external_id != "")
    pgid = int(job.external_id)
    wait_for_step(job, 12)

    pausing = pause(conductor, job.id, job_pb2.PAUSE_MODE_CHECKPOINT)
    assert pausing.state == job_pb2.JOB_STATE_PAUSING, pausing.reason
    # It goes on counting through the grace: the signal was ignored. (The shell
    # that leads the group may be gone; the job is the Python process.)
    time.sleep(0.4)
    during = conductor.get(job.id)
    assert during.state == job_pb2.JOB_STATE_PAUSING, f"PAUSED before the grace ended: {during.reason}"
    assert group_members(pgid), "the job's processes ended before the grace did"
    paused = conductor.wait_for(job.id, "paused", timeout=20)
    assert group_members(pgid) == []
    assert "killed" in paused.reason, paused.reason
    assert "paused at step=" not in log_text(paused), "the job was meant to ignore SIGTERM"
    last = max(step_numbers(paused))
    assert last < steps, "the job finished before the grace ran out; the test proves nothing"
    newest = complete_checkpoints(paused.checkpoint_dir)[-1]
    at = int(newest.name.removeprefix("step-"))
    # The newest is the last multiple of 10 reached, or the one before when the
    # kill cut that save short (its half-written directory does not count).
    assert at in (last // 10 * 10, last // 10 * 10 - 10), (at, last)

    resumed = resume(conductor, job.id)
    assert resumed.resume_dir == str(newest)
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    lines = log_lines(done)
    resumed_at = lines.index(f"resumed from {newest} at step={at} value=" + lines_value(lines, at))
    assert lines[resumed_at + 1].startswith(f"step={at + 1} ")
    # Steps after the newest checkpoint ran twice (the kill lost them), the rest once.
    numbers = step_numbers(done)
    assert numbers == list(range(1, last + 1)) + list(range(at + 1, steps + 1))
    result = (Path(done.run_dir) / "result.txt").read_text().strip()
    assert result == run_reference(conductor, steps)


def lines_value(lines: list[str], step: int) -> str:
    """The model value the log printed for ``step`` (its first occurrence)."""
    for line in lines:
        if line.startswith(f"step={step} value="):
            return line.split("value=")[1]
    raise AssertionError(f"no step={step} line in the log")


# ---------------------------------------------------------------------- bad input


def assert_precondition(call: Callable[[], object], words: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value
    assert words in (info.value.details() or ""), info.value.details()


def test_pause_and_resume_in_the_wrong_state_fail_and_leave_the_job_unchanged(
    conductor_factory: Factory,
) -> None:
    c = conductor_factory(max_running=1)
    running = c.submit(spec_yaml(name="blocker", command="sleep 30"))
    running = c.wait_for(running.id, lambda j: j.external_id != "")
    queued = c.submit(spec_yaml(name="waiting", command="true"))
    assert c.get(queued.id).state == job_pb2.JOB_STATE_QUEUED

    def unchanged(job_id: str, call: Callable[[], object], words: str) -> None:
        before = c.get(job_id)
        assert_precondition(call, words)
        assert c.get(job_id) == before

    for mode in (job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT, job_pb2.PAUSE_MODE_UNSPECIFIED):
        unchanged(queued.id, lambda m=mode: pause(c, queued.id, m), "RUNNING")
    unchanged(queued.id, lambda: resume(c, queued.id), "PAUSED")
    unchanged(running.id, lambda: resume(c, running.id), "PAUSED")

    suspended = pause(c, running.id, job_pb2.PAUSE_MODE_SUSPEND)
    assert suspended.state == job_pb2.JOB_STATE_PAUSED
    for mode in (job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT):
        unchanged(running.id, lambda m=mode: pause(c, running.id, m), "RUNNING")
    # SIGSTOP lands asynchronously: on a loaded machine a member may still be running.
    wait_until(
        lambda: all(p.state == "T" for p in group_members(int(running.external_id))), 10, "the group to stop"
    )

    resume(c, running.id)
    c.stub.CancelJob(pb.CancelJobRequest(job_id=running.id), timeout=30)
    ended = c.wait_ended(running.id)
    assert ended.state == job_pb2.JOB_STATE_CANCELLED
    unchanged(ended.id, lambda: pause(c, ended.id, job_pb2.PAUSE_MODE_SUSPEND), "RUNNING")
    unchanged(ended.id, lambda: resume(c, ended.id), "PAUSED")
    assert c.wait_ended(queued.id).state == job_pb2.JOB_STATE_SUCCEEDED


# ---------------------------------------------------------------------- the example


def test_example_train_spec_submits_with_the_repository_as_workdir(conductor: InProcessConductor) -> None:
    # Submitted from another directory: `workdir: ..` is resolved against the
    # spec file's directory, which makes it the repository root.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "baton.client.cli",
            "submit",
            "../examples/train.yaml",
            "--dry-run",
            "--json",
            "--conductor",
            conductor.address,
        ],
        cwd=REPO / "tests",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert (job["name"], job["project"]) == ("train", "demo")
    workdir = Path(job["spec"]["workdir"])
    assert workdir == REPO
    script = job["spec"]["command"].split()[1]
    assert (workdir / script).is_file()
