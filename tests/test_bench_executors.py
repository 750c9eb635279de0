"""bench/executors.py (the ``executors_ms`` section) on real engines, with few jobs.

The smoke test of ``make bench`` leaves this section out (it runs at least 10
pairs of jobs per engine); here its measurement runs two pairs on the session's
Slurm cluster (``-m slurm``) and Ray head (``-m ray``), and without engines it
must say why instead of failing.
"""

from __future__ import annotations

import pytest

from bench import executors
from bench.report import Json
from tools.testclusters.ray import RayHead
from tools.testclusters.slurm import SlurmCluster

TIMED = ("submit_to_running", "submit_to_started", "cancel")


def _check(engine: str, figures: dict[str, Json], details: Json, pairs: int) -> None:
    for side in ("bare", "baton"):
        for what in TIMED:
            for q in ("p50", "p95"):
                fig = figures[f"{engine}_{side}_{what}_{q}"]
                assert fig["unit"] == "ms" and fig["samples"] == pairs
                assert 0 < fig["value"] < 60_000, (side, what, fig)
    for key in ("submit_overhead", "submit_overhead_started", "cancel_overhead"):
        fig = figures[f"{engine}_{key}"]
        assert fig["target"]["op"] == "<=" and fig["target"]["value"] >= 20
        assert isinstance(fig["pass"], bool)
    # The first RUNNING event comes before the engine has the launch, which comes
    # before the wrapper has started it.
    first = figures[f"{engine}_baton_submit_to_first_running_p50"]["value"]
    handed = figures[f"{engine}_baton_submit_to_handed_p50"]["value"]
    assert first <= handed <= figures[f"{engine}_baton_submit_to_running_p50"]["value"]
    assert details["pairs"] == pairs
    assert sum(details["baton_cancelled_by"].values()) == pairs


@pytest.mark.slurm
def test_baton_beside_bare_slurm(slurm: SlurmCluster) -> None:
    figures, details = executors.measure_engine(executors.slurm_on(slurm), 2)
    _check("slurm", figures, details, 2)
    assert details["submitted_at_a_fixed_phase_of_the_second"]


@pytest.mark.ray
def test_baton_beside_bare_ray(ray_head: RayHead) -> None:
    figures, details = executors.measure_engine(executors.ray_on(ray_head), 2)
    _check("ray", figures, details, 2)


def test_a_missing_engine_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    def never() -> object:
        raise AssertionError("an engine was started although it is missing")

    monkeypatch.setattr(
        executors,
        "STARTERS",
        {"slurm": (lambda: "sbatch not installed", never), "ray": (lambda: "no `ray` command", never)},
    )
    result = executors.executors(10)
    assert "error" not in result and result["figures"] == {}
    engines = result["details"]["engines"]
    assert engines["slurm"] == {"measured": False, "why": "sbatch not installed"}
    assert engines["ray"] == {"measured": False, "why": "no `ray` command"}
