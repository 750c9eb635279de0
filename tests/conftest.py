from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import InProcessConductor, kill_job_groups


@pytest.fixture
def conductor_factory(tmp_path: Path) -> Iterator[object]:
    """Start in-process conductors with settings: ``conductor_factory(max_running=2)``."""
    started: list[InProcessConductor] = []

    def make(home: Path | None = None, **settings: object) -> InProcessConductor:
        c = InProcessConductor(home or tmp_path / f"home{len(started)}", **settings).start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()
        kill_job_groups(c.status_dir)


@pytest.fixture
def conductor(conductor_factory: object) -> InProcessConductor:
    """A conductor on a free loopback port with its own home under tmp_path."""
    return conductor_factory()  # type: ignore[operator]
