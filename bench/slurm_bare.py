"""Bare Slurm latencies: what the engine itself costs, with no Baton in between.

    python -m bench.slurm_bare [--jobs N] [--poll-interval-ms MS]

prints one JSON document (progress on stderr); ``python -m bench --only
slurm_bare`` runs the same as a section of the benchmark (it is not in the
default run: it needs Slurm installed, which ``make test`` does through
tools/engines.sh).

On a single-node cluster started for the purpose (tools/testclusters/slurm.py),
one job at a time:

- ``sbatch_to_running``: sbatch started -> squeue shows the job RUNNING;
- ``scancel_to_gone``: scancel started -> squeue shows it CANCELLED or no longer
  lists it (for a job that obeys SIGTERM: ``exec sleep 300``).

squeue is polled every ``poll_interval`` (5 ms by default) between calls; each
call is a process of its own and itself takes several ms, which the details
report (``squeue_call_ms``). These are the floor under any Slurm executor's
submit and cancel latency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.report import Json, distribution, figure, log, section
from tools.testclusters.slurm import SlurmCluster

POLL_INTERVAL = 0.005
WARMUP = 2
# A job that obeys SIGTERM: the shell becomes sleep.
COMMAND = "exec sleep 300"


def _squeue_state(job: int, env: dict[str, str]) -> str:
    out = subprocess.run(
        ["squeue", "-h", "-j", str(job), "-o", "%T"], env=env, capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


def _wait(
    job: int, env: dict[str, str], done: set[str], interval: float, timeout: float = 30.0
) -> tuple[int, list[float]]:
    """Polls squeue until the job's state is in ``done``; returns polls and each call's ms."""
    calls: list[float] = []
    deadline = time.perf_counter() + timeout
    while True:
        t = time.perf_counter()
        state = _squeue_state(job, env)
        calls.append((time.perf_counter() - t) * 1000)
        if state in done:
            return len(calls), calls
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job} still {state!r} after {timeout} s, waiting for {sorted(done)}")
        time.sleep(interval)


@dataclass
class Sample:
    """One bare job: sbatch -> RUNNING and scancel -> gone, with what the commands cost."""

    job: int
    to_running_ms: float
    to_gone_ms: float
    sbatch_ms: float
    scancel_ms: float
    squeue_ms: list[float]
    polls_running: int
    polls_gone: int


def one_job(
    env: dict[str, str],
    name: str,
    poll_interval: float = POLL_INTERVAL,
    command: str = COMMAND,
    before_cancel: Callable[[int], None] | None = None,
) -> Sample:
    """sbatch ``command``, poll squeue until RUNNING, ``before_cancel(job)`` if given
    (e.g. wait until the script has started), scancel, poll until gone."""
    t0 = time.perf_counter()
    out = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", f"--job-name={name}", f"--wrap={command}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    acked = time.perf_counter()
    job = int(out.stdout.strip().split(";")[0])
    polls, calls = _wait(job, env, {"RUNNING"}, poll_interval)
    running = time.perf_counter()
    if before_cancel is not None:
        before_cancel(job)
    t1 = time.perf_counter()
    subprocess.run(["scancel", str(job)], env=env, check=True, capture_output=True, timeout=30)
    cancelled = time.perf_counter()
    polls2, calls2 = _wait(job, env, {"", "CANCELLED"}, poll_interval)
    gone = time.perf_counter()
    return Sample(
        job=job,
        to_running_ms=(running - t0) * 1000,
        to_gone_ms=(gone - t1) * 1000,
        sbatch_ms=(acked - t0) * 1000,
        scancel_ms=(cancelled - t1) * 1000,
        squeue_ms=calls + calls2,
        polls_running=polls,
        polls_gone=polls2,
    )


def measure(cluster: SlurmCluster, jobs: int = 10, poll_interval: float = POLL_INTERVAL) -> Json:
    """sbatch -> RUNNING and scancel -> gone, over ``jobs`` jobs (after 2 unmeasured),
    one at a time, on a started cluster. Returns a bench section (p50/p95 in ms)."""
    env = cluster.env
    to_running: list[float] = []
    to_gone: list[float] = []
    sbatch_ms: list[float] = []
    scancel_ms: list[float] = []
    squeue_ms: list[float] = []
    polls_running: list[int] = []
    polls_gone: list[int] = []
    exit_codes: dict[str, int] = {}
    for i in range(WARMUP + jobs):
        sample = one_job(env, f"bench-{i}", poll_interval)
        if i >= WARMUP:
            to_running.append(sample.to_running_ms)
            to_gone.append(sample.to_gone_ms)
            sbatch_ms.append(sample.sbatch_ms)
            scancel_ms.append(sample.scancel_ms)
            squeue_ms.extend(sample.squeue_ms)
            polls_running.append(sample.polls_running)
            polls_gone.append(sample.polls_gone)
            # 0:15 when SIGTERM ended the job; 0:9 when only the SIGKILL KillWait later did.
            code = cluster.job(sample.job).get("ExitCode", "?")
            exit_codes[code] = exit_codes.get(code, 0) + 1
    log(f"slurm_bare: {jobs} jobs measured")
    figures = distribution("sbatch_to_running_", to_running, "sbatch started to squeue showing RUNNING")
    figures.update(
        distribution(
            "scancel_to_gone_", to_gone, "scancel started to squeue showing CANCELLED or not listing the job"
        )
    )
    figures.update(distribution("sbatch_call_", sbatch_ms, "the sbatch command (start to exit)", brief=True))
    figures.update(
        distribution("scancel_call_", scancel_ms, "the scancel command (start to exit)", brief=True)
    )
    figures.update(distribution("squeue_call_", squeue_ms, "one squeue poll (start to exit)", brief=True))
    figures["startup"] = figure(
        cluster.startup_seconds * 1000,
        "ms",
        1,
        "SlurmCluster.start(): munged, slurmctld, slurmd to node idle",
    )
    return section(
        "Bare Slurm (no Baton): sbatch to RUNNING and scancel to gone, as seen by polling squeue, "
        "one job (`exec sleep 300`) at a time on a single-node cluster started for it.",
        figures,
        {
            "jobs": jobs,
            "warmup_jobs": WARMUP,
            "observed_by": "polling `squeue -h -j ID -o %T`, one process per poll",
            "poll_interval_ms": poll_interval * 1000,
            "sbatch_to_running_samples_ms": [round(x, 1) for x in to_running],
            "scancel_to_gone_samples_ms": [round(x, 1) for x in to_gone],
            "cancelled_exit_codes": exit_codes,
            "polls_to_running_mean": round(sum(polls_running) / len(polls_running), 2) if jobs else 0,
            "polls_to_gone_mean": round(sum(polls_gone) / len(polls_gone), 2) if jobs else 0,
            "slurm_conf": cluster.settings(),
            "node": {"cpus": cluster.cpus, "memory_mb": cluster.memory_mb},
            "note": "slurmctld schedules pending batch jobs from a background loop that wakes once "
            "a second, so sbatch-to-RUNNING spreads over about 0-1 s whatever the poll interval. "
            "squeue says RUNNING once the job is allocated, often before its script has started. "
            "On a busy machine an occasional scancel-to-gone of about KillWait (5 s) was seen; "
            "cancelled_exit_codes tells whether SIGTERM (0:15) or only the SIGKILL (0:9) ended each job",
        },
    )


def slurm_bare(jobs: int, poll_interval: float = POLL_INTERVAL) -> Json:
    """The benchmark section: its own cluster, started and stopped here."""
    with SlurmCluster(gpus=0) as cluster:
        return measure(cluster, jobs, poll_interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.slurm_bare", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--jobs", type=int, default=10, help="measured jobs (default %(default)s)")
    p.add_argument(
        "--poll-interval-ms",
        type=float,
        default=POLL_INTERVAL * 1000,
        help="sleep between squeue polls (default %(default)s)",
    )
    args = p.parse_args(argv)
    result = slurm_bare(max(1, args.jobs), max(0.0, args.poll_interval_ms / 1000))
    json.dump(result, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
