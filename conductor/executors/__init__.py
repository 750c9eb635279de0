"""Executors run a job's steps somewhere: one interface, one module each.

``make_executors`` is the factory: it builds the executors a conductor offers,
by name, so the lifecycle never imports a concrete one.
"""

from __future__ import annotations

from pathlib import Path

from baton.conductor.executors.base import Executor


def make_executors(state_dir: Path) -> dict[str, Executor]:
    """The executors this conductor offers, by name."""
    from baton.conductor.executors.local import LocalExecutor

    local = LocalExecutor(state_dir / "launches")
    return {local.name: local}
