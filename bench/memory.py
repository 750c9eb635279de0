"""Memory section: what Baton adds for each running job.

The job's own command is tiny (``sleep 600``), and its own processes (the
job's process group, found by the job pids the launches record) are left
out. Counted: the growth of the conductor's anonymous PSS (heap, stacks:
what one more job can make it allocate) from before the jobs started to when
they all run, plus the PSS of every supervisor (the ``/bin/sh``
``local_shim.sh`` processes, from <home>/state/launches/*/*/pids), plus any
other process descending from the conductor that is neither. PSS
(proportional set size, /proc/<pid>/smaps_rollup) shares a page among the
processes mapping it, so shared libraries are not counted once per process.

The conductor's file-backed PSS is left out of its growth: it is code and
shared libraries, which do not grow with jobs, but its share moves whenever
any other process on the machine maps the same files (another Python with
the same virtualenv), by megabytes either way. Its total PSS and RSS, before
and after, are in the details.
"""

from __future__ import annotations

import time

from baton.common import limits
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from bench.jobs import running_with_process, submit_request, wait_for
from bench.procs import Conductor, Proc, all_processes, descendants, smaps_kb
from bench.report import Json, Target, figure, log, section

WARMUP_JOBS = 3


def _anon(rollup: dict[str, int]) -> int:
    """Anonymous and shared-memory PSS, kB (Pss_Anon and Pss_Shmem; Linux 5.9+)."""
    if "Pss_Anon" not in rollup:
        return rollup.get("Pss", 0)
    return rollup["Pss_Anon"] + rollup.get("Pss_Shmem", 0)


def _sum_kb(pids: list[int], field: str) -> int:
    return sum(smaps_kb(pid).get(field, 0) for pid in pids)


def _warmed(c: Conductor, poll_interval: float) -> dict[str, int]:
    """The conductor's smaps once its launch and cancel paths are warm (imports,
    worker threads, caches), so one-time costs are not charged to the jobs."""
    stub = c.stub
    warm = [stub.SubmitJob(submit_request(f"warm-{i}", "sleep 600"), timeout=30) for i in range(WARMUP_JOBS)]
    for job in warm:
        wait_for(stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
    c.cancel_all()
    time.sleep(1.0)
    return smaps_kb(c.pid)


def memory_per_running_job(n: int, poll_interval: float) -> Json:
    with Conductor("memory", max_running=n + WARMUP_JOBS + 10) as c:
        stub = c.stub
        before = _warmed(c, poll_interval)

        jobs = [stub.SubmitJob(submit_request(f"mem-{i}", "sleep 600"), timeout=30) for i in range(n)]
        for job in jobs:
            wait_for(stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
        time.sleep(1.0)
        after = smaps_kb(c.pid)

        procs = all_processes()
        by_pid = {p.pid: p for p in procs}
        pairs = [(shim, job) for shim, job in c.supervisors() if shim in by_pid]
        shims = sorted({shim for shim, _ in pairs if "local_shim.sh" in by_pid[shim].cmd})
        job_groups = {job for shim, job in pairs if shim in shims}
        job_procs = [p for p in procs if p.pgid in job_groups]
        tree = descendants(c.pid, procs)
        others: list[Proc] = [p for p in tree if p.pid not in shims and p.pgid not in job_groups]

        growth_kb = _anon(after) - _anon(before)
        shim_pss_kb = _sum_kb(shims, "Pss")
        shim_rss_kb = _sum_kb(shims, "Rss")
        other_pss_kb = _sum_kb([p.pid for p in others], "Pss")
        job_pss_kb = _sum_kb([p.pid for p in job_procs], "Pss")
        # The command runs as `/bin/sh -c COMMAND`, and dash forks the command
        # instead of exec'ing it, so each job group holds a shell besides `sleep`.
        job_shells = [p.pid for p in job_procs if p.cmd.startswith(("/bin/sh -c ", "/bin/bash -c "))]
        job_shell_pss_kb = _sum_kb(job_shells, "Pss")
        per_job_group: dict[int, list[str]] = {}
        for p in job_procs:
            per_job_group.setdefault(p.pgid, []).append(p.cmd)
        shapes = sorted({" | ".join(sorted(cmds)) for cmds in per_job_group.values()})
        log(f"memory: {len(shims)} supervisors for {n} jobs, conductor anonymous PSS grew {growth_kb} kB")

    per_job_mb = (growth_kb + shim_pss_kb + other_pss_kb) / n / 1024
    figures = {
        "per_job": figure(
            per_job_mb,
            "MB",
            n,
            "PSS Baton adds per running job: (conductor anonymous PSS growth + supervisor PSS + any other "
            "process Baton started) / jobs; the job's own processes excluded",
            Target("<", 5, "MB", "issue 2"),
        ),
        "conductor_growth_per_job": figure(
            growth_kb / n / 1024, "MB", n, "growth of the conductor's anonymous PSS, per job"
        ),
        "supervisor_pss_per_job": figure(
            shim_pss_kb / max(1, len(shims)) / 1024, "MB", len(shims), "PSS of one supervisor shell"
        ),
        "supervisor_rss_per_job": figure(
            shim_rss_kb / max(1, len(shims)) / 1024,
            "MB",
            len(shims),
            "RSS of one supervisor shell (shared pages counted in full; for comparison only)",
        ),
        "job_own_pss_per_job": figure(
            job_pss_kb / n / 1024,
            "MB",
            n,
            "PSS of the job's own process group (`sleep 600`, and any shell left in front of it), "
            "not counted above",
        ),
    }
    if job_shells:
        # Only when a shell stays in front of the command (no bash to exec it).
        figures["job_shell_pss_per_job"] = figure(
            job_shell_pss_kb / len(job_shells) / 1024,
            "MB",
            len(job_shells),
            "PSS of a shell left running the command inside the job's group (part of the job's own PSS)",
        )
        figures["per_job_counting_job_shell"] = figure(
            (growth_kb + shim_pss_kb + other_pss_kb + job_shell_pss_kb) / n / 1024,
            "MB",
            n,
            "per_job plus that shell, for a stricter reading of 'what Baton adds'",
        )
    return section(
        f"Memory Baton adds per running job, with {n} long-running tiny jobs (`sleep 600`).",
        figures,
        {
            "jobs": n,
            "conductor_anon_pss_kb_before": _anon(before),
            "conductor_anon_pss_kb_after": _anon(after),
            "conductor_pss_kb_before": before.get("Pss", 0),
            "conductor_pss_kb_after": after.get("Pss", 0),
            "conductor_rss_kb_before": before.get("Rss", 0),
            "conductor_rss_kb_after": after.get("Rss", 0),
            "supervisors_found": len(shims),
            "supervisor_pss_kb_total": shim_pss_kb,
            "other_baton_processes": [p.cmd for p in others],
            "other_baton_pss_kb": other_pss_kb,
            "job_process_groups": len(per_job_group),
            "job_processes_per_group": sorted({len(v) for v in per_job_group.values()}),
            "job_group_shapes": shapes,
        },
    )


MAXIMAL_JOBS = 8


def maximal_spec(name: str) -> str:
    """A spec of about 1 MiB encoded at every limit: env at its caps, thirteen steps of almost 64 KiB."""
    pad = "#" + "x" * (limits.MAX_COMMAND_BYTES - 100)
    value = "v" * (limits.MAX_ENV_BYTES // limits.MAX_ENV_VARS - 8)
    steps = "".join(f"  - {{name: s{k}, command: 'sleep 600 {pad}'}}\n" for k in range(13))
    env = "".join(f"  V{k:04d}: '{value}'\n" for k in range(limits.MAX_ENV_VARS))
    return f"name: {name}\nsteps:\n{steps}env:\n{env}"


def memory_with_maximal_jobs(poll_interval: float) -> Json:
    """Conductor RSS with eight jobs at every size limit, running, listed, fetched and watched (issue 15)."""
    with Conductor("maximal", max_running=MAXIMAL_JOBS + WARMUP_JOBS) as c:
        stub = c.stub
        idle = _warmed(c, poll_interval)

        jobs = []
        for i in range(MAXIMAL_JOBS):
            spec = maximal_spec(f"max-{i}")
            jobs.append(stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec), timeout=30))
        spec_bytes = max(j.spec.ByteSize() for j in jobs)
        for job in jobs:
            wait_for(stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
        # What broke clients before the limits: every reply and page carries the specs.
        pages = 0
        token = ""
        while True:
            page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
            pages, token = pages + 1, page.next_page_token
            if not token:
                break
        for job in jobs:
            stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=30)
        watch = stub.WatchJobs(pb.WatchJobsRequest(), timeout=30)
        for response in watch:
            if any(e.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END for e in response.events):
                break
        watch.cancel()
        time.sleep(1.0)
        after = smaps_kb(c.pid)
        log(f"maximal jobs: conductor RSS {idle.get('Rss', 0)} kB idle, {after.get('Rss', 0)} kB with eight")

    growth_mb = (after.get("Rss", 0) - idle.get("Rss", 0)) / 1024
    return section(
        f"Conductor RSS with {MAXIMAL_JOBS} running jobs at every size limit (about 1 MiB spec each, env "
        "at 256 variables and 128 KiB), after ListJobs, GetJob and a WatchJobs snapshot of them.",
        {
            "rss_growth": figure(
                growth_mb,
                "MB",
                MAXIMAL_JOBS,
                "conductor RSS with the eight jobs minus its RSS idle (after warm-up)",
                Target("<", 100, "MB", "issue 15"),
            ),
        },
        {
            "jobs": MAXIMAL_JOBS,
            "spec_bytes_encoded": spec_bytes,
            "list_pages": pages,
            "conductor_rss_kb_idle": idle.get("Rss", 0),
            "conductor_rss_kb_after": after.get("Rss", 0),
        },
    )
