"""Seed parity (issue 8), with real jobs: job health from /proc, step details,
results, starting from a chosen checkpoint, checkpoint clean-up, ClearJobs and
the conductor's own figures, through the conductor's API and the viewer."""

from __future__ import annotations

import itertools
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format

from baton.common import runsummary
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2, viewer_pb2
from tests.checks import bad_request_fields, live_group_members, wait_for_text, wait_group_gone, wait_until
from tests.harness import InProcessConductor
from tests.procs import PY, spec_yaml
from tests.viewer_harness import InProcessViewer

S = job_pb2
Factory = Callable[..., InProcessConductor]

# A process holding a fixed amount of touched memory until a gate file exists;
# with a fourth argument it first starts a child doing the same with that many
# MiB, and a short-lived child it does not reap (a zombie, which is no live process).
HOG = """\
import os, subprocess, sys, time
tag, mib, gate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
child = zombie = None
if len(sys.argv) > 4:
    child = subprocess.Popen([sys.executable, "-S", __file__, "child", sys.argv[4], gate])
    zombie = subprocess.Popen(["/bin/true"])
block = b"\\1" * (mib << 20)
print("ready", tag, flush=True)
while not os.path.exists(gate):
    time.sleep(0.05)
if child is not None:
    child.wait()
print("done", tag, len(block), flush=True)
"""

# Writes $BATON_RESULT_FILE according to its argument.
RESULT_WRITER = """\
import json, os, sys
kind = sys.argv[1]
value = {
    "ok": {"loss": 0.25, "epochs": 3, "tags": ["a", "b"], "nested": {"best": True}},
    "list": [1, 2, 3],
    "big": {"blob": "x" * (70 * 1024)},
}[kind]
with open(os.environ["BATON_RESULT_FILE"], "w") as f:
    json.dump(value, f)
print("wrote", kind)
"""


# ----------------------------------------------------------------- helpers


ViewerFactory = Callable[..., InProcessViewer]


def viewer_get_job(viewer: InProcessViewer, job_id: str, pred: Callable[[job_pb2.Job], bool]) -> job_pb2.Job:
    """Poll the viewer's GetJob until ``pred`` holds."""
    deadline = time.monotonic() + 15
    while True:
        try:
            job: job_pb2.Job | None = viewer.stub.GetJob(
                viewer_pb2.ViewerGetJobRequest(job_id=job_id), timeout=10
            )
        except grpc.RpcError:
            job = None
        if job is not None and pred(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"the viewer does not show {job_id} as expected; last seen:\n{job}")
        time.sleep(0.02)


def checkpoint_suffixes(viewer: InProcessViewer, project: str, group: str, name: str) -> set[str]:
    req = viewer_pb2.ListCheckpointsRequest(project=project, group=group, name=name, page_size=1000)
    return {c.suffix for c in viewer.stub.ListCheckpoints(req, timeout=10).checkpoints}


def wait_checkpoints(
    viewer: InProcessViewer, project: str, group: str, name: str, pred: Callable[[set[str]], bool]
) -> set[str]:
    """Poll the viewer's ListCheckpoints until ``pred`` holds for the suffixes listed."""
    deadline = time.monotonic() + 10
    while True:
        got = checkpoint_suffixes(viewer, project, group, name)
        if pred(got):
            return got
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the viewer lists {len(got)} of {project}/{group}/{name}: {sorted(got)[:20]}"
            )
        time.sleep(0.02)


def rpc_error(code: grpc.StatusCode, call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """Call ``call(*args, **kwargs)``, which must fail with ``code``; return the error."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()}"  # type: ignore[attr-defined]
    return err


def vm_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes, from /proc/<pid>/status (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_bytes()
    return raw[raw.rfind(b")") + 2 :].split()[0].decode()


def group_states(pgid: int) -> list[str]:
    """The states of every process (zombies included) in process group ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            raw = Path(f"/proc/{entry}/stat").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        if fields and int(fields[2]) == pgid:
            out.append(fields[0].decode())
    return out


def script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return shlex.quote(str(path))


def gate_command(gate: Path) -> str:
    return f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; done; echo gate-open"


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots``: directories, link targets, file contents (links not followed).
    Run summaries are left out: a job's end appends to them, whenever its status is written."""
    out: dict[str, str] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in dirnames + filenames:
                if name == runsummary.SUMMARY_FILE:
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    out[path] = "link:" + os.readlink(path)
                elif os.path.isdir(path):
                    out[path] = "dir"
                else:
                    out[path] = "file:" + Path(path).read_bytes().hex()
    return out


def write_file(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return size


def ended_job(conductor: InProcessConductor, **spec: Any) -> job_pb2.Job:
    return conductor.wait_ended(conductor.submit(spec_yaml(**spec)).id)


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


# ------------------------------------------------------------------ health


def test_health_of_a_running_job_matches_proc_and_says_no_process_once_it_ends(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    hog = script(tmp_path, "hog.py", HOG)
    job = conductor.submit(
        spec_yaml(name="hog", command=f"exec {PY} {hog} parent 48 {shlex.quote(str(gate))} 24")
    )
    running = conductor.wait_for(job.id, lambda j: j.state == S.JOB_STATE_RUNNING and bool(j.external_id))
    log = Path(running.run_dir) / "output.log"
    wait_for_text(log, "ready parent")
    wait_for_text(log, "ready child")
    leader = int(running.external_id)
    wait_until(lambda: "Z" in group_states(leader), "the job's unreaped child to be a zombie")

    health = conductor.stub.GetJobHealth(pb.GetJobHealthRequest(job_id=job.id), timeout=10)
    members = live_group_members(leader)
    mine = sum(vm_rss(pid) for pid in members)

    assert health.job_id == job.id
    assert health.state == S.JOB_STATE_RUNNING
    assert health.has_process
    assert health.pid == leader
    assert (health.alive, health.zombie, health.stopped) == (True, False, False)
    assert len(members) == 2, f"expected the job's python and its child in group {leader}: {members}"
    assert len(group_states(leader)) == 3, "the zombie is still there"
    assert health.process_count == len(members)
    # 72 MiB of touched memory in the group: both readings must see it.
    assert mine > 72 << 20
    assert abs(health.rss_bytes - mine) <= 0.10 * mine, (health.rss_bytes, mine)
    assert health.cpu_percent >= 0
    assert health.uptime.ToTimedelta().total_seconds() > 0
    assert health.HasField("last_output_time")
    assert health.HasField("heartbeat_time")

    gate.touch()
    done = conductor.wait_ended(job.id)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    after = conductor.stub.GetJobHealth(pb.GetJobHealthRequest(job_id=job.id), timeout=10)
    assert after.state == S.JOB_STATE_SUCCEEDED
    assert not after.has_process
    assert after.detail, "a job without a process says why"
    assert (after.pid, after.process_count, after.rss_bytes) == (0, 0, 0)
    wait_group_gone(leader)


def test_a_suspended_job_shows_as_stopped_not_dead(conductor: InProcessConductor, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hog = script(tmp_path, "hog.py", HOG)
    job = conductor.submit(
        spec_yaml(name="frozen", command=f"exec {PY} {hog} parent 4 {shlex.quote(str(gate))} 4")
    )
    running = conductor.wait_for(job.id, lambda j: j.state == S.JOB_STATE_RUNNING and bool(j.external_id))
    wait_for_text(Path(running.run_dir) / "output.log", "ready child")
    leader = int(running.external_id)

    conductor.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_SUSPEND), timeout=10)
    conductor.wait_for(job.id, "PAUSED")
    members = live_group_members(leader)
    wait_until(lambda: all(proc_state(p) in "Tt" for p in members), "the group to be stopped")

    health = conductor.stub.GetJobHealth(pb.GetJobHealthRequest(job_id=job.id), timeout=10)
    assert health.state == S.JOB_STATE_PAUSED
    assert health.has_process
    assert health.pid == leader
    assert health.stopped
    assert health.alive and not health.zombie
    assert health.process_count == len(members) == 2

    conductor.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=10)
    conductor.wait_for(job.id, "RUNNING")
    wait_until(lambda: all(proc_state(p) not in "Tt" for p in members), "the group to run again")
    resumed = conductor.stub.GetJobHealth(pb.GetJobHealthRequest(job_id=job.id), timeout=10)
    assert resumed.has_process and resumed.alive and not resumed.stopped
    gate.touch()
    assert conductor.wait_ended(job.id).state == S.JOB_STATE_SUCCEEDED


def test_health_and_steps_of_an_unknown_job_are_not_found_and_a_bad_step_is_invalid(
    conductor: InProcessConductor,
) -> None:
    stub = conductor.stub
    unknown = grpc.StatusCode.NOT_FOUND
    rpc_error(unknown, stub.GetJobHealth, pb.GetJobHealthRequest(job_id="nosuchjob"), timeout=10)
    rpc_error(unknown, stub.GetJobStep, pb.GetJobStepRequest(job_id="nosuchjob", step=1), timeout=10)
    job = ended_job(conductor, name="one-step", command="echo hi")
    assert job.state == S.JOB_STATE_SUCCEEDED, job
    ok = stub.GetJobStep(pb.GetJobStepRequest(job_id=job.id, step=1, tail_lines=5), timeout=10)
    assert ok.step.index == 1 and ok.tail == b"hi\n"
    for step in (0, 2, -1):
        err = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            stub.GetJobStep,
            pb.GetJobStepRequest(job_id=job.id, step=step),
            timeout=10,
        )
        assert "step" in bad_request_fields(err), (step, bad_request_fields(err))


# ------------------------------------------------------------------ steps


def test_three_steps_with_a_retried_second_step_show_times_attempts_exit_codes_and_own_tails(
    conductor: InProcessConductor, viewer_factory: ViewerFactory, tmp_path: Path
) -> None:
    counter = shlex.quote(str(tmp_path / "counter"))
    second = (
        f'n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo "$n" > {counter}; '
        f'echo "two-attempt-$n"; [ "$n" -ge 2 ] || exit 3'
    )
    spec = spec_yaml(
        name="retried",
        retries=2,
        steps=[
            {"name": "prepare", "command": "echo one-a; echo one-b"},
            {"name": "train", "command": second},
            {"name": "report", "command": "echo three-a; echo three-b"},
        ],
    )
    job = conductor.submit(spec)
    # During the backoff, step two shows its failed first attempt.
    failed_once = conductor.wait_for(
        job.id, lambda j: j.steps[1].state == S.STEP_STATE_FAILED and j.steps[1].HasField("exit_code")
    )
    entry = failed_once.steps[1]
    assert (entry.attempts, entry.exit_code) == (1, 3), entry
    assert entry.reason or failed_once.reason
    assert failed_once.steps[0].state == S.STEP_STATE_SUCCEEDED

    done = conductor.wait_ended(job.id)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    assert done.exit_code == 0
    steps = list(done.steps)
    assert [(s.index, s.name) for s in steps] == [(1, "prepare"), (2, "train"), (3, "report")]
    assert [s.state for s in steps] == [S.STEP_STATE_SUCCEEDED] * 3
    assert [s.attempts for s in steps] == [1, 2, 1]
    assert [(s.HasField("exit_code"), s.exit_code) for s in steps] == [(True, 0)] * 3
    assert not any(s.HasField("signal") for s in steps)
    for s in steps:
        assert s.HasField("start_time") and s.HasField("end_time"), s
        assert s.start_time.ToNanoseconds() <= s.end_time.ToNanoseconds(), s
    for a, b in itertools.pairwise(steps):
        assert a.end_time.ToNanoseconds() <= b.start_time.ToNanoseconds(), (a, b)
        assert a.log_end == b.log_start, (a, b)
    # The retry spans both attempts: at least the one-second backoff.
    assert steps[1].end_time.ToNanoseconds() - steps[1].start_time.ToNanoseconds() >= 0.9e9
    log = (Path(done.run_dir) / "output.log").read_bytes()
    assert steps[0].log_start == 0 and steps[2].log_end == len(log)

    own = {
        1: b"one-a\none-b\n",
        2: b"two-attempt-1\ntwo-attempt-2\n",
        3: b"three-a\nthree-b\n",
    }
    for index, text in own.items():
        resp = conductor.stub.GetJobStep(
            pb.GetJobStepRequest(job_id=job.id, step=index, tail_lines=50), timeout=10
        )
        assert resp.step == steps[index - 1]
        assert resp.tail == text, (index, resp.tail)
        assert log[resp.step.log_start : resp.step.log_end] == text
    last = conductor.stub.GetJobStep(pb.GetJobStepRequest(job_id=job.id, step=2, tail_lines=1), timeout=10)
    assert last.tail == b"two-attempt-2\n"
    none = conductor.stub.GetJobStep(pb.GetJobStepRequest(job_id=job.id, step=3), timeout=10)
    assert none.tail == b""

    # Started once the run exists (one watching while a job name first appears can
    # miss it: see test_the_viewer_sees_what_is_written_into_a_job_directory_...).
    viewer = viewer_factory(home=conductor.home)
    seen = viewer_get_job(viewer, job.id, lambda j: j.state == S.JOB_STATE_SUCCEEDED)
    assert list(seen.steps) == steps


# ------------------------------------------------------------------ results


def test_a_result_appears_in_get_job_and_the_viewer_and_a_bad_one_is_dropped_with_a_reason(
    conductor: InProcessConductor, viewer_factory: ViewerFactory, tmp_path: Path
) -> None:
    writer = script(tmp_path, "result.py", RESULT_WRITER)
    ids = {
        kind: conductor.submit(spec_yaml(name=f"result-{kind}", command=f"{PY} {writer} {kind}")).id
        for kind in ("ok", "list", "big")
    }
    jobs = {kind: conductor.wait_ended(job_id) for kind, job_id in ids.items()}
    viewer = viewer_factory(home=conductor.home)  # once the runs exist, as in the steps test

    expected = {"loss": 0.25, "epochs": 3, "tags": ["a", "b"], "nested": {"best": True}}
    good = jobs["ok"]
    assert good.state == S.JOB_STATE_SUCCEEDED and good.exit_code == 0, good
    assert good.HasField("result")
    assert json_format.MessageToDict(good.result) == expected
    assert "result" not in good.reason
    shown = viewer_get_job(viewer, good.id, lambda j: j.state == S.JOB_STATE_SUCCEEDED)
    assert json_format.MessageToDict(shown.result) == expected

    for kind, words in (("list", ("object",)), ("big", ("64", "KiB"))):
        bad = jobs[kind]
        assert bad.state == S.JOB_STATE_SUCCEEDED, bad
        assert bad.HasField("exit_code") and bad.exit_code == 0, bad
        assert not bad.HasField("signal")
        assert not bad.HasField("result") or not bad.result.fields, bad.result
        assert "result" in bad.reason and all(w in bad.reason for w in words), bad.reason
        seen = viewer_get_job(viewer, bad.id, lambda j: j.state == S.JOB_STATE_SUCCEEDED)
        assert seen.reason == bad.reason
        assert not seen.result.fields


# ------------------------------------------------------------------ resume_from


def test_resume_from_starts_the_run_from_the_chosen_checkpoint(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    ckpts = conductor.config.checkpoints_dir
    assert ckpts is not None
    base = ckpts / "res" / "default" / "resumer"
    for i, suffix in enumerate(("older", "newer")):
        write_file(base / suffix / "model.bin", 10)
        os.utime(base / suffix, (1_000_000 + i * 1000, 1_000_000 + i * 1000))
    write_file(ckpts / "res" / "default" / "someone-else" / "theirs" / "model.bin", 10)
    spec = spec_yaml(name="resumer", project="res", command='echo "resume=${BATON_RESUME_FROM:-none}"')

    done = conductor.wait_ended(conductor.submit(spec, resume_from="older").id)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    chosen = str(base / "older")
    assert (Path(done.run_dir) / "output.log").read_text().splitlines() == [f"resume={chosen}"]
    assert done.resume_dir == chosen
    assert done.resume_from == "older"

    before = conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
    for missing in ("absent", "theirs", "a/b"):
        rpc_error(grpc.StatusCode.NOT_FOUND, conductor.submit, spec, resume_from=missing)
    for bad in ("a/b/c", "..", "../someone-else", "/tmp"):
        err = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, conductor.submit, spec, resume_from=bad)
        assert "resume_from" in bad_request_fields(err), (bad, bad_request_fields(err))
    assert len(conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == len(before)


# ------------------------------------------------------------------ checkpoints


def test_delete_checkpoints_is_refused_while_running_then_removes_exactly_that_jobs_checkpoints(
    conductor: InProcessConductor, viewer_factory: ViewerFactory, tmp_path: Path
) -> None:
    ckpts = conductor.config.checkpoints_dir
    assert ckpts is not None
    own = ckpts / "p1" / "default" / "ckjob"
    outside = tmp_path / "outside"
    target_size = write_file(outside / "target.bin", 50_000)
    write_file(outside / "keep" / "inner.bin", 100_000)
    c1 = write_file(own / "c1" / "model.bin", 1000) + write_file(own / "c1" / "config.json", 37)
    c2 = write_file(own / "c2" / "sub" / "deep.bin", 2048) + write_file(own / "c2" / "config.yaml", 11)
    (own / "c2" / "data").symlink_to(outside / "keep", target_is_directory=True)
    c3 = write_file(own / "c3" / "weights.bin", 3000)
    (own / "c3" / "ext").symlink_to(outside / "target.bin")
    (own / "escape").symlink_to(outside)
    link_bytes = sum(os.lstat(own / link).st_size for link in ("c2/data", "c3/ext", "escape"))
    write_file(ckpts / "p1" / "default" / "other" / "o1" / "model.bin", 500)
    write_file(ckpts / "p2" / "default" / "ckjob" / "c1" / "model.bin", 500)
    write_file(ckpts / "p1" / "default" / "stray.txt", 20)
    roots = (ckpts, outside)

    def kept_outside_own(before: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in before.items() if not k.startswith(str(own) + os.sep)}

    def delete(*suffixes: str, name: str = "ckjob") -> pb.DeleteCheckpointsResponse:
        return conductor.stub.DeleteCheckpoints(
            pb.DeleteCheckpointsRequest(project="p1", group="default", name=name, suffixes=suffixes),
            timeout=10,
        )

    # Started on the finished tree: its first full scan sees every checkpoint.
    viewer = viewer_factory(home=conductor.home)
    wait_checkpoints(viewer, "p1", "default", "ckjob", lambda got: {"c1", "c2", "c3"} <= got)
    gate = tmp_path / "gate"
    job = conductor.submit(spec_yaml(name="ckjob", project="p1", command=gate_command(gate)))
    conductor.wait_for(job.id, "RUNNING")
    start = snapshot(*roots)
    for suffixes in ((), ("c1",)):
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, delete, *suffixes)
    assert snapshot(*roots) == start, "a refused deletion removed something"
    gate.touch()
    assert conductor.wait_ended(job.id).state == S.JOB_STATE_SUCCEEDED

    for bad, field in ((["a/b/c"], "suffixes"), ([".."], "suffixes"), (["c2", "../other"], "suffixes")):
        err = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, delete, *bad)
        assert any(f.startswith(field) for f in bad_request_fields(err)), (bad, bad_request_fields(err))
    err = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, delete, name="..")
    assert "name" in bad_request_fields(err)
    assert snapshot(*roots) == start, "a rejected request removed something"

    first = delete("c1")
    assert (first.deleted_count, first.deleted_bytes) == (1, c1)
    after_first = snapshot(*roots)
    assert after_first == {k: v for k, v in start.items() if not k.startswith(str(own / "c1"))}
    wait_checkpoints(viewer, "p1", "default", "ckjob", lambda got: got & {"c1", "c2", "c3"} == {"c2", "c3"})

    rest = delete()
    assert rest.deleted_count == 3, rest  # c2, c3 and the link "escape"
    assert c2 + c3 <= rest.deleted_bytes <= c2 + c3 + link_bytes, (rest, c2 + c3, link_bytes)
    assert rest.deleted_bytes < target_size, "a link was followed when counting"
    remaining = snapshot(*roots)
    assert remaining == kept_outside_own(start), "something outside the job's checkpoints changed"
    assert not own.exists() or not any(e for e in os.listdir(own) if not e.startswith(".")), os.listdir(own)
    assert (outside / "target.bin").stat().st_size == target_size
    assert (outside / "keep" / "inner.bin").is_file()
    wait_checkpoints(viewer, "p1", "default", "ckjob", lambda got: not got)
    assert checkpoint_suffixes(viewer, "p1", "default", "other") == {"o1"}
    assert checkpoint_suffixes(viewer, "p2", "default", "ckjob") == {"c1"}


def write_entry(tree: str, job_dir: Path, name: str) -> None:
    """A checkpoint (made hidden, then renamed) or a run of moved/default/big with its
    status.json (written aside, then renamed), as writers do."""
    if tree == "checkpoints":
        write_file(job_dir / f".{name}.tmp" / "model.bin", 10)
        (job_dir / f".{name}.tmp").rename(job_dir / name)
        return
    job = job_pb2.Job(
        id=name, run_id=name, project="moved", group="default", name="big", state=S.JOB_STATE_SUCCEEDED
    )
    (job_dir / name).mkdir(parents=True)
    tmp = job_dir / name / ".status.json.tmp"
    tmp.write_text(json_format.MessageToJson(job))
    tmp.rename(job_dir / name / "status.json")


@pytest.mark.parametrize("tree", ["checkpoints", "status"])
def test_the_viewer_sees_what_is_written_into_a_job_directory_it_has_just_found(
    viewer_factory: ViewerFactory, tmp_path: Path, tree: str
) -> None:
    """A job's directory appears whole (moved in, as a restore or a copy does) and
    new checkpoints or runs are written into it at once: the viewer lists every one."""
    home = tmp_path / "home"
    for sub in ("checkpoints", "status"):
        (home / sub).mkdir(parents=True)
    viewer = viewer_factory(home=home)
    stage = home / "restore"  # the same filesystem, outside both roots
    for i in range(600):
        write_entry(tree, stage / "default" / "big", f"old{i:04d}")
    stage.rename(home / tree / "moved")
    job_dir = home / tree / "moved" / "default" / "big"

    def listed() -> set[str]:
        if tree == "checkpoints":
            return checkpoint_suffixes(viewer, "moved", "default", "big")
        req = viewer_pb2.ViewerListJobsRequest(project="moved", group="default", name="big", page_size=1000)
        return {j.run_id for j in viewer.stub.ListJobs(req, timeout=10).jobs}

    written: list[str] = []
    # Keep writing, as a running job does, until the viewer has taken in the moved tree.
    while len(written) < 200 and not listed():
        written.append(f"new{len(written)}")
        write_entry(tree, job_dir, written[-1])
        time.sleep(0.005)
    written.append(f"new{len(written)}")
    write_entry(tree, job_dir, written[-1])
    deadline = time.monotonic() + 3
    while (missing := set(written) - listed()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not missing, f"the viewer never listed {sorted(missing)} of the {len(written)} written"
    assert len(listed()) == 600 + len(written)


# ------------------------------------------------------------------ ClearJobs and info


def test_clear_jobs_deletes_exactly_the_matching_ended_jobs_and_info_counts_running_ones(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    conductor = conductor_factory(max_running=8)
    stub = conductor.stub
    gate = tmp_path / "gate"

    old = ended_job(conductor, name="bad", project="pb", command="exit 1")
    time.sleep(0.6)
    jobs = {"pb/bad": old}
    for key, command in (("pa/ok", "true"), ("pa/bad", "exit 1"), ("pb/ok", "true")):
        project, name = key.split("/")
        jobs[key] = conductor.submit(spec_yaml(name=name, project=project, command=command))
    for key in ("pa/stop", "pa/run", "pb/run"):
        project, name = key.split("/")
        jobs[key] = conductor.submit(spec_yaml(name=name, project=project, command=gate_command(gate)))
    for key in ("pa/stop", "pa/run", "pb/run"):
        conductor.wait_for(jobs[key].id, "RUNNING")
    stub.CancelJob(pb.CancelJobRequest(job_id=jobs["pa/stop"].id, grace_period=seconds(2)), timeout=10)
    for key in ("pa/ok", "pa/bad", "pb/ok", "pa/stop"):
        jobs[key] = conductor.wait_ended(jobs[key].id)
    for key in ("pa/run", "pb/run"):
        jobs[key] = conductor.get(jobs[key].id)
    assert {k: j.state for k, j in jobs.items()} == {
        "pb/bad": S.JOB_STATE_FAILED,
        "pa/ok": S.JOB_STATE_SUCCEEDED,
        "pa/bad": S.JOB_STATE_FAILED,
        "pb/ok": S.JOB_STATE_SUCCEEDED,
        "pa/stop": S.JOB_STATE_CANCELLED,
        "pa/run": S.JOB_STATE_RUNNING,
        "pb/run": S.JOB_STATE_RUNNING,
    }

    info = stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert info.running_jobs == 2
    assert info.pid == os.getpid()  # in-process: its memory is this process's
    own_rss = vm_rss(os.getpid())
    assert info.rss_bytes > 0
    assert abs(info.rss_bytes - own_rss) <= 0.25 * own_rss, (info.rss_bytes, own_rss)
    uptime = info.uptime.ToTimedelta().total_seconds()
    since_start = time.time() - info.start_time.ToNanoseconds() / 1e9
    assert uptime > 0 and abs(uptime - since_start) < 2.0, (uptime, since_start)

    present = set(jobs)

    def clear(expect: set[str], **kw: Any) -> None:
        resp = stub.ClearJobs(pb.ClearJobsRequest(**kw), timeout=30)
        assert set(resp.job_ids) == {jobs[k].id for k in expect}, (kw, resp)
        assert resp.deleted_count == len(expect)
        present.difference_update(expect)
        listed = {j.id for j in stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}
        assert listed == {jobs[k].id for k in present}, kw
        for key in expect:
            rpc_error(grpc.StatusCode.NOT_FOUND, conductor.get, jobs[key].id)
        run_dirs = [Path(jobs[k].run_dir) for k in expect]
        wait_until(lambda: not any(d.exists() for d in run_dirs), f"the run dirs of {expect} to go")

    for states in ([S.JOB_STATE_RUNNING], [S.JOB_STATE_FAILED, S.JOB_STATE_PAUSED], [S.JOB_STATE_QUEUED]):
        request = pb.ClearJobsRequest(states=states)
        err = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, stub.ClearJobs, request, timeout=10)
        assert any(f.startswith("states") for f in bad_request_fields(err)), bad_request_fields(err)
    clear(set(), older_than=seconds(3600))
    clear({"pa/bad"}, states=[S.JOB_STATE_FAILED], project="pa")
    # Only pb/bad ended before the pause: cut halfway between it and the next ending.
    later = min(jobs[k].end_time.ToNanoseconds() for k in ("pa/ok", "pa/bad", "pb/ok", "pa/stop")) / 1e9
    oldest = old.end_time.ToNanoseconds() / 1e9
    assert later - oldest >= 0.5
    clear({"pb/bad"}, older_than=seconds(time.time() - (oldest + later) / 2))
    clear(set(), name="stop", project="pb")
    clear({"pa/ok", "pb/ok"}, states=[S.JOB_STATE_SUCCEEDED])
    clear({"pa/stop"}, all=True)  # no filter: only with `all`
    for key in ("pa/run", "pb/run"):
        assert conductor.get(jobs[key].id).state == S.JOB_STATE_RUNNING

    gate.touch()
    for key in ("pa/run", "pb/run"):
        assert conductor.wait_ended(jobs[key].id).state == S.JOB_STATE_SUCCEEDED
    assert stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10).running_jobs == 0
    clear({"pa/run", "pb/run"}, project="", all=True)
    assert not stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
