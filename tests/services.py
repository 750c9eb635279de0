"""Both services in-process for client, CLI and interop tests: a real conductor
(``tests.harness.InProcessConductor``) and a real viewer on the same home,
the viewer running on the conductor's event loop. Also: a conductor started
again on the port the previous one had (a restart on a known address).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from baton.viewer_api.config import ViewerConfig
from baton.viewer_api.server import RunningViewer
from baton.viewer_api.server import start as start_viewer
from tests.harness import REPO, InProcessConductor, kill_job_groups

PY = f"{shlex.quote(sys.executable)} -S"


class Stack:
    """A conductor and a viewer over one home, on free loopback ports."""

    def __init__(
        self, home: Path, viewer_settings: dict[str, Any] | None = None, **conductor_settings: Any
    ) -> None:
        self.home = home
        self.conductor = InProcessConductor(home, **conductor_settings).start()
        config = ViewerConfig(listen="127.0.0.1:0", home=home, **(viewer_settings or {}))
        self.viewer: RunningViewer | None = self.conductor.call(start_viewer(config))
        self.viewer_address = self.viewer.address if self.viewer else ""

    @property
    def address(self) -> str:
        return self.conductor.address

    def stop(self) -> None:
        if self.viewer is not None and self.conductor.running is not None:
            self.conductor.call(self.viewer.stop(0.5))
            self.viewer = None
        if self.conductor.running is not None:
            self.conductor.stop()


@contextmanager
def stack(
    home: Path, viewer_settings: dict[str, Any] | None = None, **conductor_settings: Any
) -> Iterator[Stack]:
    s = Stack(home, viewer_settings, **conductor_settings)
    try:
        yield s
    finally:
        s.stop()
        kill_job_groups(home / "status")


def restart(conductor: InProcessConductor) -> InProcessConductor:
    """Stop ``conductor`` and start a new one on the same home and the same port."""
    conductor.stop()
    again = InProcessConductor(conductor.home)
    again.config = again.config.model_copy(update={"listen": conductor.address})
    return again.start()


def spec(name: str, command: str, **fields: Any) -> str:
    """A YAML job spec run from the repository root."""
    return yaml.safe_dump({"name": name, "command": command, "workdir": str(REPO), **fields}, sort_keys=False)


def lines_job(count: int, interval: float, width: int = 40) -> str:
    """A command printing ``count`` numbered lines of mixed length, ``interval`` s apart,
    the last one without a newline."""
    code = (
        "import sys, time\n"
        f"for i in range({count}):\n"
        f"    sys.stdout.write(f'line {{i}} ' + 'x' * (i * 7 % {width}) + '\\n')\n"
        "    sys.stdout.flush()\n"
        f"    time.sleep({interval})\n"
        "sys.stdout.write('no newline at the end')\n"
    )
    return f"{PY} -c {shlex.quote(code)}"
