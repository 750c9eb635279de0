"""The cold scan split across worker processes finds exactly what one process finds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.treegen import generate
from viewer_api import scan


def test_parallel_scan_equals_the_serial_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = generate(tmp_path / "home", runs=300, checkpoints=0, seed=3)
    (m.status_dir / "Bad_Project" / "g" / "n" / "r").mkdir(parents=True)
    monkeypatch.setattr(scan, "PARALLEL_SCAN_MIN_RUNS", 0)
    serial = scan.scan_status(str(m.status_dir))
    parallel = scan.scan_status_parallel(str(m.status_dir), workers=3)

    def runs(result: scan.ScanResult) -> dict[scan.RunKey, tuple[object, ...]]:
        return {
            r.key: (r.job_id, r.state, r.create_ts, r.start_ts, r.end_ts, r.heartbeat_ts, r.raw, r.signature)
            for r in result.runs
        }

    assert len(serial.runs) == 300
    assert runs(parallel) == runs(serial)
    assert parallel.problems == serial.problems and parallel.problems
    assert sorted(parallel.dirs) == sorted(serial.dirs)
