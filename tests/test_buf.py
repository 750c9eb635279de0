"""The protos pass ``buf lint`` (STANDARD and COMMENTS, with the exceptions
``buf.yaml`` gives reasons for) and break nothing against the committed
baseline, ``protos/baseline.binpb``; a breaking edit fails with buf's own
message. buf comes from npm (``tools/buf``), as the Node interop test's
packages do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO
from tools import bufcli


@pytest.fixture(scope="module")
def buf() -> Path:
    problem = bufcli.missing()
    if problem:
        pytest.skip(problem)
    return bufcli.install()


def run_buf(buf: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_lint_is_clean(buf: Path) -> None:
    done = run_buf(buf, "lint")
    assert done.returncode == 0 and not done.stdout, f"buf lint:\n{done.stdout}{done.stderr}"


def test_nothing_breaks_the_baseline(buf: Path) -> None:
    done = run_buf(buf, "breaking", "--against", str(bufcli.BASELINE))
    assert done.returncode == 0, (
        f"buf breaking against {bufcli.BASELINE.relative_to(REPO)} (a deliberate release moves it "
        f"with `make proto-baseline`):\n{done.stdout}{done.stderr}"
    )


def test_a_breaking_edit_fails(buf: Path, tmp_path: Path) -> None:
    shutil.copy(REPO / "buf.yaml", tmp_path)
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    bufcli.copy_googleapis(tmp_path / "build" / "googleapis")
    job_proto = tmp_path / "protos" / "baton" / "v1" / "job.proto"
    text = job_proto.read_text()
    assert text.count("  string id = 1;\n") == 1
    job_proto.write_text(text.replace("  string id = 1;\n", "  string id = 999;\n"))  # renumbered (free)

    done = run_buf(buf, "breaking", "--against", str(bufcli.BASELINE), cwd=tmp_path)
    assert done.returncode != 0
    assert 'Previously present field "1" with name "id" on message "Job" was deleted.' in done.stdout
