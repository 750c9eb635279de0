"""A job that ticks: one numbered line every ``--interval`` seconds (standard library only).

    python3 tests/jobs/ticker.py --ran-file F [--stop-file P] [--ticks N] [--exit-code C]

On start it appends $BATON_JOB_ID to ``--ran-file`` (so a test can tell whether
a job ran twice) and prints ``start <id>``; then ``tick 0``, ``tick 1``, ...
until ``--stop-file`` exists or ``--ticks`` lines are printed; then ``stop``,
and it exits with ``--exit-code``. ``--max-seconds`` bounds it in any case.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ran-file", required=True)
    p.add_argument("--stop-file", default="")
    p.add_argument("--ticks", type=int, default=0, help="0: until the stop file appears")
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument("--exit-code", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=120.0)
    args = p.parse_args()
    job_id = os.environ.get("BATON_JOB_ID", "?")
    fd = os.open(args.ran_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"{job_id}\n".encode())
    os.close(fd)
    print(f"start {job_id}", flush=True)
    deadline = time.monotonic() + args.max_seconds
    i = 0
    while time.monotonic() < deadline:
        if args.stop_file and os.path.exists(args.stop_file):
            break
        if args.ticks and i >= args.ticks:
            break
        print(f"tick {i}", flush=True)
        i += 1
        time.sleep(args.interval)
    print("stop", flush=True)
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
