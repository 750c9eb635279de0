"""Sizes (issue 15 item 7): a spec, its env and commands are bounded before anything is
created (dry runs too), a list page always fits a default client, and a job's
log is kept to its ``max_log_bytes``.

Real conductor and viewer on loopback, real jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.common import limits
from baton.conductor import lifecycle
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.checks import bad_request_fields, error_info
from tests.harness import InProcessConductor, state
from tests.test_bad_input import assert_nothing_written
from tests.viewer_harness import InProcessViewer

Factory = Callable[..., InProcessConductor]
PAD = "x" * (limits.MAX_COMMAND_BYTES - 100)


def env_yaml(count: int, value_bytes: int) -> str:
    return "env:\n" + "".join(f"  V{i}: '{'v' * value_bytes}'\n" for i in range(count))


# (id, request fields, the field named, the ErrorInfo reason)
TOO_LARGE: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "spec-yaml-over-1MiB",
        {"spec_yaml": "name: big\ncommand: 'true'\n# " + "x" * limits.MAX_SPEC_BYTES + "\n"},
        "spec_yaml",
        "SPEC_TOO_LARGE",
    ),
    (
        "proto-spec-over-1MiB",
        {"spec": job_pb2.JobSpec(name="big", command="true", workdir="/" + "w" * limits.MAX_SPEC_BYTES)},
        "spec",
        "SPEC_TOO_LARGE",
    ),
    (
        "spec-over-1MiB-once-normalised",
        {
            # A YAML alias: a small text that expands past the limit.
            "spec_yaml": f"name: big\nsteps:\n  - {{name: s0, command: &c 'true #{PAD}'}}\n"
            + "".join(f"  - {{name: s{i}, command: *c}}\n" for i in range(1, 17))
        },
        "spec",
        "SPEC_TOO_LARGE",
    ),
    (
        "env-257-variables",
        {"spec_yaml": "name: e\ncommand: 'true'\n" + env_yaml(limits.MAX_ENV_VARS + 1, 1)},
        "spec.env",
        "ENV_TOO_MANY_VARIABLES",
    ),
    (
        "env-over-128KiB",
        {"spec_yaml": "name: e\ncommand: 'true'\n" + env_yaml(2, limits.MAX_ENV_BYTES // 2)},
        "spec.env",
        "ENV_TOO_LARGE",
    ),
    (
        "command-over-64KiB",
        {"spec_yaml": f"name: c\ncommand: 'true #{'x' * limits.MAX_COMMAND_BYTES}'\n"},
        "spec.command",
        "COMMAND_TOO_LARGE",
    ),
    (
        "step-command-over-64KiB",
        {"spec_yaml": f"name: c\nsteps:\n  - {{name: a, command: 'true #{PAD}{PAD}'}}\n"},
        "spec.steps[0].command",
        "COMMAND_TOO_LARGE",
    ),
]


@pytest.mark.parametrize("dry_run", [False, True], ids=["submit", "dry-run"])
@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [(f, n, r) for _, f, n, r in TOO_LARGE],
    ids=[c[0] for c in TOO_LARGE],
)
def test_a_spec_past_a_limit_is_refused_naming_the_limit_and_nothing_is_created(
    conductor: InProcessConductor, fields: dict[str, Any], field: str, reason: str, dry_run: bool
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        conductor.stub.SubmitJob(pb.SubmitJobRequest(dry_run=dry_run, **fields), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert bad_request_fields(err.value) == [field]
    info = error_info(err.value)
    assert info.reason == reason
    assert int(info.metadata["limit"]) in {
        limits.MAX_SPEC_BYTES,
        limits.MAX_ENV_VARS,
        limits.MAX_ENV_BYTES,
        limits.MAX_COMMAND_BYTES,
    }
    assert len((err.value.details() or "").encode()) <= 1024
    assert_nothing_written(conductor)


def test_a_spec_at_every_limit_is_accepted(conductor: InProcessConductor) -> None:
    value = "v" * (limits.MAX_ENV_BYTES // limits.MAX_ENV_VARS - 8)
    spec = "name: full\ncommand: 'true #" + "x" * (limits.MAX_COMMAND_BYTES - 8) + "'\n"
    spec += "env:\n" + "".join(f"  V{i:04d}: '{value}'\n" for i in range(limits.MAX_ENV_VARS))
    job = conductor.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec, dry_run=True), timeout=30)
    assert len(job.spec.env) == limits.MAX_ENV_VARS


def big_job_yaml(i: int) -> str:
    """A spec of about 0.9 MiB encoded, within every limit: eleven steps of almost 64 KiB and a full env."""
    steps = "".join(f"  - {{name: s{k}, command: 'true #{PAD}'}}\n" for k in range(11))
    value = "v" * (limits.MAX_ENV_BYTES // limits.MAX_ENV_VARS - 8)
    env = "".join(f"  V{k:04d}: '{value}'\n" for k in range(limits.MAX_ENV_VARS))
    return f"name: big{i}\nsteps:\n{steps}env:\n{env}"


def test_list_pages_stay_under_3MiB_whatever_the_page_size(
    conductor: InProcessConductor, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    ids = [conductor.submit(big_job_yaml(i)).id for i in range(5)]
    for job_id in ids:
        assert conductor.wait_ended(job_id, timeout=60).state == state("succeeded")

    pages = []
    token = ""
    while True:
        page = conductor.stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=10)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    assert len(pages) > 1, "five jobs of 0.9 MiB do not fit one page"
    assert all(p.ByteSize() <= limits.MAX_PAGE_BYTES for p in pages), [p.ByteSize() for p in pages]
    assert [j.id for p in pages for j in p.jobs] == list(reversed(ids)), "every job once, newest first"

    assert conductor.config.checkpoints_dir is not None
    viewer = viewer_factory(status_dir=conductor.status_dir, checkpoints_dir=conductor.config.checkpoints_dir)
    viewer.wait_for(
        lambda: viewer.stub.ListJobs(vpb.ViewerListJobsRequest(page_size=1), timeout=10).total_size == 5,
        "the viewer to index the five runs",
    )
    first = viewer.stub.ListJobs(vpb.ViewerListJobsRequest(page_size=1000), timeout=10)
    assert first.ByteSize() <= limits.MAX_PAGE_BYTES and first.next_page_token
    jobs, _ = viewer.list_all(page_size=1000)
    assert sorted(j.id for j in jobs) == sorted(ids)
    running = viewer.stub.ListRecentJobs(vpb.ListRecentJobsRequest(limit=1000), timeout=10)
    assert 0 < len(running.jobs) < 5 and running.ByteSize() <= limits.MAX_PAGE_BYTES


WRITER = """import sys, time
for i in range(600):
    sys.stdout.write("line %05d %s\\n" % (i, "y" * 1000))
    sys.stdout.flush()
    time.sleep(0.004)
"""


def test_max_log_bytes_keeps_the_end_of_the_log_and_followers_see_the_cut(
    conductor_factory: Factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lifecycle, "LOG_TRIM_INTERVAL", 0.2)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    c = conductor_factory()
    bound = 64 * 1024
    job = c.submit(f"name: chatty\nmax_log_bytes: 64Ki\ncommand: python3 {script}\n")
    assert job.spec.max_log_bytes == bound

    chunks = list(c.stub.StreamLogs(pb.StreamLogsRequest(job_id=job.id, follow=True), timeout=60))
    done = c.wait_ended(job.id)
    assert done.state == state("succeeded")
    assert any(ch.truncated for ch in chunks), "a follower is told the log was cut"
    assert chunks[-1].complete

    log = Path(done.run_dir, "output.log").read_bytes()
    # Cut when past twice the bound; what is left ends with the job's last line, whole.
    assert len(log) <= 2 * bound + 64 * 1024, len(log)
    assert log.endswith(b"line 00599 " + b"y" * 1000 + b"\n")
    # What the follower received after the last cut is the file's content from that point.
    after = b"".join(ch.data for ch in chunks[max(i for i, ch in enumerate(chunks) if ch.truncated) :])
    assert log.endswith(after[-len(log) :]) if after else True
