"""GetJob callers in processes of their own, for the scale benchmark (bench/scale.py).

    python -m bench.loadclient ADDRESS IDS_FILE OUT_FILE STOP_FILE [--interval-ms MS]

Calls GetJob on ids picked at random from IDS_FILE (one a line), pausing
``--interval-ms`` between calls, until STOP_FILE exists; prints ``ready`` once
its first call has been answered; at the end writes one line per call to
OUT_FILE: the call's start (``time.monotonic()``, the same clock in every
process on this machine), its latency in ms, and its status code name.

One process per caller, so 32 callers measure the server and not one client
process's GIL.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc

CALL_DEADLINE = 30.0


@dataclass(frozen=True)
class Call:
    start: float
    ms: float
    code: str


def read_calls(path: Path) -> list[Call]:
    """What a caller wrote; nothing when it wrote nothing (it failed to start)."""
    out: list[Call] = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        start, ms, code = line.split()
        out.append(Call(float(start), float(ms), code))
    return out


def run(address: str, ids: list[str], out: Path, stop: Path, interval: float, seed: int) -> None:
    rng = random.Random(seed)
    calls: list[tuple[float, float, str]] = []
    with grpc.insecure_channel(address) as channel:
        stub = conductor_pb2_grpc.ConductorStub(channel)
        ready = False
        while not os.path.exists(stop):
            t0 = time.monotonic()
            try:
                stub.GetJob(pb.GetJobRequest(job_id=rng.choice(ids)), timeout=CALL_DEADLINE)
                code = "OK"
            except grpc.RpcError as err:
                code = err.code().name  # type: ignore[attr-defined]
            calls.append((t0, (time.monotonic() - t0) * 1000, code))
            if not ready:
                print("ready", flush=True)
                ready = True
            if interval:
                time.sleep(interval)
    out.write_text("".join(f"{t:.6f} {ms:.3f} {code}\n" for t, ms, code in calls))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadclient", description=__doc__.split("\n")[0])
    p.add_argument("address")
    p.add_argument("ids", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("stop", type=Path)
    p.add_argument("--interval-ms", type=float, default=100.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ids = args.ids.read_text().split()
    if not ids:
        print("no ids to ask for", file=sys.stderr)
        return 2
    run(args.address, ids, args.out, args.stop, args.interval_ms / 1000, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
