"""Latency sections: submit to RUNNING, cancel to CANCELLED, pause and resume.

One operation at a time, with the sync gRPC client: each sample is the time
from sending the RPC to the first GetJob (or the RPC's own answer) showing
the awaited state.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from baton.v1 import conductor_pb2 as pb
from bench.jobs import (
    S,
    Seen,
    ms_since,
    running_with_process,
    state_is,
    submit_request,
    timestamp_ms,
    wait_for,
)
from bench.procs import Conductor, process_state
from bench.report import Json, Target, distribution, figure, log, percentile, section

SETTLE_S = 0.01  # between one sample's end and the next sample's start


def _polling(samples: list[Seen], interval: float) -> Json:
    polls = [s.polls for s in samples]
    return {
        "observed_by": "polling GetJob with the sync client; the RPC's own answer counts as a poll",
        "poll_interval_ms": interval * 1000,
        "polls_per_sample_mean": round(sum(polls) / len(polls), 2) if polls else 0,
    }


def submit_to_running(n: int, poll_interval: float) -> Json:
    """SubmitJob sent -> GetJob shows RUNNING, for ``n`` trivial jobs, one at a time."""
    warmup = 3
    with Conductor("submit", max_running=n + warmup + 10) as c:
        stub = c.stub
        acks: list[float] = []
        running: list[Seen] = []
        launched: list[float] = []
        server: list[float] = []
        for i in range(warmup + n):
            req = submit_request(f"submit-{i}", "sleep 30")
            t0 = time.perf_counter()
            job = stub.SubmitJob(req, timeout=30)
            ack = ms_since(t0)
            seen = wait_for(
                stub, job.id, state_is(S.JOB_STATE_RUNNING), t0, first=job, interval=poll_interval
            )
            proc = wait_for(stub, job.id, running_with_process, t0, first=seen.job, interval=poll_interval)
            if i >= warmup:
                acks.append(ack)
                running.append(seen)
                launched.append(proc.ms)
                server.append(timestamp_ms(seen.job.start_time) - timestamp_ms(seen.job.create_time))
            time.sleep(SETTLE_S)
        log(f"submit_to_running: {n} jobs measured")
    figures = distribution(
        "",
        [s.ms for s in running],
        "SubmitJob sent to GetJob showing RUNNING",
        p50_target=Target("<", 15, "ms", "issue 2"),
    )
    figures.update(
        distribution("ack_", acks, "the SubmitJob round trip (acknowledged once durable)", brief=True)
    )
    figures.update(
        distribution(
            "process_started_",
            launched,
            "SubmitJob sent to GetJob showing RUNNING with the process launched (external_id set)",
            brief=True,
        )
    )
    figures.update(
        distribution(
            "server_create_to_start_",
            server,
            "the conductor's own create_time to start_time (no client or polling time)",
            brief=True,
        )
    )
    return section(
        "Submit-to-RUNNING latency of a trivial job (`sleep 30`), one submission at a time; "
        "the jobs run on and are cancelled at the end.",
        figures,
        {"jobs": n, "warmup_jobs": warmup, **_polling(running, poll_interval)},
    )


def _bulk_cancel(c: Conductor, n: int, poll_interval: float) -> tuple[float, float]:
    """``n`` running jobs cancelled at once (16 callers): ms until the last CancelJob was
    answered, and until the last job was seen CANCELLED."""
    stub = c.stub
    ids = [stub.SubmitJob(submit_request(f"bulk-{i}", "sleep 60"), timeout=30).id for i in range(n)]
    for job_id in ids:
        wait_for(stub, job_id, running_with_process, time.perf_counter(), interval=poll_interval)
    time.sleep(0.5)
    answered: list[float] = []
    t0 = time.perf_counter()

    def one(job_id: str) -> None:
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id, reason="benchmark"), timeout=60)
        answered.append(ms_since(t0))

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, ids))
    last = 0.0
    for job_id in ids:
        last = wait_for(
            stub, job_id, state_is(S.JOB_STATE_CANCELLED), t0, interval=poll_interval, timeout=120
        ).ms
    return max(answered), last


def cancel(n: int, bulk: int, poll_interval: float) -> Json:
    """CancelJob sent -> CANCELLED, for jobs that obey SIGTERM (``sleep 60``)."""
    with Conductor("cancel", max_running=max(n, bulk) + 10) as c:
        stub = c.stub
        acks: list[float] = []
        done: list[Seen] = []
        for i in range(n + 2):
            job = stub.SubmitJob(submit_request(f"cancel-{i}", "sleep 60"), timeout=30)
            wait_for(stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            answer = stub.CancelJob(pb.CancelJobRequest(job_id=job.id, reason="benchmark"), timeout=30)
            ack = ms_since(t0)
            seen = wait_for(
                stub, job.id, state_is(S.JOB_STATE_CANCELLED), t0, first=answer, interval=poll_interval
            )
            if i >= 2:
                acks.append(ack)
                done.append(seen)
        log(f"cancel: {n} jobs measured")
        signals = sorted({s.job.signal for s in done if s.job.HasField("signal")})
        bulk_answered, bulk_done = _bulk_cancel(c, bulk, poll_interval)
        log(f"cancel: {bulk} running jobs cancelled at once in {bulk_done:.0f} ms")
    figures = distribution(
        "",
        [s.ms for s in done],
        "CancelJob sent to GetJob showing CANCELLED",
        p50_target=Target("<", 20, "ms", "issue 2"),
    )
    figures.update(distribution("ack_", acks, "the CancelJob round trip (answers CANCELLING)", brief=True))
    figures["bulk_all_cancelled"] = figure(
        bulk_done,
        "ms",
        bulk,
        f"{bulk} running jobs cancelled at once (16 concurrent callers): first CancelJob sent to "
        "the last job seen CANCELLED",
    )
    figures["bulk_all_answered"] = figure(
        bulk_answered, "ms", bulk, f"the same {bulk} cancels: first CancelJob sent to the last one answered"
    )
    return section(
        "Cancel latency of a running job that obeys SIGTERM (`sleep 60`), default grace (10 s), one "
        "at a time; then many running jobs cancelled at once.",
        figures,
        {
            "jobs": n,
            "warmup_jobs": 2,
            "bulk_jobs": bulk,
            "ending_signals": signals,
            **_polling(done, poll_interval),
        },
    )


CHECKPOINT_JOB = (
    'trap \'d="$BATON_CHECKPOINT_DIR"; mkdir -p "$d/.ck-$$" && mv "$d/.ck-$$" "$d/ck-$$"; exit 0\' TERM; '
    "while :; do sleep 1; done"
)


def pause_resume(n: int, poll_interval: float) -> Json:
    """Pause and resume a running job ``n`` times in each mode."""
    figures: dict[str, Json] = {}
    details: Json = {"cycles_per_mode": n}
    with Conductor("pause", max_running=8) as c:
        stub = c.stub
        # SUSPEND: SIGSTOP/SIGCONT of the job's process group.
        job = stub.SubmitJob(submit_request("pause-suspend", "sleep 600"), timeout=30)
        wait_for(stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
        pid = int(stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10).external_id)
        pauses: list[Seen] = []
        resumes: list[Seen] = []
        stopped_ok = 0
        for _ in range(n + 1):
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            answer = stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_SUSPEND), timeout=30)
            paused = wait_for(
                stub, job.id, state_is(S.JOB_STATE_PAUSED), t0, first=answer, interval=poll_interval
            )
            stopped_ok += process_state(pid) == "T"
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            answer = stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=30)
            resumed = wait_for(
                stub, job.id, state_is(S.JOB_STATE_RUNNING), t0, first=answer, interval=poll_interval
            )
            pauses.append(paused)
            resumes.append(resumed)
        pauses, resumes = pauses[1:], resumes[1:]
        figures.update(distribution("suspend_pause_", [s.ms for s in pauses], "PauseJob(SUSPEND) to PAUSED"))
        figures.update(
            distribution("suspend_resume_", [s.ms for s in resumes], "ResumeJob to RUNNING (SIGCONT)")
        )
        details["suspend"] = {
            "job": "sleep 600",
            "leader_in_state_T_when_paused": f"{stopped_ok} of {n + 1}",
            **_polling(pauses + resumes, poll_interval),
        }
        log(f"pause_resume: suspend, {n} cycles measured")

        # CHECKPOINT: the job traps the signal, saves a checkpoint and exits; resume relaunches.
        job = stub.SubmitJob(
            submit_request("pause-checkpoint", CHECKPOINT_JOB, pause={"signal": "SIGTERM", "grace": "10s"}),
            timeout=30,
        )
        wait_for(stub, job.id, running_with_process, time.perf_counter(), interval=poll_interval)
        pauses, resumes = [], []
        started: list[float] = []
        pids: set[str] = set()
        for _ in range(n + 1):
            time.sleep(SETTLE_S * 5)  # let the new shell install its trap
            t0 = time.perf_counter()
            answer = stub.PauseJob(
                pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_CHECKPOINT), timeout=30
            )
            paused = wait_for(
                stub, job.id, state_is(S.JOB_STATE_PAUSED), t0, first=answer, interval=poll_interval
            )
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            answer = stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=30)
            resumed = wait_for(
                stub, job.id, state_is(S.JOB_STATE_RUNNING), t0, first=answer, interval=poll_interval
            )
            proc = wait_for(stub, job.id, running_with_process, t0, first=resumed.job, interval=poll_interval)
            pids.add(proc.job.external_id)
            pauses.append(paused)
            resumes.append(resumed)
            started.append(proc.ms)
        last = stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10)
        pauses, resumes, started = pauses[1:], resumes[1:], started[1:]
        figures.update(
            distribution(
                "checkpoint_pause_",
                [s.ms for s in pauses],
                "PauseJob(CHECKPOINT) to PAUSED (the job traps SIGTERM, saves a checkpoint, exits)",
            )
        )
        figures.update(
            distribution(
                "checkpoint_resume_",
                [s.ms for s in resumes],
                "ResumeJob to RUNNING (a new process is launched)",
            )
        )
        details["checkpoint"] = {
            "job": CHECKPOINT_JOB,
            "distinct_processes": len(pids),
            "resume_to_new_pid_reported_p50_ms": round(percentile(started, 50), 3),
            "resumed_from_checkpoint": bool(last.resume_dir),
            **_polling(pauses + resumes, poll_interval),
        }
        log(f"pause_resume: checkpoint, {n} cycles measured")
    return section(
        "Pause and resume latency of one running job, both modes, one operation at a time "
        "(issue 3 sets no number; reported for comparison).",
        figures,
        details,
    )
