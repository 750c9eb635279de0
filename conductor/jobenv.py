"""The environment a job's step runs with: its spec's variables and BATON_*.

Only the job's own processes get these; the executor's supervisor keeps its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from baton.conductor.results import RESULT_FILE
from baton.v1 import job_pb2


def job_environment(
    job: job_pb2.Job,
    step: int,
    step_name: str,
    attempt: int,
    resume_from: str,
    gpus: Sequence[str] | None = None,
    secrets: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The step's environment. ``gpus``: the GPU ids Baton gave the job, or None
    where the engine assigns GPUs itself (nothing is set then). ``secrets``:
    the values of the spec's ``secret_env``, read for this launch only."""
    env = dict(job.spec.env)
    env.update(secrets or {})
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
    if gpus is not None:
        # Its own GPUs only, and set (empty) when it has none, so a job that
        # asked for none cannot wander onto another job's. Over the spec's env.
        env["CUDA_VISIBLE_DEVICES"] = env["BATON_GPUS"] = ",".join(gpus)
        # The ids are nvidia-smi's, which counts in PCI bus order; CUDA by
        # default counts fastest first, and would read "0" as another GPU.
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    return env
