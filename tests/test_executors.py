"""One lifecycle suite, run on every executor: local, Slurm and Ray.

A user changes one line of a spec (``executor: slurm``) and nothing else
changes: the same log bytes by follow, exit codes and signals, cancel with
Baton's grace, checkpoint pause and resume, retries, max_duration, steps, and
a conductor killed with ``kill -9`` while jobs run or end. Each engine is real
(tools/testclusters) and runs only under its marker: ``pytest -m slurm`` or
``pytest -m ray`` runs one engine's suite alone.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.harness import SubprocessConductor, kill_job_groups
from tests.procs import log_text, proc_stat, spec_yaml, train_command
from tools.testclusters.ray import RayHead
from tools.testclusters.ray import call as ray_call
from tools.testclusters.slurm import SlurmCluster

S = job_pb2


@dataclass
class Engine:
    name: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("local"),
        pytest.param("slurm", marks=pytest.mark.slurm),
        pytest.param("ray", marks=pytest.mark.ray),
    ],
)
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "slurm":
        cluster: SlurmCluster = request.getfixturevalue("slurm_cluster")
        return Engine("slurm", ["--slurm"], dict(cluster.env))
    if request.param == "ray":
        head: RayHead = request.getfixturevalue("ray_head")
        return Engine("ray", ["--ray-address", head.address])
    return Engine("local")


@pytest.fixture
def conductor(engine: Engine, tmp_path: Path) -> Iterator[SubprocessConductor]:
    c = SubprocessConductor(tmp_path / "home", "--max-running", "4", *engine.args, env=engine.env).start()
    yield c
    c.stop()
    kill_job_groups(tmp_path / "home" / "status")


def submit(c: SubprocessConductor, engine: Engine, **fields: object) -> job_pb2.Job:
    return c.submit(spec_yaml(executor=engine.name, **fields))


def started(c: SubprocessConductor, job_id: str, says: str = "") -> job_pb2.Job:
    """The job once its process runs (an engine may queue it first) and its log says ``says``."""
    return c.wait_for(
        job_id, lambda j: j.state == S.JOB_STATE_RUNNING and not j.reason and says in log_text(j), timeout=60
    )


def follow(c: SubprocessConductor, job_id: str) -> tuple[bytes, job_pb2.LogChunk]:
    data, last = b"", None
    for chunk in c.stub.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=True), timeout=90):
        data += chunk.data
        last = chunk
    assert last is not None and last.complete
    return data, last


def error_info(err: grpc.RpcError) -> tuple[str, dict[str, str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo")


def test_follow_gives_the_exact_bytes_and_the_exit_code(
    conductor: SubprocessConductor, engine: Engine
) -> None:
    command = "printf 'one\\n'; printf 'two\\t\\xe2\\x9c\\x93\\n' >&2; printf 'no newline'; exit 3"
    job = submit(conductor, engine, name="exact", command=command)
    data, last = follow(conductor, job.id)
    assert data == "one\ntwo\t✓\nno newline".encode()
    assert last.exit_code == 3 and last.state == S.JOB_STATE_FAILED
    done = conductor.get(job.id)
    assert done.exit_code == 3 and not done.HasField("signal")
    assert (Path(done.run_dir) / "output.log").read_bytes() == data, "Baton's or the engine's lines got in"
    assert done.executor == engine.name and done.external_id


def test_a_job_killed_by_a_signal_reports_the_signal(conductor: SubprocessConductor, engine: Engine) -> None:
    job = submit(conductor, engine, name="killed", command="echo up; kill -KILL $$")
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == S.JOB_STATE_FAILED
    assert done.signal == 9 and done.exit_code == 137, done


def test_cancel_gives_the_job_its_grace(
    conductor: SubprocessConductor, engine: Engine, tmp_path: Path
) -> None:
    saved = tmp_path / "saved"
    command = (
        f"trap 'sleep 1; echo saved > {saved}; echo cleaned up; exit 0' TERM; "
        "echo waiting; while true; do sleep 0.1; done"
    )
    job = submit(conductor, engine, name="graceful", command=command)
    started(conductor, job.id, says="waiting")
    asked = time.monotonic()
    conductor.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=30)
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == S.JOB_STATE_CANCELLED
    assert saved.read_text() == "saved\n", "the job was killed inside its grace"
    assert time.monotonic() - asked >= 1.0
    assert "cleaned up" in log_text(done)
    # A job that ignores the request is killed when the grace ends.
    ignores = "trap '' TERM; echo ignoring; while true; do sleep 0.1; done"
    stubborn = submit(conductor, engine, name="stubborn", command=ignores)
    started(conductor, stubborn.id, says="ignoring")
    asked = time.monotonic()
    grace = duration_pb2.Duration(seconds=1)
    conductor.stub.CancelJob(pb.CancelJobRequest(job_id=stubborn.id, grace_period=grace), timeout=30)
    killed = conductor.wait_ended(stubborn.id, timeout=60)
    assert killed.state == S.JOB_STATE_CANCELLED and killed.signal == 9, killed
    assert time.monotonic() - asked >= 1.0


def test_checkpoint_pause_and_resume_from_that_checkpoint(
    conductor: SubprocessConductor, engine: Engine
) -> None:
    command = train_command(60, 0.05, 10)
    job = submit(conductor, engine, name="train", project="demo", command=command)
    started(conductor, job.id)
    conductor.wait_for(job.id, lambda j: "step=12 " in log_text(j), timeout=60)
    conductor.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_CHECKPOINT), timeout=30)
    paused = conductor.wait_for(job.id, "paused", timeout=60)
    assert paused.pause_mode == S.PAUSE_MODE_CHECKPOINT
    newest = paused.last_checkpoint
    assert newest.startswith("step-"), paused
    conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=30)
    done = conductor.wait_ended(job.id, timeout=120)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    assert done.resume_dir == str(Path(done.checkpoint_dir) / newest)
    text = log_text(done)
    assert f"resumed from {done.resume_dir} " in text
    assert text.count("starting at step=0") == 1, "the job started over instead of resuming"


def test_suspend_where_the_executor_offers_it(conductor: SubprocessConductor, engine: Engine) -> None:
    info = conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    offered = {e.name: set(e.pause_modes) for e in info.executors}[engine.name]
    job = submit(conductor, engine, name="spin", command="echo spinning; exec python3 -c 'while True: pass'")
    started(conductor, job.id, says="spinning")
    if S.PAUSE_MODE_SUSPEND not in offered:
        with pytest.raises(grpc.RpcError) as refused:
            conductor.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_SUSPEND), timeout=30)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert engine.name in (refused.value.details() or "")
        reason, metadata = error_info(refused.value)
        assert reason == "PAUSE_MODE_UNSUPPORTED" and metadata["executor"] == engine.name
        conductor.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=30)
        conductor.wait_ended(job.id, timeout=60)
        return
    health = conductor.stub.GetJobHealth(pb.GetJobHealthRequest(job_id=job.id), timeout=10)
    pid = int(health.pid)
    assert pid > 0
    conductor.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_SUSPEND), timeout=30)
    assert conductor.wait_for(job.id, "paused").pause_mode == S.PAUSE_MODE_SUSPEND
    time.sleep(0.3)
    before = proc_stat(pid)
    time.sleep(1.0)
    after = proc_stat(pid)
    assert before is not None and after is not None
    assert after.cpu_ticks == before.cpu_ticks, "a suspended job kept using CPU"
    conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=30)
    time.sleep(1.0)
    running = proc_stat(pid)
    assert running is not None and running.cpu_ticks > after.cpu_ticks
    conductor.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=30)
    assert conductor.wait_ended(job.id, timeout=60).state == S.JOB_STATE_CANCELLED


def test_retries_steps_and_max_duration(
    conductor: SubprocessConductor, engine: Engine, tmp_path: Path
) -> None:
    tries = tmp_path / "tries"
    flaky = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 2 ]"
    job = submit(
        conductor, engine, name="steps", retries=1,
        steps=[{"name": "prepare", "command": "echo prepared"}, {"name": "flaky", "command": flaky}],
    )  # fmt: skip
    done = conductor.wait_ended(job.id, timeout=120)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    assert [s.state for s in done.steps] == [S.STEP_STATE_SUCCEEDED, S.STEP_STATE_SUCCEEDED]
    assert done.steps[1].attempts == 2 and tries.read_text() == "x\nx\n"
    assert "prepared" in log_text(done)

    overdue = submit(conductor, engine, name="overdue", command="sleep 60", max_duration="2s")
    ended = conductor.wait_ended(overdue.id, timeout=90)
    assert ended.state == S.JOB_STATE_CANCELLED and "max_duration" in ended.reason, ended


def test_kill_9_of_the_conductor_loses_no_job_and_runs_none_twice(
    conductor: SubprocessConductor, engine: Engine, tmp_path: Path
) -> None:
    gate, runs, ended_at = tmp_path / "gate", tmp_path / "runs", tmp_path / "ended"
    waiting = submit(
        conductor, engine, name="waits",
        command=f"echo run >> {runs}; echo up; while [ ! -e {gate} ]; do sleep 0.05; done; exit 4",
    )  # fmt: skip
    ending = submit(conductor, engine, name="ends", command=f"echo up; sleep 1.5; touch {ended_at}; exit 5")
    started(conductor, waiting.id, says="up")
    started(conductor, ending.id, says="up")
    conductor.kill9()
    deadline = time.monotonic() + 30
    while not ended_at.exists():  # `ends` ends while no conductor runs
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.05)
    time.sleep(1.0)
    down_at = time.time()
    conductor.start()
    ended = conductor.wait_ended(ending.id, timeout=60)
    assert ended.state == S.JOB_STATE_FAILED and ended.exit_code == 5, ended
    assert ended.end_time.ToSeconds() < down_at, "the end was dated at the restart, not when it happened"
    running = conductor.get(waiting.id)
    assert running.state == S.JOB_STATE_RUNNING and running.attempt == 1
    gate.touch()
    done = conductor.wait_ended(waiting.id, timeout=60)
    assert done.state == S.JOB_STATE_FAILED and done.exit_code == 4, done
    assert runs.read_text() == "run\n", "the job ran twice"


def test_conductor_info_lists_what_the_executor_offers(
    conductor: SubprocessConductor, engine: Engine
) -> None:
    info = conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    offered = {e.name: e for e in info.executors}
    assert set(offered) == {"local", engine.name}
    modes = set(offered[engine.name].pause_modes)
    health = set(offered[engine.name].health_fields)
    assert S.PAUSE_MODE_CHECKPOINT in modes and {"pid", "alive"} <= health
    if engine.name == "ray":
        assert modes == {S.PAUSE_MODE_CHECKPOINT} and "cpu_percent" not in health
    else:
        assert S.PAUSE_MODE_SUSPEND in modes


def test_a_job_ended_behind_batons_back_is_reported_as_the_engine_saw_it(
    conductor: SubprocessConductor, engine: Engine
) -> None:
    if engine.name == "local":
        pytest.skip("the local executor's own supervisor has its tests (test_lost_supervisor.py)")
    job = submit(conductor, engine, name="victim", command="echo up; exec sleep 300")
    job = started(conductor, job.id, says="up")
    if engine.name == "slurm":
        # An administrator's kill of the whole allocation, wrapper included.
        cluster_env = engine.env
        subprocess.run(["scancel", "--batch", "--full", "--signal=KILL", job.external_id],
                       env=cluster_env, check=True, timeout=30)  # fmt: skip
    else:
        status, _ = ray_call(engine.args[1], "POST", f"/api/jobs/{job.external_id}/stop")
        assert status == 200
    done = conductor.wait_ended(job.id, timeout=60)
    assert done.state == S.JOB_STATE_FAILED, done
    assert done.signal == 9, done


@pytest.mark.slurm
def test_a_submission_whose_id_was_never_learned_is_found_not_repeated(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """kill -9 between sbatch submitting and the conductor hearing the id."""
    slow = tmp_path / "slow-bin"
    slow.mkdir()
    submitted = tmp_path / "submitted"
    real = shutil.which("sbatch", path=slurm_cluster.env["PATH"])
    (slow / "sbatch").write_text(
        f"#!/bin/sh\nout=$({real} \"$@\") || exit $?\necho \"$out\" > {submitted}\nsleep 60\necho \"$out\"\n"
    )
    (slow / "sbatch").chmod(0o755)
    env = dict(slurm_cluster.env)
    slow_env = {**env, "PATH": f"{slow}:{env['PATH']}"}
    c = SubprocessConductor(tmp_path / "home", "--slurm", env=slow_env).start()
    try:
        gate, runs = tmp_path / "gate", tmp_path / "runs"
        waits = f"echo run >> {runs}; while [ ! -e {gate} ]; do sleep 0.05; done"
        job = c.submit(spec_yaml(executor="slurm", name="once", command=waits))
        deadline = time.monotonic() + 30
        while not submitted.exists():
            assert time.monotonic() < deadline, "sbatch was never called"
            time.sleep(0.05)
        c.kill9()
        c.extra_env = env  # the restarted conductor's sbatch answers at once
        c.start()
        running = c.wait_for(job.id, lambda j: j.state == S.JOB_STATE_RUNNING and j.external_id != "", 60)
        assert running.external_id == submitted.read_text().strip()
        assert running.attempt == 1
        gate.touch()
        done = c.wait_ended(job.id, timeout=60)
        assert done.state == S.JOB_STATE_SUCCEEDED, done
        assert runs.read_text() == "run\n", "the step was submitted twice"
        named = slurm_cluster.run("squeue", "-h", "-t", "all", f"--name=baton-{job.id}-1", "-o", "%i").stdout
        assert named.split() == [running.external_id]
    finally:
        c.stop()
        subprocess.run(["pkill", "-f", str(slow / "sbatch")], check=False)
        slurm_cluster.cancel_all(wait=15)


@pytest.mark.slurm
def test_a_request_slurm_cannot_meet_fails_the_job_with_slurms_reason(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    c = SubprocessConductor(tmp_path / "home", "--slurm", env=dict(slurm_cluster.env)).start()
    try:
        job = c.submit(spec_yaml(executor="slurm", name="huge", command="true", resources={"cpus": 512}))
        done = c.wait_ended(job.id, timeout=60)
        assert done.state == S.JOB_STATE_FAILED
        assert done.reason.startswith("could not start: sbatch refused the job:"), done.reason
        assert "More processors requested than permitted" in done.reason
        assert len(done.reason) < 700
    finally:
        c.stop()
        slurm_cluster.cancel_all(wait=15)
