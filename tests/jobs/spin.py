"""Burn ``--cpu`` seconds of CPU time, then exit 0 (standard library only).

CPU time, not wall time: a job frozen with SIGSTOP finishes only once resumed.
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", type=float, default=1.0)
    args = p.parse_args()
    start = time.process_time()
    n = 0
    while time.process_time() - start < args.cpu:
        n += 1
    print(f"spun {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
