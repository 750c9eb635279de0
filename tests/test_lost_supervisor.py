"""A job whose supervisor is lost is adopted, never started a second time.

The local executor's supervisor (a small shell per launch) records the job's
exit status. When it dies without one (``kill -9``, the OOM killer), the job's
process group is still running: the conductor must find it again by its
recorded pid and start time and keep watching it, never launch attempt 2 next
to it, and still reach it with pause and cancel.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.harness import FINAL_STATES, InProcessConductor, SubprocessConductor, kill_job_groups
from tests.procs import TICKER, group_members, proc_stat, spec_yaml, wait_until


def _parent(pid: int) -> int:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return int(raw[raw.rfind(b")") + 2 :].split()[1])


def _supervisor_of(job: job_pb2.Job) -> int:
    """The supervisor (local_shim.sh) is the parent of the job's parent, its exit recorder."""
    shim = _parent(_parent(int(job.external_id)))
    assert "local_shim.sh" in Path(f"/proc/{shim}/cmdline").read_text(), shim
    return shim


def _ticker(ran: Path, stop: Path | None = None, code: int = 0) -> str:
    cmd = f"{TICKER} --ran-file {ran} --interval 0.1 --exit-code {code}"
    return cmd + (f" --stop-file {stop}" if stop else "")


def test_killing_twenty_supervisors_runs_each_job_once_and_cancel_leaves_nothing(
    conductor_factory: object, tmp_path: Path
) -> None:
    c: InProcessConductor = conductor_factory(max_running=20)  # type: ignore[operator]
    ran = tmp_path / "ran"
    jobs = [c.submit(spec_yaml(name=f"lost-{i}", command=_ticker(ran), retries=3)) for i in range(20)]
    running = [c.wait_for(j.id, lambda x: x.state == job_pb2.JOB_STATE_RUNNING and x.external_id != "")
               for j in jobs]  # fmt: skip
    wait_until(lambda: len(ran.read_text().splitlines()) == 20 if ran.exists() else False, what="20 starts")
    groups = {j.id: int(j.external_id) for j in running}
    for j in running:
        os.kill(_supervisor_of(j), signal.SIGKILL)
    # Long enough for a retry (backoff 1 s) to have started, were there one.
    time.sleep(2.5)
    for j in running:
        now = c.get(j.id)
        assert now.state == job_pb2.JOB_STATE_RUNNING, now
        assert now.attempt == 1, f"{j.id} was launched again:\n{now}"
        assert group_members(groups[j.id]), f"the adopted group of {j.id} is gone"
    assert Counter(ran.read_text().split()) == Counter({j.id: 1 for j in jobs})

    for j in running:
        c.stub.CancelJob(pb.CancelJobRequest(job_id=j.id, grace_period={"seconds": 2}), timeout=10)
    for j in running:
        end = c.wait_ended(j.id, timeout=30)
        assert end.state == job_pb2.JOB_STATE_CANCELLED, end
    wait_until(lambda: not any(group_members(g) for g in groups.values()), timeout=10, what="no job left")
    # Each job ran exactly once, counted by the jobs themselves.
    assert Counter(ran.read_text().split()) == Counter({j.id: 1 for j in jobs})


def test_an_adopted_job_reports_its_own_exit_code(conductor: InProcessConductor, tmp_path: Path) -> None:
    ran, stop = tmp_path / "ran", tmp_path / "stop"
    job = conductor.submit(spec_yaml(name="adopt-exit", command=_ticker(ran, stop, code=7), retries=0))
    job = conductor.wait_for(job.id, lambda x: x.external_id != "")
    wait_until(ran.exists, what="the job to start")
    _kill_supervisor(job)
    stop.touch()
    end = conductor.wait_ended(job.id)
    assert end.state == job_pb2.JOB_STATE_FAILED, end
    assert end.exit_code == 7, end
    assert ran.read_text().split() == [job.id]


def test_an_adopted_job_can_be_suspended_and_resumed(conductor: InProcessConductor, tmp_path: Path) -> None:
    ran, stop = tmp_path / "ran", tmp_path / "stop"
    job = conductor.submit(spec_yaml(name="adopt-pause", command=_ticker(ran, stop)))
    job = conductor.wait_for(job.id, lambda x: x.external_id != "")
    wait_until(ran.exists, what="the job to start")
    _kill_supervisor(job)
    leader = int(job.external_id)
    paused = conductor.stub.PauseJob(
        pb.PauseJobRequest(job_id=job.id, mode=job_pb2.PAUSE_MODE_SUSPEND), timeout=10
    )
    assert paused.state == job_pb2.JOB_STATE_PAUSED
    wait_until(lambda: all(p.state in "Tt" for p in group_members(leader)), timeout=5, what="stopped")
    conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=10)
    wait_until(lambda: all(p.state not in "Tt" for p in group_members(leader)), timeout=5, what="running")
    stop.touch()
    end = conductor.wait_ended(job.id)
    assert end.state == job_pb2.JOB_STATE_SUCCEEDED, end
    assert end.exit_code == 0
    assert ran.read_text().split() == [job.id]


def _kill_supervisor(job: job_pb2.Job) -> None:
    shim = _supervisor_of(job)
    os.kill(shim, signal.SIGKILL)
    wait_until(lambda: (st := proc_stat(shim)) is None or st.state == "Z", timeout=5, what="the kill")


def test_a_conductor_restarted_after_the_supervisor_was_lost_adopts_the_job(tmp_path: Path) -> None:
    ran, stop = tmp_path / "ran", tmp_path / "stop"
    home = tmp_path / "home"
    first = SubprocessConductor(home).start()
    second: SubprocessConductor | None = None
    try:
        job = first.submit(spec_yaml(name="adopt-restart", command=_ticker(ran, stop, code=3), retries=1))
        job = first.wait_for(job.id, lambda x: x.external_id != "")
        wait_until(ran.exists, what="the job to start")
        first.kill9()
        _kill_supervisor(job)
        second = SubprocessConductor(home).start()
        time.sleep(1.5)  # a retry (backoff 1 s) would have started by now
        now = second.get(job.id)
        assert now.state == job_pb2.JOB_STATE_RUNNING and now.attempt == 1, now
        assert ran.read_text().split() == [job.id]
        # The adopted launch ends with the job's own exit code (3), so the
        # retry runs: after it, never beside it.
        stop.touch()
        retrying = second.wait_for(
            job.id, lambda x: "retry" in x.reason or x.attempt == 2 or x.state in FINAL_STATES
        )
        assert retrying.attempt == 1 and "exit code 3" in retrying.reason, retrying
        wait_until(lambda: len(ran.read_text().split()) == 2, what="the retry to start")
        assert second.get(job.id).attempt == 2
    finally:
        if second is not None:
            second.stop()
        first.stop()
        kill_job_groups(home / "status")


def test_a_lost_exit_recorder_leaves_the_job_running_once_and_its_end_unknown_not_retried(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    ran, stop = tmp_path / "ran", tmp_path / "stop"
    job = conductor.submit(spec_yaml(name="no-recorder", command=_ticker(ran, stop), retries=2))
    job = conductor.wait_for(job.id, lambda x: x.external_id != "")
    wait_until(ran.exists, what="the job to start")
    recorder = _parent(int(job.external_id))
    os.kill(recorder, signal.SIGKILL)
    time.sleep(1.5)
    assert conductor.get(job.id).state == job_pb2.JOB_STATE_RUNNING
    assert group_members(int(job.external_id)), "losing the recorder must not end the job"
    stop.touch()
    end = conductor.wait_ended(job.id, timeout=20)
    assert end.state == job_pb2.JOB_STATE_FAILED and "unknown" in end.reason, end
    assert not end.HasField("exit_code")
    assert ran.read_text().split() == [job.id], "an end of unknown outcome is not retried"
