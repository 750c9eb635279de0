"""Local resources honoured (issue 14): admission by what is free, each job its own GPUs.

Real conductors and real processes. The jobs are shell loops that write their
environment to ``env.txt`` in their run directory, then run until a ``stop``
file appears there (or until their pause signal), so a test decides when each
one ends. ``--capacity`` gives GPU ids that need no GPU: Baton only hands ids
out, it never touches the devices.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.client import exitcodes
from baton.client.cli import main
from baton.conductor.capacity import (
    Capacity,
    CapacityOverride,
    Ledger,
    Request,
    detect_capacity,
    parse_capacity,
)
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.harness import REPO, InProcessConductor, SubprocessConductor
from tests.procs import spec_yaml, wait_until

Factory = Callable[..., InProcessConductor]
S = job_pb2

# Writes its environment (atomically), then runs until told to stop; exits 0
# on SIGTERM, so a checkpoint pause ends it as a job that saved would.
HOLD = (
    'trap "exit 0" TERM; env > "$BATON_RUN_DIR/env.tmp" && mv "$BATON_RUN_DIR/env.tmp" '
    '"$BATON_RUN_DIR/env.txt"; while [ ! -e "$BATON_RUN_DIR/stop" ]; do sleep 0.05; done'
)


def job_spec(name: str, **resources: object) -> str:
    return spec_yaml(name=name, command=HOLD, resources=resources)


def env_of(job: job_pb2.Job, timeout: float = 30.0) -> dict[str, str]:
    """The environment the job's current launch wrote."""
    path = Path(job.run_dir) / "env.txt"
    wait_until(path.exists, timeout=timeout, what=f"{job.name} to write its environment")
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def stop(job: job_pb2.Job) -> None:
    (Path(job.run_dir) / "stop").touch()


def running(c: InProcessConductor | SubprocessConductor, job_id: str) -> job_pb2.Job:
    return c.wait_for(job_id, lambda j: j.state == S.JOB_STATE_RUNNING and j.external_id != "")


def local_info(c: InProcessConductor | SubprocessConductor) -> pb.ExecutorInfo:
    info = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    return next(e for e in info.executors if e.name == "local")


def pause(c: InProcessConductor, job_id: str, mode: int) -> job_pb2.Job:
    return c.stub.PauseJob(pb.PauseJobRequest(job_id=job_id, mode=mode), timeout=30)


def resume(c: InProcessConductor, job_id: str) -> job_pb2.Job:
    return c.stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), timeout=30)


# ---------------------------------------------------------------- the must-show


def test_two_gpu_jobs_run_at_once_on_their_own_gpus_and_the_third_waits_for_one(
    conductor_factory: Factory,
) -> None:
    c = conductor_factory(capacity="cpus=2,gpus=0,1", max_running=10)
    jobs = [c.submit(job_spec(f"gpu-{i}", cpus=1, gpus=1)) for i in range(3)]
    first, second = (running(c, j.id) for j in jobs[:2])
    envs = [env_of(first), env_of(second)]
    assert {e["CUDA_VISIBLE_DEVICES"] for e in envs} == {"0", "1"}, envs
    assert [e["BATON_GPUS"] for e in envs] == [e["CUDA_VISIBLE_DEVICES"] for e in envs]

    third = c.wait_for(jobs[2].id, lambda j: j.reason.startswith("waiting for resources"))
    assert third.state == S.JOB_STATE_QUEUED
    assert third.reason == "waiting for resources: 1 CPU (0 of 2 free), 1 GPU (0 of 2 free)", third.reason
    executor = local_info(c)
    assert list(executor.gpu_ids) == ["0", "1"] and list(executor.free_gpu_ids) == []
    assert (executor.capacity.cpus, executor.capacity.gpus) == (2, 2)
    assert (executor.free.cpus, executor.free.gpus) == (0, 0)

    # Scheduler passes that change nothing for it write nothing for it: five
    # jobs that ask for nothing come and go (each end is a pass).
    quick = [c.submit(spec_yaml(name=f"quick-{i}", command="true")) for i in range(5)]
    for q in quick:
        assert c.wait_ended(q.id).state == S.JOB_STATE_SUCCEEDED
    assert c.get(third.id).revision == third.revision, "a wait reason was written again unchanged"

    freed = envs[0]["CUDA_VISIBLE_DEVICES"]
    stop(first)
    assert c.wait_ended(first.id).state == S.JOB_STATE_SUCCEEDED
    started = running(c, third.id)
    assert started.reason == ""
    assert env_of(started)["CUDA_VISIBLE_DEVICES"] == freed
    for j in (second, started):
        stop(j)
        assert c.wait_ended(j.id).state == S.JOB_STATE_SUCCEEDED
    executor = local_info(c)
    assert list(executor.free_gpu_ids) == ["0", "1"] and executor.free.cpus == 2


def test_a_request_larger_than_the_machine_is_refused_naming_each_field(
    conductor_factory: Factory,
) -> None:
    c = conductor_factory(capacity="cpus=2,memory=4G,gpus=0,1")
    too_big = job_spec("huge", cpus=64, memory="500G", gpus=8)
    for dry_run in (False, True):
        with pytest.raises(grpc.RpcError) as caught:
            c.submit(too_big, dry_run=dry_run)
        err = caught.value
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None
        info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
        for detail in status.details:
            if detail.Is(info.DESCRIPTOR):
                detail.Unpack(info)
            elif detail.Is(bad.DESCRIPTOR):
                detail.Unpack(bad)
        assert info.reason == "RESOURCES_UNAVAILABLE"
        assert info.metadata["executor"] == "local"
        assert info.metadata["requested_gpus"] == "8" and info.metadata["capacity_gpus"] == "2"
        assert info.metadata["requested_cpus"] == "64" and info.metadata["capacity_cpus"] == "2"
        assert info.metadata["capacity_memory_bytes"] == str(4 * 10**9)
        fields = {v.field: v.description for v in bad.field_violations}
        assert set(fields) == {"spec.resources.cpus", "spec.resources.memory", "spec.resources.gpus"}
        assert fields["spec.resources.gpus"] == "asks for 8 GPUs; the local executor has 2 GPUs in all"
    assert not c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs, "a refused submit wrote a job"
    # Exactly all of it is fine.
    ok = c.submit(job_spec("all-of-it", cpus=2, memory="4G", gpus=2))
    stop(running(c, ok.id))
    assert c.wait_ended(ok.id).state == S.JOB_STATE_SUCCEEDED


def test_a_job_asking_for_no_gpu_sees_none(conductor_factory: Factory) -> None:
    c = conductor_factory(capacity="gpus=0,1")
    spec = spec_yaml(name="cpu-only", command=HOLD, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    job = running(c, c.submit(spec).id)
    env = env_of(job)
    # Set and empty, over the spec's own value: it may not wander onto another job's GPU.
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["BATON_GPUS"] == ""
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    stop(job)
    c.wait_ended(job.id)


def test_baton_info_shows_what_is_free(
    conductor_factory: Factory, capsys: pytest.CaptureFixture[str]
) -> None:
    c = conductor_factory(capacity="cpus=2,memory=4G,gpus=0,1", max_running=10)
    job = running(c, c.submit(job_spec("holder", cpus=0.5, memory="1G", gpus=1)).id)
    capsys.readouterr()
    assert main(["--conductor", c.address, "info"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "1.5 of 2 CPUs, 2.8 GiB of 3.7 GiB memory, GPU 1 of 0,1" in out, out
    stop(job)
    c.wait_ended(job.id)


# ---------------------------------------------------------------- the policy


def test_later_jobs_overtake_a_blocked_one_only_within_the_backfill_window(
    conductor_factory: Factory,
) -> None:
    window = 2.0
    c = conductor_factory(capacity="cpus=8,gpus=0,1", max_running=10, backfill_window=window)
    a = running(c, c.submit(job_spec("a", gpus=1)).id)
    big = c.submit(job_spec("big", gpus=2))
    blocked_at = time.monotonic()
    # Within the window a later job that fits starts ahead of the blocked one.
    early = running(c, c.submit(job_spec("early", gpus=1)).id)
    assert c.get(big.id).state == S.JOB_STATE_QUEUED
    assert c.get(big.id).reason == "waiting for resources: 2 GPUs (0 of 2 free)"
    stop(early)
    c.wait_ended(early.id)
    time.sleep(max(0.0, blocked_at + window + 0.2 - time.monotonic()))

    # Past it, a later job that fits waits behind the blocked one, saying so...
    late = c.submit(job_spec("late", gpus=1))
    held = c.wait_for(late.id, lambda j: j.reason.startswith("waiting for resources"))
    assert held.state == S.JOB_STATE_QUEUED
    assert f"kept for job {big.id}" in held.reason, held.reason
    assert list(local_info(c).free_gpu_ids) == ["1"], "the held-back job took the free GPU"
    # ...while a job asking for nothing still goes: it holds only a slot.
    plain = c.submit(spec_yaml(name="plain", command="true"))
    assert c.wait_ended(plain.id).state == S.JOB_STATE_SUCCEEDED
    assert c.get(late.id).state == S.JOB_STATE_QUEUED

    stop(a)
    big_run = running(c, big.id)
    assert env_of(big_run)["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert c.get(late.id).state == S.JOB_STATE_QUEUED
    stop(big_run)
    late_run = running(c, late.id)
    stop(late_run)
    assert c.wait_ended(late_run.id).state == S.JOB_STATE_SUCCEEDED


def test_a_checkpoint_pause_frees_the_gpu_and_a_suspend_keeps_it(conductor_factory: Factory) -> None:
    c = conductor_factory(capacity="cpus=4,gpus=7", max_running=10)
    a = running(c, c.submit(job_spec("a", gpus=1)).id)
    assert env_of(a)["CUDA_VISIBLE_DEVICES"] == "7"
    b = c.submit(job_spec("b", gpus=1))
    c.wait_for(b.id, lambda j: j.reason == "waiting for resources: 1 GPU (0 of 1 free)")

    # Suspended, its processes still hold their memory and the GPU: b still waits.
    assert pause(c, a.id, S.PAUSE_MODE_SUSPEND).state == S.JOB_STATE_PAUSED
    time.sleep(0.3)
    assert c.get(b.id).state == S.JOB_STATE_QUEUED
    assert list(local_info(c).free_gpu_ids) == []
    resume(c, a.id)
    c.wait_for(a.id, "RUNNING")

    # A checkpoint pause ends its process: the GPU goes to b.
    pause(c, a.id, S.PAUSE_MODE_CHECKPOINT)
    c.wait_for(a.id, "PAUSED")
    (Path(a.run_dir) / "env.txt").unlink()
    b_run = running(c, b.id)
    assert env_of(b_run)["CUDA_VISIBLE_DEVICES"] == "7"
    # Resumed, a waits for its GPU like any queued job, saying so.
    resumed = resume(c, a.id)
    assert resumed.state == S.JOB_STATE_QUEUED
    assert resumed.reason == "waiting for resources: 1 GPU (0 of 1 free)", resumed.reason
    stop(b_run)
    c.wait_ended(b_run.id)
    again = running(c, a.id)
    assert env_of(again)["CUDA_VISIBLE_DEVICES"] == "7"
    stop(again)
    assert c.wait_ended(a.id).state == S.JOB_STATE_SUCCEEDED


def test_a_job_between_retries_keeps_its_gpu(conductor_factory: Factory, tmp_path: Path) -> None:
    c = conductor_factory(capacity="gpus=0", max_running=10)
    marker = tmp_path / "failed-once"
    # Fails its first attempt (retry after 1 s), then holds.
    flaky = spec_yaml(
        name="flaky",
        command=f'if [ ! -e {marker} ]; then touch {marker}; exit 3; fi; {HOLD}',
        retries=1,
        resources={"gpus": 1},
    )
    job = c.submit(flaky)
    c.wait_for(job.id, lambda j: "retry 1 of 1" in j.reason)
    other = c.submit(job_spec("other", gpus=1))
    c.wait_for(other.id, lambda j: j.reason.startswith("waiting for resources"))
    second = c.wait_for(job.id, lambda j: j.attempt == 2 and j.external_id != "")
    assert env_of(second)["CUDA_VISIBLE_DEVICES"] == "0"
    assert c.get(other.id).state == S.JOB_STATE_QUEUED
    stop(second)
    stop(running(c, other.id))
    assert c.wait_ended(other.id).state == S.JOB_STATE_SUCCEEDED


# ---------------------------------------------------------------- restart


CONDUCTOR_ARGS = ("--capacity", "cpus=4,gpus=0,1,2", "--max-running", "10")


def test_a_conductor_killed_and_restarted_gives_running_jobs_their_gpus_back(
    start_conductor: Callable[[Path], SubprocessConductor], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    c = start_conductor(home)
    two = running(c, c.submit(job_spec("two", gpus=2)).id)
    one = running(c, c.submit(job_spec("one", gpus=1)).id)
    given = {two.id: env_of(two)["CUDA_VISIBLE_DEVICES"], one.id: env_of(one)["CUDA_VISIBLE_DEVICES"]}
    assert sorted(",".join(given.values()).split(",")) == ["0", "1", "2"]
    waiting = c.submit(job_spec("waiting", gpus=1))
    c.wait_for(waiting.id, lambda j: j.reason.startswith("waiting for resources"))

    c.kill9()
    c = start_conductor(home)
    # Re-attached, they hold what they had: no GPU is free, the queued job still waits.
    for job_id in given:
        assert c.get(job_id).state == S.JOB_STATE_RUNNING
    assert list(local_info(c).free_gpu_ids) == []
    time.sleep(0.5)
    after = c.get(waiting.id)
    assert after.state == S.JOB_STATE_QUEUED, after
    assert after.reason == "waiting for resources: 1 GPU (0 of 3 free)"
    late = c.submit(job_spec("late", gpus=1))
    time.sleep(0.3)
    assert c.get(late.id).state == S.JOB_STATE_QUEUED

    # The GPU of the job that ends goes to the first in line, and only it.
    stop(one)
    assert c.wait_ended(one.id).state == S.JOB_STATE_SUCCEEDED
    taken = running(c, waiting.id)
    assert env_of(taken)["CUDA_VISIBLE_DEVICES"] == given[one.id]
    assert c.get(late.id).state == S.JOB_STATE_QUEUED
    for job in (two, taken):
        stop(job)
        assert c.wait_ended(job.id).state == S.JOB_STATE_SUCCEEDED
    assert env_of(running(c, late.id))["CUDA_VISIBLE_DEVICES"] in ("0", "1", "2")
    stop(c.get(late.id))
    c.wait_ended(late.id)


def test_a_queued_job_too_large_for_a_smaller_capacity_after_a_restart_fails_saying_so(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    home = tmp_path / "shrinking"
    c = conductor_factory(home=home, capacity="cpus=4,gpus=0,1", max_running=10)
    holder = running(c, c.submit(job_spec("holder", gpus=1)).id)
    pair = c.submit(job_spec("pair", gpus=2))
    c.wait_for(pair.id, lambda j: j.reason.startswith("waiting for resources"))
    c.stop()
    c = conductor_factory(home=home, capacity="cpus=4,gpus=0", max_running=10)
    failed = c.wait_ended(pair.id)
    assert failed.state == S.JOB_STATE_FAILED
    assert failed.reason == (
        "could not start: the local executor has less than it asks (2 GPUs asked, 1 GPU in all)"
    ), failed.reason
    # The running one was re-attached, still on its GPU.
    assert c.get(holder.id).state == S.JOB_STATE_RUNNING
    stop(holder)
    assert c.wait_ended(holder.id).state == S.JOB_STATE_SUCCEEDED


# ---------------------------------------------------------------- settings and accounting


def test_a_bad_capacity_stops_the_conductor_at_startup_naming_the_flag(tmp_path: Path) -> None:
    for bad, says in (("gpus=0,0", "an id is given twice"), ("cpus=lots", "not a number"),
                      ("disks=3", "unknown resource"), ("memory=4X", "not a size")):  # fmt: skip
        argv = [sys.executable, "-m", "baton.client.cli", "conductor", "--listen", "127.0.0.1:0",
                "--home", str(tmp_path / "home"), "--capacity", bad]  # fmt: skip
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == exitcodes.USAGE, (bad, done.stderr)
        assert "--capacity" in done.stderr and says in done.stderr, (bad, done.stderr)
        assert "validation error" not in done.stderr, done.stderr


def test_capacity_is_detected_and_any_part_given_replaces_detection() -> None:
    import os

    detected = detect_capacity()
    assert detected.cpus == len(os.sched_getaffinity(0)) and detected.memory > 0
    mixed = detect_capacity(parse_capacity("gpus=3,5, memory=1.5Gi"))
    assert mixed == Capacity(cpus=detected.cpus, memory=int(1.5 * 2**30), gpus=("3", "5"))
    assert parse_capacity("") == CapacityOverride()
    assert parse_capacity("gpus=none").gpus == () and parse_capacity("gpus=").gpus == ()


def test_the_ledger_counts_fractions_exactly_and_hands_out_each_gpu_once() -> None:
    ledger = Ledger(Capacity(cpus=0.3, memory=10, gpus=("a", "b", "c")))
    assert ledger.take("x", Request(cpus=0.1, gpus=2)) == ("a", "b")
    assert ledger.take("y", Request(cpus=0.2, memory=10)) == ()
    assert ledger.fits(Request(gpus=1)) and not ledger.fits(Request(cpus=0.001))
    assert ledger.shortfall(Request(cpus=1, gpus=2)) == "1 CPU (0 of 0.3 free), 2 GPUs (1 of 3 free)"
    with pytest.raises(ValueError):
        ledger.take("z", Request(gpus=2))
    ledger.release("x")
    assert ledger.take("z", Request(gpus=3)) == ("a", "b", "c")
    # After a restart a running job takes back exactly what it had, fitting or not.
    ledger.release("z")
    assert ledger.take("back", Request(gpus=1), gpus=["c"]) == ("c",)
    assert ledger.free().gpus == ("a", "b")
    # Nothing asked: nothing held, always fits.
    assert ledger.take("none", Request()) == () and ledger.holding("none") is None
