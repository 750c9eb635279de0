"""The environment a job's step runs with: its spec's variables and BATON_*.

Only the job's own processes get these; the executor's supervisor keeps its own.
"""

from __future__ import annotations

import os

from baton.conductor.results import RESULT_FILE
from baton.v1 import job_pb2


def job_environment(
    job: job_pb2.Job, step: int, step_name: str, attempt: int, resume_from: str
) -> dict[str, str]:
    env = dict(job.spec.env)
    env.update(
        BATON_JOB_ID=job.id,
        BATON_RUN_DIR=job.run_dir,
        BATON_CHECKPOINT_DIR=job.checkpoint_dir,
        BATON_STEP=str(step),
        BATON_STEP_NAME=step_name,
        BATON_ATTEMPT=str(attempt),
        BATON_RESULT_FILE=os.path.join(job.run_dir, RESULT_FILE),
    )
    if resume_from:
        env["BATON_RESUME_FROM"] = resume_from
    return env
