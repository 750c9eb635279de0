"""Another language, from ``protos/`` alone: a Node.js script (``tests/node``,
``@grpc/grpc-js`` with ``@grpc/proto-loader``, installed here from the npm
registry at the versions pinned in its package.json and lockfile) submits a
job, follows its log, watches, and lists in the viewer."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from baton.client import ConductorClient
from tests.harness import REPO
from tests.services import spec, stack
from tools import genprotos

NODE_DIR = REPO / "tests" / "node"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs node and npm")
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=NODE_DIR, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return NODE_DIR / "node_modules"


def test_node_client_drives_both_services(node_modules: Path, tmp_path: Path) -> None:
    with stack(tmp_path / "home") as services:
        with ConductorClient(services.address) as client:
            # A job before the script starts, so its watch starts past revision 0.
            first = client.submit_job(spec("earlier", "true", project="interop"))
            client.wait_for_job(first.id, timeout=30)
            since = client.get_conductor_info().revision
        googleapis = str(genprotos.googleapis_root())
        argv = [services.address, services.viewer_address, str(REPO / "protos"), str(REPO), googleapis]
        done = subprocess.run(
            ["node", "interop.js", *argv], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)

        job_id = seen["submitted"]["id"]
        assert int(seen["since"]) == since > 0
        assert seen["submitted"]["state"] == "JOB_STATE_QUEUED" and seen["submitted"]["request_id"]
        assert seen["log"]["text"] == "hello from node\nline two\n"
        assert seen["log"]["complete"] == {"state": "JOB_STATE_SUCCEEDED", "exit_code": 0}

        events = seen["events"]
        revisions = [int(e["revision"]) for e in events]
        assert revisions == list(range(since + 1, since + 1 + len(revisions)))
        assert {e["id"] for e in events} == {job_id}
        assert events[0]["state"] == "JOB_STATE_QUEUED" and events[-1]["state"] == "JOB_STATE_SUCCEEDED"
        assert {e["type"] for e in events} == {"JOB_EVENT_TYPE_UPDATED"}
        # Any job-less event on that watch says by its type what it is: a heartbeat.
        assert set(seen["others"]) <= {"JOB_EVENT_TYPE_HEARTBEAT"}

        # The snapshot, from revision 0: the one earlier job, then its end, by type.
        snapshot = seen["snapshot"]
        assert [(e["type"], e["id"]) for e in snapshot] == [
            ("JOB_EVENT_TYPE_SNAPSHOT", first.id),
            ("JOB_EVENT_TYPE_SNAPSHOT_END", None),
        ]
        assert {int(e["revision"]) for e in snapshot} == {since}

        listed = seen["viewer"]
        assert {j["id"] for j in listed["jobs"]} == {first.id, job_id} and listed["total_size"] == "2"
        assert listed["get_job"]["state"] == "JOB_STATE_SUCCEEDED"
        assert (Path(listed["get_job"]["run_dir"]) / "output.log").read_text() == seen["log"]["text"]
        assert seen["not_found"]["code"] == 5  # NOT_FOUND

        with ConductorClient(services.address) as client:
            assert client.get_job(job_id).spec.name == "from-node"
