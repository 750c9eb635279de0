"""Smoke test of ``make bench BENCH_ARGS=--scale`` (bench/scale.py) at a tiny size.

300 generated jobs and 5 live ones: every phase runs, every figure issue 18
sets a target for is there with its target, and nothing is left behind. The
values are not checked against the targets: this machine may be busy, and
the benchmark is not a test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.procs import kill_home_processes

REPO = Path(__file__).resolve().parent.parent
TARGETED = (
    "conductor_rss_mb",
    "conductor_rss_after_restart_mb",
    "restart_ready_s",
    "list_jobs_worst_p95",
    "list_jobs_no_such_project_p95",
    "list_jobs_rare_old_job_p95",
    "getjob_during_list_p95",
    "conductor_info_p95",
    "watch_first_event_ms",
    "watch_snapshot_s",
    "getjob_during_watch_p95",
    "clear_jobs_s",
    "viewer_cold_start_s",
    "viewer_rss_mb",
    "viewer_inotify_watches",
    "viewer_restart_s",
    "viewer_restart_rss_mb",
    "viewer_restart_inotify_watches",
)
PHASES = (
    "live_jobs", "transport_floor", "list_jobs", "conductor_info", "watch_snapshot", "restart", "viewer",
    "clear_jobs",
)  # fmt: skip


def _number_or_timed_out(fig: dict[str, Any]) -> bool:
    value = fig["value"]
    if value is None:
        return "timed_out" in fig
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_bench_scale_runs_every_phase_at_a_tiny_size(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "--scale",
            "--scale-jobs", "300", "--scale-live", "5", "--scale-running", "2",
            "--scale-clients", "4", "--scale-phase-limit", "60", "--scale-dir", str(tmp_path),
        ],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)
    assert doc["mode"] == "scale"
    assert list(doc["results"]) == ["history_scale"]
    result = doc["results"]["history_scale"]
    details = result["details"]
    assert "phase_errors" not in details, details["phase_errors"]
    assert set(details["phase_seconds"]) == set(PHASES)
    assert details["history"]["jobs"] == 300
    assert details["live_running"] == 2 and details["running_after_restart"] == 2
    snapshot = details["watch_snapshot"]
    assert snapshot["jobs"] == snapshot["expected"] == 305, snapshot
    clear = details["clear_jobs"]
    assert clear["deleted"] == clear["asked"] == 150 and clear["sampled_still_answered"] == 0, clear

    figures = result["figures"]
    for key, fig in figures.items():
        assert _number_or_timed_out(fig), (key, fig)
        assert isinstance(fig["unit"], str) and fig["unit"], key
    for key in TARGETED:
        assert key in figures, key
        assert "target" in figures[key] and isinstance(figures[key]["pass"], bool), (key, figures[key])
    listed = [k for k in figures if k.startswith("list_jobs_") and k.endswith("_p95")]
    assert len(listed) >= 14, listed
    # Matching nothing matched nothing; the rare job's few runs were found.
    assert figures["list_jobs_no_such_project_p95"]["matched"] == 0
    assert figures["list_jobs_rare_old_job_p95"]["matched"] >= 1
    assert figures["viewer_inotify_watches"]["value"] > 0
    assert details["viewer_index_ready"]["runs"] == 305, details["viewer_index_ready"]
    # The restart served from the snapshot the cold start wrote, then reconciled.
    assert details["viewer_snapshot"]["runs"] == 305, details.get("viewer_snapshot")
    assert figures["viewer_reconciled_s"]["value"] >= figures["viewer_restart_s"]["value"]
    assert figures["getjob_during_list_p95"]["samples"] > 0
    assert figures["getjob_during_watch_p95"]["samples"] > 0
    assert figures["getjob_floor_p95"]["samples"] > 0 and figures["getjob_floor_errors"]["value"] == 0

    assert [p.name for p in tmp_path.iterdir()] == []
    assert kill_home_processes(tmp_path) == 0
