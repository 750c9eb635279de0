"""Submit and run: real jobs as local processes, their logs, environment and status.json."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from google.protobuf import json_format

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import files_under, log_path, wait_group_gone, wait_until
from tests.harness import InProcessConductor, state

Factory = Callable[..., InProcessConductor]


def list_ids(c: InProcessConductor) -> list[str]:
    return [j.id for j in c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs]


def test_job_runs_to_succeeded_with_output_in_its_run_dir(conductor: InProcessConductor) -> None:
    job = conductor.submit(
        "name: hello\nproject: proj\ngroup: grp\ncommand: |\n  echo to-stdout\n  echo to-stderr >&2\n"
    )
    assert job.id and job.state == state("queued")
    assert not job.HasField("exit_code"), "a job that has not ended must not carry an exit code"

    done = conductor.wait_ended(job.id)

    assert done.state == state("succeeded"), done
    assert done.HasField("exit_code") and done.exit_code == 0
    assert not done.HasField("signal")
    assert (done.project, done.group, done.name) == ("proj", "grp", "hello")
    assert done.HasField("start_time") and done.HasField("end_time")
    run_dir = conductor.status_dir / "proj" / "grp" / "hello" / done.run_id
    assert Path(done.run_dir) == run_dir
    log = (run_dir / "output.log").read_text()
    assert "to-stdout\n" in log
    assert "to-stderr\n" in log


def test_failing_command_ends_failed_with_its_exit_code(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: broken\ncommand: echo about-to-fail; exit 3\n")

    done = conductor.wait_ended(job.id)

    assert done.state == state("failed"), done
    assert done.HasField("exit_code") and done.exit_code == 3
    assert not done.HasField("signal")
    assert "3" in done.reason, f"reason should say how it failed: {done.reason!r}"
    assert "about-to-fail" in log_path(done).read_text()


def test_job_killed_by_a_signal_records_the_signal(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: selfkill\ncommand: kill -KILL $$\n")

    done = conductor.wait_ended(job.id)

    assert done.state == state("failed"), done
    assert done.HasField("signal") and done.signal == 9


def test_job_environment_tells_it_where_it_is(conductor: InProcessConductor) -> None:
    spec = (
        "name: envy\nproject: p1\ngroup: g1\n"
        "env:\n  GREETING: hello world\n  COUNT: 3\n"
        "command: |\n"
        '  echo "JOB_ID=$BATON_JOB_ID"\n'
        '  echo "RUN_DIR=$BATON_RUN_DIR"\n'
        '  echo "CKPT=$BATON_CHECKPOINT_DIR"\n'
        '  echo "STEP=$BATON_STEP"\n'
        '  echo "GREETING=$GREETING"\n'
        '  echo "COUNT=$COUNT"\n'
        '  echo "RESUME=${BATON_RESUME_FROM-unset}"\n'
    )
    job = conductor.submit(spec)
    done = conductor.wait_ended(job.id)
    assert done.state == state("succeeded"), done

    lines = dict(line.split("=", 1) for line in log_path(done).read_text().splitlines() if "=" in line)
    checkpoints = conductor.home / "checkpoints"
    assert lines["JOB_ID"] == done.id
    assert lines["RUN_DIR"] == done.run_dir
    assert Path(lines["RUN_DIR"]) == conductor.status_dir / "p1" / "g1" / "envy" / done.run_id
    # Each run has a checkpoint directory of its own, named by its run id.
    assert Path(lines["CKPT"]) == checkpoints / "p1" / "g1" / "envy" / done.run_id
    assert lines["CKPT"] == done.checkpoint_dir
    assert lines["STEP"] == "1"
    assert lines["GREETING"] == "hello world"
    assert lines["COUNT"] == "3"
    assert lines["RESUME"] == "unset", "a fresh job has nothing to resume from"


def test_job_can_write_its_checkpoint_dir(conductor: InProcessConductor) -> None:
    job = conductor.submit(
        'name: ck\ncommand: mkdir -p "$BATON_CHECKPOINT_DIR/c1" && echo w > "$BATON_CHECKPOINT_DIR/c1/w"\n'
    )
    done = conductor.wait_ended(job.id)
    assert done.state == state("succeeded"), done
    assert (Path(done.checkpoint_dir) / "c1" / "w").read_text() == "w\n"


def test_supervisor_does_not_carry_the_jobs_variables(conductor: InProcessConductor, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = conductor.submit(f"name: sup\ncommand: while [ ! -e {go} ]; do sleep 0.05; done\n")
    running = conductor.wait_for(job.id, "running")
    wait_until(lambda: conductor.get(job.id).external_id != "", "the job's external id")
    pids_files = list((conductor.home / "state" / "launches" / running.id).glob("*/pids"))
    assert pids_files, "the local executor should record its launch"
    # The supervisor and the exit recorder (the job's parent) keep their own environment.
    helpers = map(int, pids_files[0].read_text().split())
    helper_envs = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in helpers]
    job_pid = int(conductor.get(job.id).external_id)
    job_env = Path(f"/proc/{job_pid}/environ").read_bytes().split(b"\0")
    go.touch()
    assert f"BATON_JOB_ID={job.id}".encode() in job_env
    for env in helper_envs:
        assert not [v for v in env if v.startswith(b"BATON_")], "only the job's processes carry BATON_*"
    assert conductor.wait_ended(job.id).state == state("succeeded")


def test_status_json_parses_back_into_the_job(conductor: InProcessConductor) -> None:
    job = conductor.submit("name: published\ncommand: echo hi; exit 4\n")
    done = conductor.wait_ended(job.id)
    status_file = Path(done.run_dir) / "status.json"
    seen: list[job_pb2.Job] = []

    def published() -> bool:
        try:
            parsed = json_format.Parse(status_file.read_text(), job_pb2.Job())
        except (OSError, json_format.ParseError):
            return False
        seen.append(parsed)
        return parsed.revision == done.revision

    wait_until(published, f"status.json at revision {done.revision} (seen: {seen[-1:]})", 10)
    on_disk = seen[-1]
    assert on_disk.id == done.id
    assert on_disk.state == done.state == state("failed")
    assert on_disk.HasField("exit_code") and on_disk.exit_code == done.exit_code == 4
    assert on_disk == conductor.get(job.id), "status.json is the registry's copy of the ended job"


def test_dry_run_returns_the_job_and_writes_nothing(conductor: InProcessConductor) -> None:
    before = conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)

    job = conductor.submit("name: dry\nproject: p\ncommand: echo should-not-run\n", dry_run=True)

    assert job.name == "dry" and job.project == "p" and job.group == "default"
    assert job.spec.command == "echo should-not-run"
    assert job.executor == "local"
    assert files_under(conductor.status_dir) == []
    assert files_under(conductor.home / "checkpoints") == []
    assert files_under(conductor.home / "state" / "launches") == []
    assert list_ids(conductor) == []
    after = conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert after.revision == before.revision
    assert list(after.job_counts) == []


def test_dry_run_with_a_request_id_does_not_claim_it(conductor: InProcessConductor) -> None:
    conductor.submit("name: dry\ncommand: 'true'\n", dry_run=True, request_id="req-dry")
    job = conductor.submit("name: dry\ncommand: 'true'\n", request_id="req-dry")
    assert job.id, "the real submission after a dry run must make a job"
    assert list_ids(conductor) == [job.id]


def test_duplicate_request_id_makes_one_job(conductor: InProcessConductor) -> None:
    spec = "name: once\ncommand: echo ran\n"
    first = conductor.submit(spec, request_id="req-123")
    second = conductor.submit(spec, request_id="req-123")
    assert second.id == first.id
    other = conductor.submit(spec, request_id="req-456")
    assert other.id != first.id

    assert sorted(list_ids(conductor)) == sorted([first.id, other.id])
    conductor.wait_ended(first.id)
    conductor.wait_ended(other.id)
    third = conductor.submit(spec, request_id="req-123")
    assert third.id == first.id, "the key still names the same job after it has ended"
    assert len(list_ids(conductor)) == 2
    runs = [p for p in (conductor.status_dir / "default" / "default" / "once").iterdir() if p.is_dir()]
    assert len(runs) == 2


def test_concurrent_duplicate_request_ids_make_one_job(conductor: InProcessConductor) -> None:
    spec = "name: racer\ncommand: 'true'\n"
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit() -> None:
        try:
            job = conductor.submit(spec, request_id="same-key")
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(job.id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert not errors, errors
    assert len(results) == 8 and len(set(results)) == 1, results
    assert list_ids(conductor) == results[:1]


def test_conductor_info_counts_jobs_and_names_the_local_executor(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(max_running=3)
    ok = c.submit("name: ok\ncommand: 'true'\n")
    bad = c.submit("name: bad\ncommand: exit 1\n")
    go = tmp_path / "go"
    waiting = c.submit(f"name: waiting\ncommand: while [ ! -e {go} ]; do sleep 0.05; done\n")
    c.wait_ended(ok.id)
    c.wait_ended(bad.id)
    c.wait_for(waiting.id, lambda j: j.state == state("running") and j.external_id != "")

    info = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)

    counts = {s.state: s.count for s in info.job_counts}
    assert counts == {state("succeeded"): 1, state("failed"): 1, state("running"): 1}
    executors = {e.name: set(e.pause_modes) for e in info.executors}
    assert "local" in executors
    assert {job_pb2.PAUSE_MODE_SUSPEND, job_pb2.PAUSE_MODE_CHECKPOINT} <= executors["local"]
    assert info.version
    assert info.pid == os.getpid()
    assert info.HasField("start_time") and info.start_time.seconds > 0
    assert info.max_running == 3
    assert info.revision == max(c.get(j.id).revision for j in (ok, bad, waiting))
    assert Path(info.status_dir) == c.status_dir
    go.touch()
    c.wait_ended(waiting.id)


def test_ended_job_leaves_no_process_behind(conductor: InProcessConductor) -> None:
    # The leader exits at once; a child it started in the background must not outlive the job.
    job = conductor.submit("name: leaver\ncommand: |\n  sleep 60 &\n  echo started-child\n")
    done = conductor.wait_ended(job.id)
    assert done.state == state("succeeded"), done
    assert done.external_id
    wait_group_gone(int(done.external_id))
