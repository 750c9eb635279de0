"""buf, the protos' linter and breaking-change checker, installed from npm.

``tools/buf/package.json`` and its lockfile pin ``@bufbuild/buf``; ``install``
puts it in ``tools/buf/node_modules`` (ignored by git) the way the Node
interop test installs its packages. buf's remote registry is never used: the
module is ``protos/`` (see ``buf.yaml``). Besides the well-known types, which buf
carries, the protos import ``google/api/annotations.proto`` (their HTTP
routes): ``install`` copies it and ``http.proto`` from the installed
googleapis-common-protos package into ``build/googleapis``, buf.yaml's second
module, which is neither linted nor held to the baseline.

``python -m tools.bufcli baseline`` (``make proto-baseline``) writes
``protos/baseline.binpb``, the image ``buf breaking`` compares against. Moving
it is a deliberate release step: a change that breaks clients fails
``make test`` until then.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUF_DIR = ROOT / "tools" / "buf"
BASELINE = ROOT / "protos" / "baseline.binpb"
GOOGLEAPIS = ROOT / "build" / "googleapis"


def missing() -> str | None:
    """Why buf cannot be installed here, or None when it can."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "needs node and npm to install buf (@bufbuild/buf)"
    return None


def copy_googleapis(out: Path = GOOGLEAPIS) -> Path:
    """Copy the google/api protos the annotations need from googleapis-common-protos."""
    from tools.genprotos import googleapis_root

    (out / "google" / "api").mkdir(parents=True, exist_ok=True)
    for name in ("annotations.proto", "http.proto"):
        shutil.copyfile(googleapis_root() / "google" / "api" / name, out / "google" / "api" / name)
    return out


def install() -> Path:
    """Install the pinned buf (a no-op when it is there) and the google/api protos; return buf."""
    copy_googleapis()
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=BUF_DIR, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return BUF_DIR / "node_modules" / ".bin" / "buf"


def write_baseline(buf: Path, out: Path = BASELINE) -> None:
    """Build the image of protos/ as it is now, without comments (they break nothing)."""
    subprocess.run([str(buf), "build", "--exclude-source-info", "-o", str(out)], cwd=ROOT, check=True)


def main() -> None:
    if sys.argv[1:] != ["baseline"]:
        raise SystemExit("usage: python -m tools.bufcli baseline")
    problem = missing()
    if problem:
        raise SystemExit(problem)
    write_baseline(install())
    print(BASELINE.relative_to(ROOT))


if __name__ == "__main__":
    main()
