"""Fixtures that start real batch engines (tools/testclusters), for tests marked
``@pytest.mark.slurm``; ``pytest -m slurm`` runs them alone.

``make test`` installs the engines first (tools/engines.sh). Run by hand on a
machine without them, these tests skip, except under CI (CI=true), where a
missing engine is a failure: the install step is then broken.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tools.testclusters.slurm import SBIN_DIRS, SlurmCluster


def _require(*commands: str) -> None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    missing = [c for c in commands if shutil.which(c, path=path) is None]
    reason = ""
    if missing:
        reason = f"{', '.join(missing)} not installed: run tools/engines.sh as root (make test does)"
    elif os.geteuid() != 0:
        reason = "a SlurmCluster runs its daemons as root"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One single-node Slurm cluster for the whole session (about a second to start).

    Tests share it: each cancels what it submitted (see ``slurm`` below).
    """
    _require("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
    with SlurmCluster() as cluster:
        yield cluster


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The session's cluster, with every job killed and gone after the test."""
    yield slurm_cluster
    assert slurm_cluster.cancel_all(wait=15), "jobs still in the queue after the test"
