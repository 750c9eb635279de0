"""How the conductor talks to its own helper processes (the status writer, the registry readers).

Each helper is ``python -m <module>`` of this same installation, over a pair of
pipes no one else holds: a frame is a 4-byte length and a pickle, and both
ends are this program. A helper ignores Ctrl-C (the conductor decides when it
ends, by closing its stdin) and sends its frames on a descriptor of its own,
so anything it prints lands on stderr.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from pathlib import Path
from typing import IO, Any

import baton

_LENGTH = 4
READY = "ready"


class HelperUnavailable(Exception):
    """A helper process failed a request, or there is none: the caller does the work itself."""


def command(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start ``module`` as a helper process."""
    env = dict(os.environ)
    # The child imports baton from where this process did, however it was installed.
    where = str(Path(baton.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (where, env.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", module, *args], env


def encode(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return len(data).to_bytes(_LENGTH, "big") + data


def send(stream: IO[bytes], obj: Any) -> None:
    stream.write(encode(obj))
    stream.flush()


def receive(stream: IO[bytes]) -> Any:
    """The next frame's object; EOFError when the other end has closed."""
    head = stream.read(_LENGTH)
    if len(head) < _LENGTH:
        raise EOFError
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def frame_length(head: bytes) -> int:
    return int.from_bytes(head, "big")


HEAD_BYTES = _LENGTH


def helper_streams() -> tuple[IO[bytes], IO[bytes]]:
    """In a helper: (its requests, its answers); stdout is pointed at stderr from now on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return sys.stdin.buffer, out
