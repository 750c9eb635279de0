"""A conductor killed with SIGKILL and started again loses nothing and runs nothing twice.

The conductor runs as a real subprocess (`baton conductor`); its jobs are real
processes that outlive it.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.harness import SubprocessConductor
from tests.procs import (
    TICKER,
    group_members,
    log_lines,
    log_text,
    proc_stat,
    spec_yaml,
    train_command,
    wait_until,
)

Start = Callable[[Path], SubprocessConductor]
ARGS = ("--max-running", "20")
# The flags every `baton conductor` of this module starts with (conftest: start_conductor).
CONDUCTOR_ARGS = ARGS
# The exit codes of the five jobs that end while the conductor is down.
DOWN_CODES = (0, 3, 4, 5, 7)


def ticker(ran: Path, *, stop: Path | None = None, ticks: int = 0, code: int = 0) -> str:
    args = [TICKER, "--ran-file", shlex.quote(str(ran)), "--exit-code", str(code)]
    if stop is not None:
        args += ["--stop-file", shlex.quote(str(stop))]
    if ticks:
        args += ["--ticks", str(ticks)]
    return " ".join(args)


def ticks(job: job_pb2.Job) -> int:
    return sum(1 for line in log_lines(job) if line.startswith("tick "))


def assert_log_without_gap(job: job_pb2.Job) -> int:
    """The log is one start, ticks 0..n-1 in order, one stop: nothing lost, nothing twice."""
    lines = log_lines(job)
    n = len(lines) - 2
    assert lines == [f"start {job.id}", *(f"tick {i}" for i in range(n)), "stop"], (
        f"{job.name}: log has a gap or a restart:\n" + "\n".join(lines)
    )
    return n


def launch_exit_recorded(home: Path, job_id: str) -> bool:
    return any((home / "state" / "launches" / job_id).glob("*/exit"))


def test_a_conductor_killed_with_jobs_running_and_queued_recovers_every_one(
    start_conductor: Start, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran.txt"
    stops = tmp_path / "stops"
    stops.mkdir()
    c = start_conductor(home)

    # 20 running: 15 tick until told to stop, 5 will be told while the conductor is down.
    running: dict[str, job_pb2.Job] = {}
    codes: dict[str, int] = {}
    for i in range(20):
        name = f"run-{i:02d}"
        code = DOWN_CODES[i - 15] if i >= 15 else 0
        job = c.submit(spec_yaml(name=name, command=ticker(ran, stop=stops / name, code=code)))
        running[job.id] = job
        codes[job.id] = code
    # 20 queued behind them (--max-running 20): short runs of five ticks.
    queued = [c.submit(spec_yaml(name=f"queued-{i:02d}", command=ticker(ran, ticks=5))).id for i in range(20)]
    for job_id in running:
        running[job_id] = c.wait_for(job_id, lambda j: j.external_id != "", timeout=60)
    for job_id in running:
        wait_until(lambda j=running[job_id]: ticks(j) >= 3, 60, f"{job_id} to tick")
    assert {c.get(q).state for q in queued} == {job_pb2.JOB_STATE_QUEUED}

    pids = {job_id: int(job.external_id) for job_id, job in running.items()}
    starts = {}
    for job_id, pid in pids.items():
        st = proc_stat(pid)
        assert st is not None, f"{job_id}: its process {pid} is not running"
        starts[job_id] = st.start_time
    down = [job_id for job_id in running if running[job_id].name >= "run-15"]
    alive = [job_id for job_id in running if job_id not in down]
    assert len(down) == 5 and len(alive) == 15

    c.kill9()
    at_kill = {job_id: ticks(running[job_id]) for job_id in alive}
    for job_id in down:
        (stops / running[job_id].name).touch()
    for job_id in down:
        wait_until(lambda j=job_id: launch_exit_recorded(home, j), 30, f"{job_id} to end while down")
    # The others kept running, and writing their logs, with no conductor.
    for job_id in alive:
        wait_until(lambda j=job_id: ticks(running[j]) > at_kill[j], 30, f"{job_id} to tick while down")

    c = start_conductor(home)
    listed = c.stub.ListJobs(pb.ListJobsRequest(page_size=100), timeout=30)
    assert sorted(j.id for j in listed.jobs) == sorted([*running, *queued])
    assert not listed.next_page_token

    for job_id in alive:
        job = c.get(job_id)
        assert job.state == job_pb2.JOB_STATE_RUNNING, job
        assert job.external_id == str(pids[job_id]), "a running job was started again"
        st = proc_stat(pids[job_id])
        assert st is not None and st.start_time == starts[job_id], f"{job_id}: not its original process"
    for job_id in down:
        job = c.wait_ended(job_id, timeout=30)
        want = job_pb2.JOB_STATE_SUCCEEDED if codes[job_id] == 0 else job_pb2.JOB_STATE_FAILED
        assert (job.state, job.exit_code) == (want, codes[job_id]), job
        assert job.HasField("exit_code")

    for job_id in alive:
        (stops / running[job_id].name).touch()
    for job_id in [*alive, *queued]:
        job = c.wait_ended(job_id, timeout=60)
        assert (job.state, job.exit_code) == (job_pb2.JOB_STATE_SUCCEEDED, 0), job

    for job_id in running:
        n = assert_log_without_gap(c.get(job_id))
        if job_id in alive:
            assert n > at_kill[job_id]
    for job_id in queued:
        assert assert_log_without_gap(c.get(job_id)) == 5
    # Every job started exactly once, across both conductors.
    counts = Counter(ran.read_text().split())
    assert set(counts) == {*running, *queued}
    assert [job_id for job_id, n in counts.items() if n != 1] == []


def test_a_job_acknowledged_just_before_a_kill_is_there_after_the_restart(
    start_conductor: Start, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    ran = tmp_path / "ran.txt"
    c = start_conductor(home)
    ids = [c.submit(spec_yaml(name=f"quick-{i}", command=ticker(ran, ticks=3))).id for i in range(3)]
    c.kill9()  # straight after the last SubmitJob was answered

    c = start_conductor(home)
    for job_id in ids:
        job = c.wait_ended(job_id, timeout=60)
        assert (job.state, job.exit_code) == (job_pb2.JOB_STATE_SUCCEEDED, 0), job
        assert assert_log_without_gap(job) == 3
    assert sorted(j.id for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs) == sorted(ids)
    assert sorted(ran.read_text().split()) == sorted(ids)


def test_pausing_and_cancelling_jobs_finish_their_transition_after_a_restart(
    start_conductor: Start, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    c = start_conductor(home)
    # Both ignore SIGTERM, so each is still in its transition when the conductor dies.
    # `exec` makes the Python process the group's leader.
    stubborn = c.submit(
        spec_yaml(
            name="stubborn",
            command="exec " + train_command(100, 0.05, 5, "--ignore-term"),
            pause={"grace": "2s"},
        )
    )
    deaf = c.submit(spec_yaml(name="deaf", command="trap '' TERM; sleep 30"))
    stubborn = c.wait_for(stubborn.id, lambda j: j.external_id != "")
    deaf = c.wait_for(deaf.id, lambda j: j.external_id != "")
    wait_until(lambda: "step=6 " in log_text(stubborn), 30, "a first checkpoint")
    pausing = c.stub.PauseJob(
        pb.PauseJobRequest(job_id=stubborn.id, mode=job_pb2.PAUSE_MODE_CHECKPOINT), timeout=30
    )
    cancelling = c.stub.CancelJob(
        pb.CancelJobRequest(job_id=deaf.id, grace_period={"seconds": 2}, reason="no longer needed"),
        timeout=30,
    )
    assert pausing.state == job_pb2.JOB_STATE_PAUSING, pausing.reason
    assert cancelling.state == job_pb2.JOB_STATE_CANCELLING, cancelling.reason
    c.kill9()

    c = start_conductor(home)
    paused = c.wait_for(stubborn.id, "paused", timeout=30)
    assert "killed" in paused.reason, paused.reason
    assert group_members(int(stubborn.external_id)) == []
    cancelled = c.wait_ended(deaf.id, timeout=30)
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED, cancelled
    assert cancelled.reason == "no longer needed"
    assert group_members(int(deaf.external_id)) == []

    resumed = c.stub.ResumeJob(pb.ResumeJobRequest(job_id=stubborn.id), timeout=30)
    assert resumed.resume_dir.startswith(paused.checkpoint_dir + "/step-")
    done = c.wait_ended(stubborn.id, timeout=60)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert f"resumed from {resumed.resume_dir} " in log_text(done)
