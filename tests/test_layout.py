"""The on-disk contract's helpers: run checkpoint directories, their marker, refs, lookups."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from baton.common.layout import (
    LATEST_REF,
    MAX_REF_LENGTH,
    RUN_MARKER,
    FoundCheckpoint,
    Layout,
    checkpoint_ref_problem,
    is_run_checkpoint_dir,
    latest_checkpoint_in,
    make_run_checkpoint_dir,
    split_checkpoint_ref,
)

JOB = ("proj", "grp", "train")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout.under(tmp_path / "status", tmp_path / "checkpoints")


def _ckpt(path: Path, mtime: float) -> Path:
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"w")
    os.utime(path, (mtime, mtime))
    return path


def _run(layout: Layout, run_id: str) -> Path:
    return make_run_checkpoint_dir(layout, *JOB, run_id, job_id=f"job-{run_id}")


# ---------------------------------------------------------------------- refs


@pytest.mark.parametrize(("ref", "parts"), [("step-80", ("", "step-80")), ("r1/step-80", ("r1", "step-80"))])
def test_valid_refs_split_into_run_and_suffix(ref: str, parts: tuple[str, str]) -> None:
    assert checkpoint_ref_problem(ref) is None
    assert split_checkpoint_ref(ref) == parts


@pytest.mark.parametrize(
    "ref", ["", "/", "/s", "r/", "a/b/c", "..", "../s", "r/..", "r/../s", ".s", "r/.s", "S", "a b", "x" * 64]
)
def test_invalid_refs_are_refused(ref: str) -> None:
    problem = checkpoint_ref_problem(ref)
    assert problem
    with pytest.raises(ValueError) as err:
        split_checkpoint_ref(ref)
    assert str(err.value) == problem


def test_a_long_ref_is_refused_without_quoting_it() -> None:
    ref = "a" * 100 + "/" + "b" * 5000
    problem = checkpoint_ref_problem(ref)
    assert problem and "aaaa" not in problem and str(MAX_REF_LENGTH) in problem
    # At the limit, the problem quotes no more than the ref itself.
    at_limit = "a" * 63 + "/" + "b" * 63
    assert checkpoint_ref_problem(at_limit) is None
    bad = "A" * 63 + "/" + "b" * 63
    assert len(checkpoint_ref_problem(bad) or "") < 200


# ----------------------------------------------------------- run directories


def test_run_checkpoint_dir_is_under_the_jobs_directory(layout: Layout) -> None:
    assert layout.run_checkpoint_dir(*JOB, "r1") == layout.checkpoint_dir(*JOB) / "r1"
    for bad in ("..", "", "a/b", "R"):
        with pytest.raises(ValueError):
            layout.run_checkpoint_dir(*JOB, bad)


def test_make_run_checkpoint_dir_writes_the_marker(layout: Layout) -> None:
    path = _run(layout, "r1")
    assert path == layout.run_checkpoint_dir(*JOB, "r1") and is_run_checkpoint_dir(path)
    assert json.loads((path / RUN_MARKER).read_text()) == {"job_id": "job-r1", "run_id": "r1"}
    # Nothing else is left beside it (the staging directory was renamed, not copied).
    assert sorted(p.name for p in path.parent.iterdir()) == ["r1"]
    assert sorted(p.name for p in path.iterdir()) == [RUN_MARKER]


def test_make_run_checkpoint_dir_again_keeps_what_is_there(layout: Layout) -> None:
    path = _run(layout, "r1")
    _ckpt(path / "step-1", 1000)
    assert _run(layout, "r1") == path
    assert sorted(p.name for p in path.iterdir()) == [RUN_MARKER, "step-1"]
    # A directory made by someone else without the marker gets it, and keeps its contents.
    other = layout.run_checkpoint_dir(*JOB, "r2")
    _ckpt(other / "step-9", 1000)
    assert not is_run_checkpoint_dir(other)
    _run(layout, "r2")
    assert is_run_checkpoint_dir(other) and (other / "step-9" / "model.bin").exists()
    assert sorted(p.name for p in other.iterdir()) == [RUN_MARKER, "step-9"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["r1", "r2"]


def test_a_directory_named_like_the_marker_is_no_marker(layout: Layout) -> None:
    d = layout.run_checkpoint_dir(*JOB, "r1")
    (d / RUN_MARKER).mkdir(parents=True)
    assert not is_run_checkpoint_dir(d)


# ------------------------------------------------------------ latest_checkpoint_in


def test_latest_checkpoint_in_by_mtime_then_name(tmp_path: Path) -> None:
    assert latest_checkpoint_in(tmp_path / "missing") is None
    assert latest_checkpoint_in(tmp_path) is None
    _ckpt(tmp_path / "a", 1000)
    _ckpt(tmp_path / "b", 3000)
    assert latest_checkpoint_in(tmp_path) == tmp_path / "b"
    _ckpt(tmp_path / "c", 3000)  # the same time: the greater name wins
    assert latest_checkpoint_in(tmp_path) == tmp_path / "c"
    # Newer, but being written, a file, or a link: none counts.
    _ckpt(tmp_path / ".d", 9000)
    _ckpt(tmp_path / "e.tmp", 9000)
    (tmp_path / "f").write_text("not a directory")
    os.utime(tmp_path / "f", (9000, 9000))
    elsewhere = _ckpt(tmp_path.parent / f"{tmp_path.name}-outside", 9000)
    (tmp_path / "g").symlink_to(elsewhere)
    assert latest_checkpoint_in(tmp_path) == tmp_path / "c"


# ------------------------------------------------------------ find_checkpoints


@pytest.fixture
def two_runs(layout: Layout) -> Layout:
    """Two runs with a step-000080 each, one plain checkpoint, and things that are not checkpoints."""
    base = layout.checkpoint_dir(*JOB)
    r1, r2 = _run(layout, "r1"), _run(layout, "r2")
    _ckpt(r1 / "step-000040", 1000)
    _ckpt(r1 / "step-000080", 2000)
    _ckpt(r2 / "step-000080", 3000)
    _ckpt(r2 / ".step-000120", 9000)  # being written
    _ckpt(base / "plain-1", 1500)
    # Not a run directory (no marker): a plain checkpoint, whose subdirectories are no checkpoints.
    _ckpt(base / "unmarked" / "step-000080", 1200)
    os.utime(base / "unmarked", (1100, 1100))
    return layout


def test_a_bare_suffix_finds_every_run_with_it(two_runs: Layout) -> None:
    base = two_runs.checkpoint_dir(*JOB)
    found = two_runs.find_checkpoints(*JOB, "step-000080")
    assert found == [
        FoundCheckpoint("r1", "step-000080", base / "r1" / "step-000080"),
        FoundCheckpoint("r2", "step-000080", base / "r2" / "step-000080"),
    ]
    assert [f.ref for f in found] == ["r1/step-000080", "r2/step-000080"]
    assert two_runs.find_checkpoints(*JOB, "step-000040") == [
        FoundCheckpoint("r1", "step-000040", base / "r1" / "step-000040")
    ]
    assert two_runs.find_checkpoints(*JOB, "plain-1") == [FoundCheckpoint("", "plain-1", base / "plain-1")]
    assert two_runs.find_checkpoints(*JOB, "unmarked") == [FoundCheckpoint("", "unmarked", base / "unmarked")]
    # A run directory is not a checkpoint, nor is one being written, nor one that is not there.
    for ref in ("r1", "step-000120", "no-such", "step-000120.tmp"):
        assert two_runs.find_checkpoints(*JOB, ref) == [], ref


def test_a_plain_checkpoint_and_a_runs_share_a_suffix(two_runs: Layout) -> None:
    base = two_runs.checkpoint_dir(*JOB)
    _ckpt(base / "step-000040", 500)
    assert [f.ref for f in two_runs.find_checkpoints(*JOB, "step-000040")] == [
        "step-000040",
        "r1/step-000040",
    ]


def test_run_id_and_suffix_find_exactly_one(two_runs: Layout) -> None:
    base = two_runs.checkpoint_dir(*JOB)
    for run in ("r1", "r2"):
        assert two_runs.find_checkpoints(*JOB, f"{run}/step-000080") == [
            FoundCheckpoint(run, "step-000080", base / run / "step-000080")
        ]
    # Another run's suffix, a run with no marker, an unknown run, a checkpoint being written.
    for ref in ("r2/step-000040", "unmarked/step-000080", "r9/step-000080", "r2/step-000120"):
        assert two_runs.find_checkpoints(*JOB, ref) == [], ref


def test_latest_is_the_newest_across_runs_and_the_plain_layout(two_runs: Layout) -> None:
    base = two_runs.checkpoint_dir(*JOB)
    assert two_runs.find_checkpoints(*JOB, LATEST_REF) == [
        FoundCheckpoint("r2", "step-000080", base / "r2" / "step-000080")
    ]
    _ckpt(base / "plain-2", 5000)
    assert [f.ref for f in two_runs.find_checkpoints(*JOB, "latest")] == ["plain-2"]
    _ckpt(base / "r1" / "step-000160", 5000)  # a tie on time: the greater suffix wins
    assert [f.ref for f in two_runs.find_checkpoints(*JOB, "latest")] == ["r1/step-000160"]


def test_find_checkpoints_of_a_job_with_none(layout: Layout) -> None:
    assert layout.find_checkpoints(*JOB, "latest") == []
    assert layout.find_checkpoints(*JOB, "step-1") == []
    _run(layout, "r1")
    assert layout.find_checkpoints(*JOB, "latest") == []


def test_find_checkpoints_refuses_bad_refs_and_names(layout: Layout) -> None:
    for ref in ("../x", "a/b/c", "", "r/../../x"):
        with pytest.raises(ValueError):
            layout.find_checkpoints(*JOB, ref)
    with pytest.raises(ValueError):
        layout.find_checkpoints("..", "g", "n", "s")


def test_links_are_not_followed(layout: Layout, tmp_path: Path) -> None:
    base = layout.checkpoint_dir(*JOB)
    outside = _ckpt(tmp_path / "outside" / "step-1", 9000)
    (tmp_path / "outside" / RUN_MARKER).write_text("{}")
    r1 = _run(layout, "r1")
    (r1 / "step-1").symlink_to(outside)
    (base / "linked-run").symlink_to(tmp_path / "outside")
    (base / "step-1").symlink_to(outside)
    assert layout.find_checkpoints(*JOB, "step-1") == []
    assert layout.find_checkpoints(*JOB, "linked-run/step-1") == []
    assert layout.find_checkpoints(*JOB, "latest") == []
