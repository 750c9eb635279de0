"""A Ray job entrypoint that reports how Ray runs it (standard library only).

    python3 tests/jobs/ray_probe.py --out F [--trap T] [--ignore-term] [--orphans]
                                    [--seconds S] [--exit-code C]

Writes to ``--out`` (JSON, atomically): its pid, parent, process group, session,
the parent's command line and its whole environment. ``--trap`` appends
``TERM <unix time>`` to T on each SIGTERM (``--ignore-term``: and keeps running,
so only SIGKILL ends it). ``--orphans`` starts three ``sleep`` processes first
and adds their pids: ``child`` (stays its child), ``orphan_same_group`` (its
parent exits at once: an orphan in this process group), ``orphan_own_session``
(an orphan that called setsid). Prints ``probe <pid> running`` and ``probe
done``, then sleeps ``--seconds`` (0: exit at once) and exits with ``--exit-code``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from types import FrameType


def _parent_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _double_fork(new_session: bool) -> int:
    """Start `sleep 600` whose parent exits at once; return its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if new_session:
            os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.close(w)
            os.execvp("sleep", ["sleep", "600"])
        os.write(w, str(grandchild).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 64):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return int(out)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--trap", default="")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--orphans", action="store_true")
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--exit-code", type=int, default=0)
    args = p.parse_args()

    if args.trap:

        def on_term(signum: int, frame: FrameType | None) -> None:
            with open(args.trap, "a") as f:
                f.write(f"TERM {time.time():.6f}\n")
            if not args.ignore_term:
                sys.exit(143)

        signal.signal(signal.SIGTERM, on_term)

    facts: dict[str, object] = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "parent_cmdline": _parent_cmdline(os.getppid()),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "started_at": time.time(),
    }
    if args.orphans:
        child = subprocess.Popen(["sleep", "600"])
        facts["child"] = child.pid
        facts["orphan_same_group"] = _double_fork(new_session=False)
        facts["orphan_own_session"] = _double_fork(new_session=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(facts, f)
    os.replace(tmp, args.out)
    print(f"probe {os.getpid()} running", flush=True)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print("probe done", flush=True)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
