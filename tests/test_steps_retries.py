"""Steps, retries, time limits and heartbeats, with real processes."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

from baton.common.jobfile import read_job
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.harness import InProcessConductor
from tests.procs import group_members, log_lines, log_text, spec_yaml, wait_until

Factory = Callable[..., InProcessConductor]

# Each step says who it is, then waits for its gate file (under $GATES).
ANNOUNCE = 'echo "BATON_STEP=$BATON_STEP BATON_STEP_NAME=$BATON_STEP_NAME resume=${BATON_RESUME_FROM:-none}"'
WAIT_GATE = 'while [ ! -e "$GATES/$BATON_STEP_NAME" ]; do sleep 0.05; done; echo "done $BATON_STEP_NAME"'


def gated_steps(gates: Path, first_extra: str = "") -> str:
    steps = [
        {"name": name, "command": f"{ANNOUNCE}; {extra}{WAIT_GATE}"}
        for name, extra in (("one", first_extra), ("two", ""), ("three", ""))
    ]
    return spec_yaml(name="three-steps", steps=steps, env={"GATES": str(gates)})


def open_gate(gates: Path, name: str) -> None:
    (gates / name).touch()


def announced(job: job_pb2.Job) -> list[str]:
    """The ``BATON_STEP=... BATON_STEP_NAME=...`` lines of the log, in order."""
    return [line.split(" resume=")[0] for line in log_lines(job) if line.startswith("BATON_STEP=")]


def test_steps_run_in_order_with_their_environment_and_the_job_shows_the_current_step(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    job = conductor.submit(gated_steps(gates))
    assert job.step_count == 3
    for index, name in enumerate(("one", "two", "three"), start=1):
        current = conductor.wait_for(
            job.id, lambda j, i=index: j.step == i and j.state == job_pb2.JOB_STATE_RUNNING
        )
        assert current.step_name == name
        assert current.step_count == 3
        wait_until(lambda i=index, j=current: len(announced(j)) == i, 20, f"step {index} to start")
        assert conductor.get(job.id).step == index, "the job moved on while its step was still waiting"
        open_gate(gates, name)
    done = conductor.wait_ended(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert (done.step, done.step_name) == (3, "three")
    assert announced(done) == [
        "BATON_STEP=1 BATON_STEP_NAME=one",
        "BATON_STEP=2 BATON_STEP_NAME=two",
        "BATON_STEP=3 BATON_STEP_NAME=three",
    ]
    assert [line for line in log_lines(done) if line.startswith("done ")] == [
        "done one",
        "done two",
        "done three",
    ]


def test_a_checkpoint_pause_in_step_two_resumes_at_step_two_and_never_reruns_step_one(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    open_gate(gates, "one")
    open_gate(gates, "three")
    # Step one leaves a checkpoint behind, as a training step would.
    save = (
        'mkdir -p "$BATON_CHECKPOINT_DIR/.one.tmp" && '
        'mv "$BATON_CHECKPOINT_DIR/.one.tmp" "$BATON_CHECKPOINT_DIR/after-one"; '
    )
    job = conductor.submit(gated_steps(gates, first_extra=save))
    running = conductor.wait_for(job.id, lambda j: j.step == 2 and j.external_id != "")
    wait_until(lambda: len(announced(running)) == 2, 20, "step two to start")

    conductor.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=job_pb2.PAUSE_MODE_CHECKPOINT), timeout=30)
    paused = conductor.wait_for(job.id, "paused")
    assert (paused.step, paused.step_name) == (2, "two")
    assert group_members(int(running.external_id)) == []

    open_gate(gates, "two")
    resumed = conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=30)
    checkpoint = str(Path(paused.checkpoint_dir) / "after-one")
    assert (resumed.step, resumed.step_name) == (2, "two")
    assert resumed.resume_dir == checkpoint
    done = conductor.wait_ended(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert announced(done) == [
        "BATON_STEP=1 BATON_STEP_NAME=one",
        "BATON_STEP=2 BATON_STEP_NAME=two",
        "BATON_STEP=2 BATON_STEP_NAME=two",
        "BATON_STEP=3 BATON_STEP_NAME=three",
    ]
    # Step two ran again from its start, with the checkpoint to continue from.
    step_two = [line for line in log_lines(done) if line.startswith("BATON_STEP=2 ")]
    assert step_two[1].endswith(f"resume={checkpoint}")
    assert [line for line in log_lines(done) if line.startswith("done ")] == [
        "done one",
        "done two",
        "done three",
    ]


def test_start_step_two_never_runs_step_one(conductor: InProcessConductor, tmp_path: Path) -> None:
    marker = tmp_path / "step-one-ran"
    steps = [
        {"name": "one", "command": f"{ANNOUNCE}; touch {shlex.quote(str(marker))}"},
        {"name": "two", "command": ANNOUNCE},
        {"name": "three", "command": ANNOUNCE},
    ]
    job = conductor.submit(spec_yaml(name="skip-one", steps=steps), start_step=2)
    assert job.start_step == 2
    done = conductor.wait_ended(job.id)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert not marker.exists(), "step one ran"
    assert announced(done) == ["BATON_STEP=2 BATON_STEP_NAME=two", "BATON_STEP=3 BATON_STEP_NAME=three"]
    assert (done.step, done.start_step) == (3, 2)


def test_a_step_failing_twice_then_succeeding_ends_succeeded_on_attempt_3(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    flaky = (
        'n=$(cat "$COUNTER" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$COUNTER"; '
        'echo "attempt=$BATON_ATTEMPT step=$BATON_STEP resume=${BATON_RESUME_FROM:-none} at=$(date +%s.%N)"; '
        # The first attempt leaves a checkpoint, so retries have one to continue from.
        'if [ "$n" = 1 ]; then mkdir -p "$BATON_CHECKPOINT_DIR/.c.tmp" && '
        'mv "$BATON_CHECKPOINT_DIR/.c.tmp" "$BATON_CHECKPOINT_DIR/ckpt-1"; fi; '
        '[ "$n" -ge 3 ] || exit 1'
    )
    steps = [{"name": "prep", "command": "echo prep"}, {"name": "flaky", "command": flaky}]
    job = conductor.submit(spec_yaml(name="flaky", steps=steps, retries=2, env={"COUNTER": str(counter)}))
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert (done.step, done.attempt) == (2, 3)
    assert counter.read_text().strip() == "3"
    checkpoint = str(Path(done.checkpoint_dir) / "ckpt-1")
    assert done.resume_dir == checkpoint
    assert log_lines(done).count("prep") == 1, "a retry of step two re-ran step one"
    attempts = [
        re.fullmatch(r"attempt=(\d+) step=(\d+) resume=(\S+) at=([\d.]+)", line)
        for line in log_lines(done)
        if line.startswith("attempt=")
    ]
    assert all(attempts), log_text(done)
    seen = [(m.group(1), m.group(2), m.group(3)) for m in attempts if m]
    assert seen == [("1", "2", "none"), ("2", "2", checkpoint), ("3", "2", checkpoint)]
    # Backoff: at least 1 s before the first retry, then at least 2 s.
    starts = [float(m.group(4)) for m in attempts if m]
    assert starts[1] - starts[0] >= 0.95
    assert starts[2] - starts[1] >= 1.95


def test_a_job_failing_more_often_than_its_retries_ends_failed_with_its_exit_code(
    conductor: InProcessConductor,
) -> None:
    job = conductor.submit(spec_yaml(name="hopeless", command="echo trying; exit 3", retries=1))
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_FAILED, done
    assert done.HasField("exit_code") and done.exit_code == 3
    assert done.attempt == 2
    assert "exit code 3" in done.reason
    assert log_lines(done).count("trying") == 2


def test_a_job_past_max_duration_is_cancelled_with_that_reason(conductor: InProcessConductor) -> None:
    job = conductor.submit(spec_yaml(name="too-long", command="echo started; sleep 30", max_duration="1s"))
    running = conductor.wait_for(job.id, lambda j: j.external_id != "")
    done = conductor.wait_ended(job.id, timeout=30)
    assert done.state == job_pb2.JOB_STATE_CANCELLED, done
    assert "max_duration" in done.reason, done.reason
    assert "started" in log_text(done)
    assert group_members(int(running.external_id)) == []


def test_a_running_jobs_heartbeat_in_status_json_advances(conductor_factory: Factory) -> None:
    c = conductor_factory(heartbeat=0.2)
    job = c.submit(spec_yaml(name="beating", command="sleep 30"))
    job = c.wait_for(job.id, "running")
    status = Path(job.run_dir) / "status.json"

    def heartbeat() -> int:
        try:
            return read_job(status).heartbeat_time.ToNanoseconds()
        except (OSError, ValueError):
            return 0

    seen = [wait_until(heartbeat, 10, "a heartbeat in status.json")]
    for _ in range(2):
        seen.append(
            wait_until(lambda last=seen[-1]: (h := heartbeat()) > last and h, 10, "the next heartbeat")
        )
    assert seen == sorted(seen) and len(set(seen)) == 3
    on_disk = read_job(status)
    assert on_disk.state == job_pb2.JOB_STATE_RUNNING
    assert on_disk.id == job.id
    c.stub.CancelJob(pb.CancelJobRequest(job_id=job.id, grace_period={"seconds": 1}), timeout=30)
    assert c.wait_ended(job.id).state == job_pb2.JOB_STATE_CANCELLED
