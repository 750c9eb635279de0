"""The committed generated code must be what `make protos` would write now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tools.genprotos import generate

REPO = Path(__file__).resolve().parent.parent


def test_generated_code_is_current(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc wrote nothing"
    stale = []
    for path in fresh:
        rel = path.relative_to(tmp_path)
        committed = REPO / rel
        if not committed.exists() or committed.read_bytes() != path.read_bytes():
            stale.append(str(rel))
    committed_files = {p.relative_to(REPO) for p in (REPO / "baton" / "v1").glob("*_pb2*.py*")}
    extra = committed_files - {p.relative_to(tmp_path) for p in fresh}
    assert not stale and not extra, f"run `make protos`: stale {stale}, orphaned {sorted(map(str, extra))}"


def test_generated_code_imports_from_installed_distribution(tmp_path: Path) -> None:
    # Outside the source tree, `baton.v1` must come from the installed distribution
    # and not be shadowed by (or shadow) anything of ours.
    code = (
        "import baton.v1.conductor_pb2_grpc as g, baton.v1.job_pb2 as j;"
        "import baton.conductor, baton.client, baton.common;"
        "print(j.Job.DESCRIPTOR.full_name, g.ConductorStub.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["baton.v1.Job", "ConductorStub"]
