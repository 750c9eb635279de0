"""Run directories of a bulk deletion go in the background, through no link:
``Publisher.remove_runs`` hands them over in one go, and the publisher's
status writer removes them.

A tree of run directories, some holding links out of the tree (to a directory
and to a file, each holding an outside secret) and some replaced by a link out
of the tree, is deleted through a real
Publisher: every run directory and everything set aside is gone, every
outside file is untouched, and the published mark reaches the last deletion.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from baton.conductor.publisher import Publisher
from baton.v1 import job_pb2


def _tree(root: Path, outside: Path, count: int) -> list[job_pb2.Job]:
    jobs = []
    for i in range(count):
        run_dir = root / "p" / "g" / f"n{i % 7}" / f"job-{i:05d}"
        (run_dir / "launch" / "1").mkdir(parents=True)
        (run_dir / "output.log").write_text("x\n" * 10)
        (run_dir / "status.json").write_text("{}")
        (run_dir / "launch" / "1" / "pids").write_text("1 2\n")
        if i % 10 == 0:
            # What a job could leave in its own directory: links out of the tree.
            (run_dir / "to-dir").symlink_to(outside)
            (run_dir / "launch" / "to-file").symlink_to(outside / "secret.txt")
        elif i % 10 == 5:
            # A run directory swapped for a link out of the tree: the link goes, not what it names.
            for child in sorted(run_dir.rglob("*"), reverse=True):
                child.rmdir() if child.is_dir() else child.unlink()
            run_dir.rmdir()
            run_dir.symlink_to(outside / "keep")
        jobs.append(job_pb2.Job(id=f"job-{i:05d}", run_dir=str(run_dir), revision=i + 1))
    return jobs


@pytest.mark.parametrize("count", [1, 700])
def test_deleted_run_directories_go_through_no_link(tmp_path: Path, count: int) -> None:
    root = tmp_path / "status"
    outside = tmp_path / "outside"
    (outside / "keep").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret")
    (outside / "keep" / "also.txt").write_text("also")
    jobs = _tree(root, outside, count)
    pub = Publisher(root)
    try:
        pub.remove_runs(jobs)
        # Generous: the machine may be busy.
        assert pub.flush(300), "removed within five minutes"
        left = [(d, os.listdir(d)) for d in (root / "p" / "g").iterdir() if os.listdir(d)]
        assert left == [], "every run directory, and all it held, is gone"
        assert pub.published == jobs[-1].revision
    finally:
        pub.close()
    assert (outside / "secret.txt").read_text() == "secret"
    assert (outside / "keep" / "also.txt").read_text() == "also"
