"""What every executor's supervisor reads and writes beside a launch.

The local supervisor (``local_shim.sh``) and the engines' node wrapper
(``node_wrapper.sh``) take the job's environment and command from one ``env``
file, and both report an exit as a shell does: a code, or 128+N for signal N.
"""

from __future__ import annotations

import shlex
import signal as _signal
from pathlib import Path

from baton.common.modes import write_private
from baton.conductor.executors.base import ExitStatus, LaunchSpec


def write_env_file(launch_dir: Path, spec: LaunchSpec) -> None:
    """The job's variables, exported, and its workdir and command, not (blocking).

    Owner-only: it holds the job's secrets until the job has read it (the
    supervisor empties it then). Values may carry any byte a secret file held.
    """
    lines = [f"export {k}={shlex.quote(v)}" for k, v in spec.env.items()]
    lines.append(f"baton_workdir={shlex.quote(spec.workdir)}")
    lines.append(f"baton_command={shlex.quote(spec.command)}")
    write_private(launch_dir / "env", ("\n".join(lines) + "\n").encode(errors="surrogateescape"))


def decode_exit(code: int, when: float | None = None, detail: str = "") -> ExitStatus:
    """A shell's exit status as an ExitStatus: 128+N is death by signal N."""
    if code > 128 and code - 128 in _signal.valid_signals():
        return ExitStatus(exit_code=code, signal=code - 128, time=when, detail=detail)
    return ExitStatus(exit_code=code, time=when, detail=detail)
