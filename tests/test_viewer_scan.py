"""The cold scan split across worker processes finds exactly what one process finds; the
checkpoint scan reads both layouts, whole or one entry at a time, as the oracle does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from inotify_simple import INotify
from inotify_simple import flags as F

from baton.viewer_api import parallel_scan, scan
from baton.viewer_api.index import Index
from tests.treegen import generate
from tests.viewer_oracle import scan_checkpoints as scan_oracle_checkpoints


def _live_runs(path: str, key: scan.RunKey, got: scan.RunFile | str | None, into: list[scan.RunKey]) -> bool:
    """An ``on_run`` hook that notes the runs a viewer would watch (and watches none)."""
    if not scan.ended(got):
        into.append(key)
    return False


def test_parallel_scan_equals_the_serial_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = generate(tmp_path / "home", runs=300, checkpoints=0, seed=3)
    (m.status_dir / "Bad_Project" / "g" / "n" / "r").mkdir(parents=True)
    monkeypatch.setattr(parallel_scan, "PARALLEL_SCAN_MIN_RUNS", 0)
    serial_dirs: list[tuple[str, ...]] = []
    serial_live: list[scan.RunKey] = []
    serial = scan.scan_status(
        str(m.status_dir),
        on_dir=lambda path, rel: serial_dirs.append(rel),
        on_run=lambda path, key, got: _live_runs(path, key, got, serial_live),
    )
    inotify = INotify()
    parent_dirs: list[tuple[str, ...]] = []
    parallel = parallel_scan.scan_status_parallel(
        str(m.status_dir),
        workers=3,
        on_dir=lambda path, rel: parent_dirs.append(rel),
        watch=parallel_scan.WorkerWatch(inotify.fileno(), F.CLOSE_WRITE),
    )

    def runs(result: scan.ScanResult) -> dict[scan.RunKey, tuple[object, ...]]:
        return {
            r.key: (r.job_id, r.state, r.create_ts, r.start_ts, r.end_ts, r.heartbeat_ts, r.signature)
            for r in result.runs
        }

    assert len(serial.runs) == 300
    assert runs(parallel) == runs(serial)
    assert parallel.problems == serial.problems and parallel.problems
    # Only live runs' bytes travel from the workers: the index keeps no others.
    live = {r.key for r in serial.runs if r.state not in scan.FINAL_STATES}
    assert 0 < len(live) < 300
    sent = {r.key: r.raw for r in parallel.runs if r.raw}
    assert sent == {r.key: r.raw for r in serial.runs if r.key in live}
    # Every directory down to the jobs' is entered once, by this process or watched by a
    # worker; below them, only the directories of runs that have not ended are watched.
    workers = dict(parallel.watched)
    assert parallel.unwatched == [] and len(workers) == len(parallel.watched)
    assert sorted(parent_dirs + list(workers.values())) == sorted(serial_dirs + serial_live)
    assert {rel for rel in workers.values() if len(rel) == 4} == live
    assert all(len(rel) < 4 for rel in serial_dirs)
    # The workers' watches live in this process's inotify instance.
    run = min(live)
    (m.status_dir.joinpath(*run) / "note.txt").write_text("x")
    ended_run = min(r.key for r in serial.runs if r.key not in live)
    (m.status_dir.joinpath(*ended_run) / "note.txt").write_text("x")
    events = inotify.read(timeout=5000)
    inotify.close()
    assert [(workers[e.wd], e.name) for e in events] == [(run, "note.txt")]


def test_a_failed_workers_share_is_scanned_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that dies without sending its frames loses nothing: its share is scanned here."""
    m = generate(tmp_path / "home", runs=200, checkpoints=0, seed=4)
    monkeypatch.setattr(parallel_scan, "PARALLEL_SCAN_MIN_RUNS", 0)
    serial = scan.scan_status(str(m.status_dir))
    # An interpreter that exits at once with a failure, as a crashed worker would.
    monkeypatch.setattr(parallel_scan.sys, "executable", "/bin/false")
    parallel = parallel_scan.scan_status_parallel(str(m.status_dir), workers=2)
    assert sorted(parallel.runs) == sorted(serial.runs) and len(serial.runs) == 200


def test_unwatchable_directories_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the kernel refuses a worker's watch, the scan still reads the directory and names it."""
    m = generate(tmp_path / "home", runs=100, checkpoints=0, seed=6)
    monkeypatch.setattr(parallel_scan, "PARALLEL_SCAN_MIN_RUNS", 0)
    entered: list[tuple[str, ...]] = []
    live: list[scan.RunKey] = []
    serial = scan.scan_status(
        str(m.status_dir),
        on_dir=lambda path, rel: entered.append(rel),
        on_run=lambda path, key, got: _live_runs(path, key, got, live),
    )
    # Not an inotify descriptor: inotify_add_watch fails on every directory, as when out of watches.
    with open(tmp_path / "not-inotify", "w") as f:
        watch = parallel_scan.WorkerWatch(f.fileno(), 2)
        parallel = parallel_scan.scan_status_parallel(
            str(m.status_dir), workers=2, on_dir=lambda path, rel: None, watch=watch
        )
    assert sorted(parallel.runs) == sorted(
        r if r.state not in scan.FINAL_STATES else r._replace(raw=b"") for r in serial.runs
    )
    assert parallel.watched == []
    # Each job directory, and each live run's, is named once.
    assert sorted(parallel.unwatched) == sorted([rel for rel in entered if len(rel) == 3] + live)
    assert live


# --------------------------------------------------------------- checkpoints


def _ckpt_fields(cf: scan.CheckpointFile) -> tuple[object, ...]:
    return (cf.path, cf.size_bytes, cf.file_count, cf.config_file, cf.has_job_spec)


@pytest.mark.parametrize("threads", [1, 3])
def test_the_checkpoint_scan_reads_both_layouts(tmp_path: Path, threads: int) -> None:
    """Plain checkpoints and runs' checkpoints, as the oracle finds them, job directories
    read one at a time or several at once; the runs' directories are entered (watched)
    and plain checkpoints are not."""
    m = generate(tmp_path / "home", runs=100, checkpoints=60, seed=9)
    assert m.in_runs and len(m.in_runs) < m.checkpoints
    entered: list[tuple[str, ...]] = []
    got = scan.scan_checkpoints(
        str(m.checkpoints_dir), on_dir=lambda path, rel: entered.append(rel), threads=threads
    )
    expected = scan_oracle_checkpoints(m.checkpoints_dir)
    assert {(*c.key, c.run_id, c.suffix): _ckpt_fields(c) for c in got.checkpoints} == {
        key: (str(c.path), c.size, c.files, c.config_file, c.has_job_spec) for key, c in expected.items()
    }
    assert got.problems == {}
    run_dirs = {k[:4] for k in m.in_runs}
    assert {rel for rel in entered if len(rel) == 4} == run_dirs
    assert len(entered) == len(set(entered))


def test_reading_one_entry_equals_the_full_scan(tmp_path: Path) -> None:
    """What an event makes the viewer read (one entry of a job's directory, every entry
    watched) is what the full scan found there."""
    m = generate(tmp_path / "home", runs=50, checkpoints=40, seed=10)
    root = str(m.checkpoints_dir.resolve())
    full = scan.scan_checkpoints(root)
    entered: list[tuple[str, ...]] = []
    pieces = scan.ScanResult(on_dir=lambda path, rel: entered.append(rel), watch_items=True)
    items = sorted({(*c.key, c.run_id or c.suffix) for c in full.checkpoints})
    for item in items:
        scan.read_checkpoint_item(root, item, os.path.join(root, *item), pieces)  # type: ignore[arg-type]
    assert sorted(map(_ckpt_fields, pieces.checkpoints)) == sorted(map(_ckpt_fields, full.checkpoints))
    assert sorted(entered) == items


def test_a_run_directory_is_no_checkpoint_and_a_marker_deeper_means_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    job = root / "p" / "g" / "n"
    (job / "r1" / "step-1").mkdir(parents=True)
    (job / "r1" / ".baton-run").write_text("{}")
    (job / "r1" / "step-1" / ".baton-run").write_text("copied along")  # inside a checkpoint: a file
    (job / "r1" / "Bad Name").mkdir()
    (job / "r1" / "half.tmp").mkdir()
    (job / "r1" / "notes.txt").write_text("not a checkpoint")
    (job / "plain" / ".baton-run").mkdir(parents=True)  # a directory is no marker
    got = scan.scan_checkpoints(str(root))
    by_key = {(c.run_id, c.suffix): c for c in got.checkpoints}
    assert sorted(by_key) == [("", "plain"), ("r1", "step-1")]
    assert by_key[("r1", "step-1")].file_count == 1
    assert got.problems == {str(job / "r1" / "Bad Name"): scan.INVALID_NAME}


def test_an_index_loaded_at_once_equals_one_built_by_changes(tmp_path: Path) -> None:
    m = generate(tmp_path / "home", runs=50, checkpoints=40, seed=12)
    found = scan.scan_checkpoints(str(m.checkpoints_dir)).checkpoints
    loaded, built = Index(), Index()
    loaded.load([], found, {})
    for cf in reversed(found):
        built.upsert_checkpoint(cf)

    def pages(index: Index, **flt: str) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        token = ""
        while True:
            args = (flt.get("project", ""), flt.get("group", ""), flt.get("name", ""), flt.get("run_id", ""))
            page, token = index.list_checkpoints(*args, 3, token)
            out.extend((*c.key, c.run_id, c.suffix) for c in page)
            if not token:
                return out

    assert pages(loaded) == pages(built) and len(pages(loaded)) == 40
    p, g, n, run, _ = m.in_runs[0]
    assert pages(loaded, run_id=run) == pages(built, run_id=run) == [k for k in pages(loaded) if k[3] == run]
    assert loaded.checkpoint_totals("", "", "") == built.checkpoint_totals("", "", "")
    # Forgetting a run's directory as one entry takes all its checkpoints.
    built.remove_checkpoint_item((p, g, n), run)
    assert [k for k in pages(built) if k[:4] == (p, g, n, run)] == []
    assert built.checkpoint_count == loaded.checkpoint_count - sum(
        1 for k in m.in_runs if k[:4] == (p, g, n, run)
    )
