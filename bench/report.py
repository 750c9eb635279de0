"""Figures with units, sample counts and targets, and the statistics behind them."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


def log(message: str) -> None:
    """Progress for people, on stderr (stdout carries only the JSON document)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Target:
    """A goal from the issues: ``value op limit`` must hold (op is "<", "<=" or ">=")."""

    op: str
    limit: float
    unit: str
    source: str = ""

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.op == "<":
            return value < self.limit
        if self.op == "<=":
            return value <= self.limit
        if self.op == ">=":
            return value >= self.limit
        raise ValueError(f"unknown target operator {self.op!r}")

    def to_json(self) -> Json:
        out: Json = {"op": self.op, "value": self.limit, "unit": self.unit}
        if self.source:
            out["source"] = self.source
        return out


def _round(value: float) -> float:
    if math.isnan(value) or math.isinf(value):
        return value
    if abs(value) >= 100:
        return round(value, 1)
    if abs(value) >= 1:
        return round(value, 3)
    return round(value, 4)


def figure(value: float, unit: str, samples: int, what: str, target: Target | None = None) -> Json:
    """One measured number, as it appears in the JSON document."""
    out: Json = {"value": _round(float(value)), "unit": unit, "samples": samples, "what": what}
    if target is not None:
        out["target"] = target.to_json()
        out["pass"] = target.holds(float(value))
    return out


def distribution(
    name: str,
    values_ms: Sequence[float],
    what: str,
    *,
    unit: str = "ms",
    p50_target: Target | None = None,
    p95_target: Target | None = None,
    brief: bool = False,
) -> dict[str, Json]:
    """p50, p95, mean and max (only p50 and p95 when ``brief``) of latencies, as named figures."""
    n = len(values_ms)
    out = {
        f"{name}p50": figure(percentile(values_ms, 50), unit, n, f"median of {what}", p50_target),
        f"{name}p95": figure(percentile(values_ms, 95), unit, n, f"95th percentile of {what}", p95_target),
    }
    if not brief:
        mean = sum(values_ms) / n if n else math.nan
        out[f"{name}mean"] = figure(mean, unit, n, f"mean of {what}")
        out[f"{name}max"] = figure(max(values_ms) if n else math.nan, unit, n, f"maximum of {what}")
    return out


def section(description: str, figures: dict[str, Json], details: Json | None = None) -> Json:
    """A section of the document: what was measured, the figures, and how."""
    out: Json = {"description": description, "figures": figures}
    if details:
        out["details"] = details
    return out


def target_summary(results: dict[str, Json]) -> Json:
    """Every figure with a target, pass or fail, across all sections."""
    passed: list[str] = []
    failed: list[str] = []
    for name, result in results.items():
        for key, fig in result.get("figures", {}).items():
            if "pass" in fig:
                (passed if fig["pass"] else failed).append(f"{name}.{key}")
    return {"checked": len(passed) + len(failed), "passed": passed, "failed": failed, "all_pass": not failed}


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so the document is strict JSON."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value
