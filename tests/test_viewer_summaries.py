"""A viewer's cold start from the job directories' run summaries (``common.runsummary``): it
serves without reading the ended runs' status files, then checks every run against its file in
the background, and converges to exactly what a start that reads every file gives, whatever
made the summaries wrong (a file rewritten since, a run directory removed, a line cut short,
a line no writer makes).

Shapes, not times: the benchmark (``bench/scale.py``) times the cold start at a million runs.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from baton.common import checkpointdirs, runsummary
from baton.common.jobfile import job_from_json
from baton.common.jobs import FINAL_STATES
from baton.v1 import job_pb2
from tests.test_viewer_snapshot import RUNS, _everything, _wait_reconciled, all_checkpoints
from tests.treegen import format_ts, generate, write_status
from tests.viewer_oracle import Oracle

S = job_pb2


def _summarize(status_dir: Path) -> int:
    """Each ended run's line in its job directory's summary, as its writer would append it."""
    lines = 0
    for path in sorted(status_dir.glob("*/*/*/*/status.json")):
        try:
            job = job_from_json(path.read_bytes())
        except ValueError:
            continue  # a damaged file: the tree generator makes some on purpose
        line = runsummary.summary_line(job, path.stat())
        if line is not None:
            runsummary.append(str(path.parent.parent), line)
            lines += 1
    return lines


def test_a_cold_start_from_summaries_converges_to_one_that_reads_every_file(
    tmp_path: Path, viewer_factory: Any
) -> None:
    m = generate(tmp_path / "tree", runs=RUNS, checkpoints=100, seed=8)
    lines = _summarize(m.status_dir)
    runs = Oracle(m.status_dir, m.checkpoints_dir).jobs()
    ended = [r for r in runs if r.state in FINAL_STATES and r.job_id and r.job_id == r.key[3]]
    assert lines >= len(ended) > 100

    # What makes a summary wrong: ended runs rewritten since their line (in place, and by a
    # rename), a run directory removed, a line cut short, lines no writer makes.
    rewritten = ended[10:16]
    for i, r in enumerate(rewritten):
        state = "JOB_STATE_CANCELLED" if r.state != S.JOB_STATE_CANCELLED else "JOB_STATE_FAILED"
        data = {**r.data, "state": state, "endTime": format_ts(time.time_ns() // 1000)}
        if i % 2:
            write_status(r.path, data)
        else:
            (r.path / "status.json").write_text(json.dumps(data))
    shutil.rmtree(ended[20].path)
    job_dir = str(ended[30].path.parent)
    runsummary.append(job_dir, b'{"run": "' + ended[30].key[3].encode() + b'", "sta')
    run_id = ended[31].key[3]
    times = [1.7e9, 1.7e9 + 1, 0.0, 0.0]
    live_claim = {"run": run_id, "id": run_id, "state": "JOB_STATE_RUNNING", "ts": times, "file": [1, 2, 3]}
    runsummary.append(str(ended[31].path.parent), json.dumps(live_claim).encode() + b"\n")
    run_id = ended[32].key[3]
    bad_times = {"run": run_id, "id": run_id, "state": "JOB_STATE_FAILED", "ts": ["1.7e9", 0, 0, 0],
                 "file": [1, 2, 3]}  # fmt: skip
    runsummary.append(str(ended[32].path.parent), json.dumps(bad_times).encode() + b"\n")
    stranger = {"run": "no-such-run", "id": "no-such-run", "state": "JOB_STATE_SUCCEEDED", "ts": times,
                "file": [1, 2, 3]}  # fmt: skip
    runsummary.append(job_dir, json.dumps(stranger).encode() + b"\n")
    # A FIFO where a summary was (a plain open would wait on it for ever): its runs are read.
    fifo_dir = next(r.path.parent for r in reversed(ended) if str(r.path.parent) != job_dir)
    fifo_lines = len(runsummary.read(str(fifo_dir)))
    (fifo_dir / runsummary.SUMMARY_FILE).unlink()
    os.mkfifo(fifo_dir / runsummary.SUMMARY_FILE)

    v = viewer_factory(home=m.root, index_cache="off", reconcile_interval=3600)
    indexer = v.running.indexer
    # Every ended run came from its line, unread, but three, and the FIFO's job's: the one
    # removed, and the ones whose last lines claim a live state or give times that are not
    # seconds (read from their files). A line cut short leaves the one before.
    assert indexer.from_summaries == lines - 3 - fifo_lines
    listed = {j.run_id: j.state for j in v.list_all()[0]}
    assert "no-such-run" not in listed and ended[20].key[3] not in listed
    _wait_reconciled(v)
    after = _everything(v)
    for r in rewritten:  # the files' states now, not the lines'
        (job,) = [j for j in v.list_all(project=r.key[0], group=r.key[1], name=r.key[2])[0]
                  if j.run_id == r.key[3]]  # fmt: skip
        assert job.state in (S.JOB_STATE_CANCELLED, S.JOB_STATE_FAILED) and job.state != r.state
    v.stop()
    _assert_as_without_summaries(m.root, viewer_factory, after)


def _assert_as_without_summaries(root: Path, viewer_factory: Any, answers: dict[str, Any]) -> None:
    """A cold start once every summary is gone (so every file is read, every directory listed)
    answers ``answers``."""
    for summary in root.glob(f"*/*/*/*/{runsummary.SUMMARY_FILE}"):
        summary.unlink()
    every_file = viewer_factory(home=root, index_cache="off", reconcile_interval=3600)
    indexer = every_file.running.indexer
    assert indexer.from_summaries == indexer.checkpoints_from_summaries == 0
    assert _everything(every_file) == answers


def _summarize_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Each run's line in its job's checkpoint summary, as the status writer would append it
    (the runs' checkpoint directories it can summarize)."""
    done = []
    for marker in sorted(checkpoints_dir.glob("*/*/*/*/.baton-run")):
        found = checkpointdirs.run_checkpoints(str(marker.parent))
        if found is not None:
            line = runsummary.checkpoint_line(str(marker.parent), found)
            runsummary.append(str(marker.parent.parent), line)
            done.append(marker.parent)
    return done


def test_a_cold_start_takes_runs_checkpoints_from_summaries_and_converges(
    tmp_path: Path, viewer_factory: Any
) -> None:
    m = generate(tmp_path / "tree", runs=600, checkpoints=300, seed=10)
    _summarize(m.status_dir)
    summarized = [d for d in _summarize_checkpoints(m.checkpoints_dir) if any(d.iterdir())]
    with_checkpoints = [d for d in summarized if any(p.is_dir() for p in d.iterdir())]
    assert len(summarized) > 20 and len(with_checkpoints) > 5

    # What makes a line wrong: a checkpoint written since, one removed since, a name that would
    # lead out of the run's directory, a run whose directory is gone.
    added = summarized[0] / "step-99999"
    added.mkdir()
    (added / "model.bin").write_bytes(b"x" * 1000)
    removed = next(p for p in with_checkpoints[1].iterdir() if p.is_dir())
    shutil.rmtree(removed)
    hostile = summarized[2]
    escape = ["..", 1.0, 1, 1, "", False]
    runsummary.append(str(hostile.parent), runsummary.checkpoint_line(str(hostile), [escape]))  # type: ignore[list-item]
    ghost = {"run": "no-such-run", "checkpoints": [["step-1", 1.0, 1, 1, "", False]]}
    runsummary.append(str(summarized[3].parent), json.dumps(ghost).encode() + b"\n")
    # A directory whose name says it is still being written is no run's, whatever a line says.
    half = summarized[4].parent / "half.tmp"
    (half / "step-1").mkdir(parents=True)
    (half / ".baton-run").write_text("{}\n")
    half_line = runsummary.checkpoint_line(str(half), [("step-1", 1.0, 1, 1, "", False)])
    runsummary.append(str(half.parent), half_line)

    v = viewer_factory(home=m.root, index_cache="off", reconcile_interval=3600)
    indexer = v.running.indexer
    # Every summarized run's directory from its line, unlisted, but the one whose last line
    # names a checkpoint out of it (listed instead).
    assert indexer.checkpoints_from_summaries == len(summarized) - 1
    served = {(c.run_id, c.suffix) for c in all_checkpoints(v)}
    assert (added.parent.name, added.name) not in served, "the line, not the tree, was served"
    assert not any(run in ("no-such-run", "half.tmp") or suffix == ".." for run, suffix in served)
    _wait_reconciled(v)
    after = _everything(v)
    served = {(c.run_id, c.suffix) for c in all_checkpoints(v)}
    assert (added.parent.name, added.name) in served and (removed.parent.name, removed.name) not in served
    v.stop()
    _assert_as_without_summaries(m.root, viewer_factory, after)


def test_a_run_that_ends_after_a_start_from_summaries_shows(tmp_path: Path, viewer_factory: Any) -> None:
    """Live runs have no line: they are read, and watched, as before."""
    m = generate(tmp_path / "tree", runs=300, checkpoints=10, seed=9)
    assert _summarize(m.status_dir)
    v = viewer_factory(home=m.root, index_cache="off", reconcile_interval=3600)
    assert v.running.indexer.from_summaries
    runs = Oracle(m.status_dir, m.checkpoints_dir).jobs()
    running = next(r for r in runs if r.state == S.JOB_STATE_RUNNING)
    write_status(running.path, {**running.data, "state": "JOB_STATE_SUCCEEDED",
                                "endTime": format_ts(time.time_ns() // 1000)})  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        states = {j.run_id: j.state for j in v.list_all(project=running.key[0])[0]}
        if states.get(running.key[3]) == S.JOB_STATE_SUCCEEDED:
            break
        assert time.monotonic() < deadline, "the run's end never showed"
        time.sleep(0.05)
