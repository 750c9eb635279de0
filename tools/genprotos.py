"""Generate the Python code for ``protos/`` into ``<out>/baton/v1``.

Used by ``make protos`` (writing into the tree) and by the staleness test
(writing into a temporary directory and comparing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def googleapis_root() -> Path:
    """Where ``google/api/*.proto`` lie: the googleapis-common-protos package.

    The protos' ``google.api.http`` annotations import them; they are taken from
    the installed package (which ships the .proto files beside its generated
    code) instead of being copied into the repository or fetched from buf's
    registry, which these machines cannot reach.
    """
    from google.api import annotations_pb2

    return Path(annotations_pb2.__file__).resolve().parent.parent.parent


def generate(out: Path) -> list[Path]:
    """Run protoc on every proto under protos/; return the files it wrote."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"-I{googleapis_root()}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out / "baton" / "v1").glob("*_pb2*.py*"))


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(out):
        print(path.relative_to(out))


if __name__ == "__main__":
    main()
