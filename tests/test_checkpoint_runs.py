"""A run resumes from its own checkpoints, and a pause says what it saved.

Runs of one job name each get a checkpoint directory of their own, so two runs
alive at once (a sweep, shards) write the same checkpoint names without
touching each other. A resume or a retry continues the run from the newest
checkpoint it wrote itself, or from the one it was submitted with; another
run's only when asked (``resume_from``: a suffix, ``RUN_ID/SUFFIX``, or
``latest``). A checkpoint pause reports honestly whether a checkpoint was
written and where a resume will start.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.client import exitcodes
from baton.client.cli import main
from baton.common import runsummary
from baton.common.layout import RUN_MARKER
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.harness import InProcessConductor
from tests.procs import log_lines, log_text, spec_yaml, train_command, wait_until

S = job_pb2


def _pause(c: InProcessConductor, job_id: str) -> job_pb2.Job:
    c.stub.PauseJob(pb.PauseJobRequest(job_id=job_id, mode=S.PAUSE_MODE_CHECKPOINT), timeout=30)
    return c.wait_for(job_id, "PAUSED")


def _resume(c: InProcessConductor, job_id: str) -> None:
    c.stub.ResumeJob(pb.ResumeJobRequest(job_id=job_id), timeout=30)


def _reached(job: job_pb2.Job, step: int) -> bool:
    return any(line.startswith(f"step={step} ") for line in log_lines(job))


def _reason(err: grpc.RpcError) -> tuple[str, list[str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    reason, fields = "", []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(info):
            reason = info.reason
        elif detail.Unpack(bad):
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def test_a_paused_run_resumes_from_its_own_checkpoint_not_a_newer_run_of_the_same_name(
    conductor_factory: object,
) -> None:
    c: InProcessConductor = conductor_factory(max_running=4)  # type: ignore[operator]
    spec = spec_yaml(name="train", project="demo", command=train_command(120, 0.02, 10))
    a = c.submit(spec)
    a = c.wait_for(a.id, lambda j: _reached(j, 14))
    paused = _pause(c, a.id)
    at = int(re.findall(r"paused at step=(\d+)", log_text(paused))[0])
    assert paused.last_checkpoint == f"step-{at:06d}", paused

    # Run B of the same name writes the same checkpoint names, and newer ones.
    b = c.submit(spec)
    b = c.wait_for(b.id, lambda j: _reached(j, 80))
    assert a.checkpoint_dir != b.checkpoint_dir
    assert Path(a.checkpoint_dir).parent == Path(b.checkpoint_dir).parent
    # Each run sees only what it wrote itself.
    ours = {p.name for p in Path(a.checkpoint_dir).iterdir()} - {RUN_MARKER}
    assert ours == {f"step-{s:06d}" for s in (10, at)}, ours

    _resume(c, a.id)
    done = c.wait_ended(a.id, 60)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    own = str(Path(a.checkpoint_dir) / f"step-{at:06d}")
    assert f"resumed from {own} at step={at}" in log_text(done), log_text(done)
    c.wait_ended(b.id, 60)
    # The same result as a run never paused: it went on from where it was.
    results = {(Path(j.run_dir) / "result.txt").read_text() for j in (done, c.get(b.id))}
    assert len(results) == 1


def test_a_retry_starts_from_its_own_run_checkpoint(conductor_factory: object, tmp_path: Path) -> None:
    c: InProcessConductor = conductor_factory(max_running=4)  # type: ignore[operator]
    gate = tmp_path / "gate"
    first = (
        'if [ -n "$BATON_RESUME_FROM" ]; then echo "resume=$BATON_RESUME_FROM"; exit 0; fi; '
        'mkdir "$BATON_CHECKPOINT_DIR/own-1"; '
        f"while [ ! -e {gate} ]; do sleep 0.02; done; exit 3"
    )
    job = c.submit(spec_yaml(name="retrier", command=first, retries=1))
    job = c.wait_for(job.id, lambda j: (Path(j.checkpoint_dir) / "own-1").is_dir())
    # Another run of the same name writes a newer checkpoint meanwhile.
    other = c.submit(spec_yaml(name="retrier", command='mkdir "$BATON_CHECKPOINT_DIR/newer-2"'))
    assert c.wait_ended(other.id).state == S.JOB_STATE_SUCCEEDED
    gate.touch()
    done = c.wait_ended(job.id, 30)
    assert done.state == S.JOB_STATE_SUCCEEDED, done
    assert done.attempt == 2
    assert log_lines(done) == [f"resume={Path(job.checkpoint_dir) / 'own-1'}"]


def test_resume_from_names_a_checkpoint_of_any_run_or_latest_and_refuses_an_ambiguous_one(
    conductor: InProcessConductor,
) -> None:
    writes = spec_yaml(name="src", command='mkdir "$BATON_CHECKPOINT_DIR/step-000010"')
    r1 = conductor.wait_ended(conductor.submit(writes).id)
    r2 = conductor.wait_ended(conductor.submit(writes).id)
    reads = spec_yaml(name="src", command='echo "resume=$BATON_RESUME_FROM"')

    with pytest.raises(grpc.RpcError) as caught:
        conductor.submit(reads, resume_from="step-000010")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _reason(caught.value) == ("CHECKPOINT_AMBIGUOUS", ["resume_from"])
    assert f"{r1.run_id}/step-000010" in (caught.value.details() or "")

    chosen = conductor.wait_ended(conductor.submit(reads, resume_from=f"{r1.run_id}/step-000010").id)
    assert log_lines(chosen) == [f"resume={Path(r1.checkpoint_dir) / 'step-000010'}"]
    assert chosen.resume_from == f"{r1.run_id}/step-000010"

    newest = conductor.wait_ended(conductor.submit(reads, resume_from="latest").id)
    assert log_lines(newest) == [f"resume={Path(r2.checkpoint_dir) / 'step-000010'}"]
    assert newest.resume_from == f"{r2.run_id}/step-000010"

    with pytest.raises(grpc.RpcError) as missing:
        conductor.submit(reads, resume_from=f"{r1.run_id}/step-000020")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_checkpoint_pause_of_a_job_that_saves_nothing_says_so(
    conductor: InProcessConductor, capsys: pytest.CaptureFixture[str]
) -> None:
    job = conductor.submit(spec_yaml(name="sleeper", command="echo up; exec sleep 60"))
    job = conductor.wait_for(job.id, lambda j: log_text(j) == "up\n")
    code = main(["--conductor", conductor.address, "pause", job.id, "--checkpoint"])
    out = capsys.readouterr().out
    assert code == exitcodes.OK
    paused = conductor.get(job.id)
    assert paused.state == S.JOB_STATE_PAUSED
    assert paused.last_checkpoint == ""
    assert "no checkpoint written" in paused.reason and "from the beginning" in paused.reason, paused.reason
    assert "no checkpoint written" in out and "from the beginning" in out, out

    _resume(conductor, job.id)
    wait_until(lambda: log_text(conductor.get(job.id)) == "up\nup\n", what="the second start")
    again = conductor.get(job.id)
    assert again.resume_dir == "", "nothing was saved: there is nothing to resume from"


def test_an_ended_runs_checkpoints_are_summarized_and_a_deletion_updates_the_summary(
    conductor: InProcessConductor, viewer_factory: Any
) -> None:
    """The conductor leaves an ended run's checkpoints in its job's checkpoint summary, for a
    viewer starting cold; deleting one of them gives the run a new line, so that viewer never
    shows a checkpoint that is gone, and deleting them all leaves the job's directory empty."""
    command = 'for s in 1 2 3; do d="$BATON_CHECKPOINT_DIR/step-$s"; mkdir "$d"; echo w > "$d/m"; done'
    writes = spec_yaml(name="summed", command=command)
    run = conductor.wait_ended(conductor.submit(writes).id)
    base = Path(run.checkpoint_dir).parent

    def line() -> list[Any] | None:
        return runsummary.read_checkpoints(str(base)).get(run.run_id)

    wait_until(lambda: line() is not None, 30, "the ended run's checkpoint line")
    assert sorted(c[0] for c in line() or ()) == ["step-1", "step-2", "step-3"]

    request = pb.DeleteCheckpointsRequest(project=run.project, group=run.group, name=run.name,
                                          suffixes=[f"{run.run_id}/step-2"])  # fmt: skip
    assert conductor.stub.DeleteCheckpoints(request, timeout=10).deleted_count == 1
    assert sorted(c[0] for c in line() or ()) == ["step-1", "step-3"]
    viewer = viewer_factory(home=conductor.home, index_cache="off", reconcile_interval=3600)
    assert viewer.running.indexer.checkpoints_from_summaries == 1
    listing = vpb.ListCheckpointsRequest(project=run.project, name=run.name)
    shown = viewer.stub.ListCheckpoints(listing, timeout=10)
    assert sorted(c.suffix for c in shown.checkpoints) == ["step-1", "step-3"]

    request = pb.DeleteCheckpointsRequest(project=run.project, group=run.group, name=run.name)
    assert conductor.stub.DeleteCheckpoints(request, timeout=10).deleted_count == 2
    assert not any(base.iterdir()), list(base.iterdir())
