from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.engines import slurm, slurm_cluster  # noqa: F401  (fixtures)
from tests.harness import InProcessConductor, SubprocessConductor, kill_job_groups
from tests.viewer_harness import InProcessViewer

# Engine fixtures live in their own modules (tests/ray_engine.py: the `ray_head` fixture).
pytest_plugins = ["tests.ray_engine"]

# In-process services log to the real stderr (pytest still shows it on a
# failure), never into the output that a test of the CLI captures.
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))


@pytest.fixture(scope="session", autouse=True)
def _cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Viewers keep their index snapshots under $XDG_CACHE_HOME: the tests' own, never the user's
    (every viewer a test starts, in this process or as a child, inherits it)."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


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


@pytest.fixture
def start_conductor(request: pytest.FixtureRequest) -> Iterator[Callable[[Path], SubprocessConductor]]:
    """Start `baton conductor` processes on a home, with the module's CONDUCTOR_ARGS flags.

    Every one started is stopped after the test, and the jobs of its home killed.
    """
    args: tuple[str, ...] = getattr(request.module, "CONDUCTOR_ARGS", ())
    started: list[SubprocessConductor] = []

    def start(home: Path) -> SubprocessConductor:
        c = SubprocessConductor(home, *args)
        started.append(c)
        return c.start()

    yield start
    for c in started:
        c.stop()
    for home in {c.home for c in started}:
        kill_job_groups(home / "status")


@pytest.fixture
def viewer_factory(tmp_path: Path) -> Iterator[Callable[..., InProcessViewer]]:
    """Start in-process viewers: ``viewer_factory(status_dir=..., checkpoints_dir=..., watch="poll")``.

    Settings are ViewerConfig fields; ``listen`` is always 127.0.0.1:0. Without
    ``home`` the viewer's home is a fresh directory under tmp_path.
    """
    started: list[InProcessViewer] = []

    def make(**settings: Any) -> InProcessViewer:
        settings.setdefault("home", tmp_path / f"viewer-home{len(started)}")
        v = InProcessViewer(**settings).start()
        started.append(v)
        return v

    yield make
    for v in started:
        v.stop()
