"""A small job that behaves like a training run (standard library only).

    python3 tests/jobs/train.py --steps N --interval S --every K [--ignore-term]

It counts from step 0 to N, updating a deterministic "model" value each step,
and prints a progress line per step. Every K steps it saves a checkpoint under
$BATON_CHECKPOINT_DIR as a subdirectory: written under a temporary name
(``.ckpt-000123.tmp``) and renamed to ``step-000123`` once complete, holding the
state (``state.json``) with ``config.yaml`` and ``job.json`` beside it, the
layout the viewer reads. On start it continues from $BATON_RESUME_FROM when set.
On SIGTERM (Baton's default pause signal) it saves a checkpoint and exits 0,
unless ``--ignore-term`` is given. At the end it writes the final model value
to $BATON_RUN_DIR/result.txt and prints it.

The final value depends only on N, so a run paused and resumed any number of
times ends with the same result as a run never paused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType

STATE_FILE = "state.json"


def update(value: str, step: int) -> str:
    """One training step: the new model value from the old one and the step number."""
    return hashlib.sha256(f"{value}:{step}".encode()).hexdigest()[:16]


def initial_value() -> str:
    return "0" * 16


def say(line: str) -> None:
    print(line, flush=True)


def config_yaml(args: argparse.Namespace) -> str:
    # Written by hand: the job uses the standard library only.
    return (
        f"steps: {args.steps}\n"
        f"interval: {args.interval}\n"
        f"every: {args.every}\n"
        f"learning_rate: {args.lr}\n"
        f"batch_size: {args.batch_size}\n"
    )


def job_info(args: argparse.Namespace) -> dict[str, object]:
    return {
        "job_id": os.environ.get("BATON_JOB_ID", ""),
        "step": os.environ.get("BATON_STEP", ""),
        "step_name": os.environ.get("BATON_STEP_NAME", ""),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "args": {"steps": args.steps, "interval": args.interval, "every": args.every},
    }


def save_checkpoint(base: Path, step: int, value: str, args: argparse.Namespace) -> Path:
    """Write a complete checkpoint for ``step`` and return its directory."""
    base.mkdir(parents=True, exist_ok=True)
    final = base / f"step-{step:06d}"
    tmp = base / f".ckpt-{step:06d}-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, "value": value}) + "\n")
    (tmp / "config.yaml").write_text(config_yaml(args))
    (tmp / "job.json").write_text(json.dumps(job_info(args), indent=1) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        # The same step again (a periodic save, then a pause): the content is the
        # same, so swap the old one out under an incomplete name and drop it.
        old = base / f".old-{step:06d}-{os.getpid()}.tmp"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    say(f"checkpoint step={step} path={final}")
    return final


def load_checkpoint(path: Path) -> tuple[int, str]:
    data = json.loads((path / STATE_FILE).read_text())
    return int(data["step"]), str(data["value"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.05, help="seconds per step")
    p.add_argument("--every", type=int, default=10, help="checkpoint every K steps")
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ignore-term", action="store_true", help="ignore SIGTERM (no checkpoint on pause)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpt_dir = Path(os.environ.get("BATON_CHECKPOINT_DIR") or "checkpoints")
    run_dir = Path(os.environ.get("BATON_RUN_DIR") or ".")
    stop = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if args.ignore_term else on_term)

    resume = os.environ.get("BATON_RESUME_FROM")
    if resume:
        step, value = load_checkpoint(Path(resume))
        say(f"resumed from {resume} at step={step} value={value}")
    else:
        step, value = 0, initial_value()
        say(f"starting at step=0 value={value}")

    while step < args.steps:
        if stop:
            save_checkpoint(ckpt_dir, step, value, args)
            say(f"paused at step={step}")
            return 0
        step += 1
        value = update(value, step)
        say(f"step={step} value={value}")
        if args.every > 0 and step % args.every == 0:
            save_checkpoint(ckpt_dir, step, value, args)
        if step < args.steps:
            time.sleep(args.interval)

    (run_dir / "result.txt").write_text(value + "\n")
    say(f"result={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
