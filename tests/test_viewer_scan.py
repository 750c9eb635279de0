"""The cold scan split across worker processes finds exactly what one process finds."""

from __future__ import annotations

from pathlib import Path

import pytest
from inotify_simple import INotify
from inotify_simple import flags as F

from tests.treegen import generate
from viewer_api import parallel_scan, scan


def test_parallel_scan_equals_the_serial_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = generate(tmp_path / "home", runs=300, checkpoints=0, seed=3)
    (m.status_dir / "Bad_Project" / "g" / "n" / "r").mkdir(parents=True)
    monkeypatch.setattr(parallel_scan, "PARALLEL_SCAN_MIN_RUNS", 0)
    serial_dirs: list[tuple[str, ...]] = []
    serial = scan.scan_status(str(m.status_dir), on_dir=lambda path, rel: serial_dirs.append(rel))
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
            r.key: (r.job_id, r.state, r.create_ts, r.start_ts, r.end_ts, r.heartbeat_ts, r.raw, r.signature)
            for r in result.runs
        }

    assert len(serial.runs) == 300
    assert runs(parallel) == runs(serial)
    assert parallel.problems == serial.problems and parallel.problems
    # Every directory is entered once: by this process, or watched by a worker.
    workers = dict(parallel.watched)
    assert parallel.unwatched == [] and len(workers) == len(parallel.watched)
    assert sorted(parent_dirs + list(workers.values())) == sorted(serial_dirs)
    # The workers' watches live in this process's inotify instance.
    run = next(iter(sorted(serial.runs, key=lambda r: r.key)))
    (m.status_dir.joinpath(*run.key) / "note.txt").write_text("x")
    events = inotify.read(timeout=5000)
    inotify.close()
    assert [(workers[e.wd], e.name) for e in events] == [(run.key, "note.txt")]


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
    serial = scan.scan_status(str(m.status_dir), on_dir=lambda path, rel: entered.append(rel))
    # Not an inotify descriptor: inotify_add_watch fails on every directory, as when out of watches.
    with open(tmp_path / "not-inotify", "w") as f:
        watch = parallel_scan.WorkerWatch(f.fileno(), 2)
        parallel = parallel_scan.scan_status_parallel(
            str(m.status_dir), workers=2, on_dir=lambda path, rel: None, watch=watch
        )
    assert sorted(parallel.runs) == sorted(serial.runs)
    assert parallel.watched == []
    # Each directory below the groups (job and run directories) is named once.
    assert sorted(parallel.unwatched) == sorted(rel for rel in entered if len(rel) >= 3)
