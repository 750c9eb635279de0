"""Status files are written by a child process, and never depend on it.

The publisher hands its batches to ``conductor.statuswriter`` (a process of
its own, so the writing never holds the conductor's GIL). These tests use a
real publisher and a real child: its files, its end with the publisher, and
what happens when it is killed (the publisher's thread writes itself, and
starts another only after a while).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from baton.common import checkpointdirs, runsummary
from baton.common.layout import RUN_MARKER
from baton.conductor import statuswriter
from baton.conductor.publisher import Publisher
from baton.v1 import job_pb2
from baton.viewer_api import scan
from tests.checks import wait_until
from tests.test_historygen import assert_line_reads_as_file

S = job_pb2


def _children() -> list[int]:
    """Status writer processes started by this process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == os.getpid() and statuswriter.__name__.encode() in cmd:
            found.append(int(entry))
    return found


def _job(root: Path, i: int) -> job_pb2.Job:
    run_dir = root / "p" / "g" / "n" / f"r{i}"
    return job_pb2.Job(id=f"j{i}", name="n", state=S.JOB_STATE_QUEUED, run_dir=str(run_dir), revision=i)


def _run(job: job_pb2.Job) -> str:
    return os.path.basename(job.run_dir)


def _state(root: Path, i: int) -> str | None:
    try:
        return str(json.loads((root / "p" / "g" / "n" / f"r{i}" / "status.json").read_text())["id"])
    except FileNotFoundError:
        return None


def test_the_child_writes_status_files_and_ends_with_the_publisher(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path)
    try:
        for i in range(1, 1201):  # more than one chunk
            publisher.publish(_job(tmp_path, i))
        assert publisher.flush(30)
        assert all(_state(tmp_path, i) == f"j{i}" for i in range(1, 1201))
        assert publisher.published == 1200
        wait_until(lambda: len(_children()) == 1, timeout=30, what="the status writer to start")
        # Once the child said it was ready, it does the writing.
        for i in range(1201, 1301):
            publisher.publish(_job(tmp_path, i))
        assert publisher.flush(30)
        assert all(_state(tmp_path, i) == f"j{i}" for i in range(1201, 1301))
        assert not [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".tmp")]
    finally:
        publisher.close()
    assert not _children(), "the child ends when the publisher closes"


def test_a_killed_child_costs_no_status_file(tmp_path: Path) -> None:
    publisher = Publisher(tmp_path)
    try:
        publisher.publish(_job(tmp_path, 1))
        assert publisher.flush(30)
        wait_until(lambda: len(_children()) == 1, timeout=30, what="the status writer to start")
        (child,) = _children()
        os.kill(child, signal.SIGKILL)
        # Write on: the thread notices the death at a batch (and reaps the child)
        # and writes itself; until then, and after, no file is lost.
        written = 1
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{child}"):
            assert time.monotonic() < deadline, "the dead status writer was never noticed"
            written += 1
            publisher.publish(_job(tmp_path, written))
            assert publisher.flush(30)
            time.sleep(0.05)
        for i in range(written + 1, written + 51):
            publisher.publish(_job(tmp_path, i))
        assert publisher.flush(30)
        written += 50
        assert all(_state(tmp_path, i) == f"j{i}" for i in range(1, written + 1))
        assert publisher.published == written
        # None started since (not for RESTART_AFTER_SECONDS): the thread wrote these itself.
        assert not _children()
    finally:
        publisher.close()
    assert not _children()


def test_an_ended_run_gets_its_line_and_removed_runs_lose_theirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ended run's status.json comes with its line in the job's summary; once COMPACT_AFTER
    of the job's runs were removed, the summary keeps only the lines of runs left."""
    publisher = Publisher(tmp_path)
    jobs = [_job(tmp_path, i) for i in range(1, 21)]
    job_dir = tmp_path / "p" / "g" / "n"
    try:
        publisher.publish(_job(tmp_path, 21))  # live: no line
        for job in jobs:
            job.state = S.JOB_STATE_SUCCEEDED
            job.create_time.FromSeconds(1_700_000_000 + job.revision)
            publisher.publish(job)
        assert publisher.flush(60)
    finally:
        publisher.close()
    lines = runsummary.read(str(job_dir))
    # By run directory: r1, r2... (the job ids here, j1, j2..., are not the directories' names).
    assert set(lines) == {_run(j) for j in jobs}, "a line for each ended run, none for the live one"
    for job in jobs:
        assert_line_reads_as_file(lines[_run(job)], job.run_dir)

    monkeypatch.setattr(statuswriter, "COMPACT_AFTER", 5)
    monkeypatch.setattr(statuswriter, "_removed", {})
    removed = [(j.id, j.run_dir, None, str(tmp_path)) for j in jobs[:12]]
    assert statuswriter.apply(removed) == []
    assert not any(Path(j.run_dir).exists() for j in jobs[:12])
    # Compacted at the fifth and the tenth removal: the two removed after keep their lines.
    assert set(runsummary.read(str(job_dir))) == {_run(j) for j in jobs[10:]}


def test_a_fifo_named_as_the_summary_costs_its_line_not_the_status_file(tmp_path: Path) -> None:
    """A job's own process can make files beside its run directory: one named as the summary
    (here a FIFO, which a plain open would wait on for ever) never holds up the writer."""
    job = _job(tmp_path, 1)
    job.state = S.JOB_STATE_FAILED
    job_dir = tmp_path / "p" / "g" / "n"
    job_dir.mkdir(parents=True)
    os.mkfifo(job_dir / runsummary.SUMMARY_FILE)
    assert statuswriter.apply([(job.id, job.run_dir, job.SerializeToString(), str(tmp_path))]) == []
    assert _state(tmp_path, 1) == "j1"
    assert runsummary.read(str(job_dir)) == {}


def _checkpoint_dir(root: Path, i: int) -> Path:
    """Run ``i``'s checkpoint directory, with its marker, as a launch makes it."""
    path = root / "p" / "g" / "n" / f"r{i}"
    path.mkdir(parents=True)
    (path / RUN_MARKER).write_text("{}\n")
    return path


def test_an_ended_runs_checkpoints_get_a_line_with_what_a_scan_finds(tmp_path: Path) -> None:
    """The line in the job's checkpoint summary holds each checkpoint as the viewer's scan
    measures it; a run whose directory holds a link, or none, or that is live, has no line."""
    ck_root = tmp_path / "checkpoints"
    status_root = tmp_path / "status"
    full = _checkpoint_dir(ck_root, 1)
    for suffix, files in (
        ("step-100", {"model.bin": 4096, "config.yaml": 20, "job.json": 30, "shards/rank0/part-0.bin": 700}),
        ("step-200", {"model.bin": 5000, "config.json": 12}),
        ("step-300.tmp", {"model.bin": 1}),  # still being written: not a checkpoint
    ):
        for rel, size in files.items():
            (full / suffix / rel).parent.mkdir(parents=True, exist_ok=True)
            (full / suffix / rel).write_bytes(b"x" * size)
    empty = _checkpoint_dir(ck_root, 2)
    linked = _checkpoint_dir(ck_root, 3)
    (linked / "step-1").symlink_to(full / "step-100")
    live = _checkpoint_dir(ck_root, 4)
    jobs = [_job(status_root, i) for i in range(1, 6)]  # the fifth has no checkpoint directory
    for job, path in zip(jobs, (full, empty, linked, live, None), strict=True):
        job.checkpoint_dir = str(path) if path else ""
        job.state = S.JOB_STATE_RUNNING if path is live else S.JOB_STATE_SUCCEEDED
    publisher = Publisher(status_root)
    try:
        for job in jobs:
            publisher.publish(job)
        assert publisher.flush(60)
        assert _children(), "written by the child process"
    finally:
        publisher.close()

    lines = runsummary.read_checkpoints(str(full.parent))
    assert set(lines) == {"r1", "r2"}, "the link's run and the live run are left to the viewer to read"
    assert lines["r2"] == []
    scanned = scan.scan_checkpoints(str(ck_root)).checkpoints
    want = sorted((c.suffix, c.create_ts, c.size_bytes, c.file_count, c.config_file, c.has_job_spec)
                  for c in scanned if c.run_id == "r1")  # fmt: skip
    assert [c[0] for c in want] == ["step-100", "step-200"]
    assert want[0][2:] == (4846, 4, "config.yaml", True)
    assert sorted(lines["r1"]) == want
    # A directory with more entries than the writer measures is left to the viewer too.
    assert checkpointdirs.run_checkpoints(str(full), limit=8) is None
    assert checkpointdirs.run_checkpoints(str(full), limit=20) == lines["r1"]
