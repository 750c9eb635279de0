"""What ``pip install .`` puts on a user's machine: only the name ``baton``.

The wheel is built from this checkout and installed into a fresh virtual
environment outside the repository, so nothing here can be imported from the
source tree by accident.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds.
    source = tmp_path_factory.mktemp("source") / "baton"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", ".mypy_cache", ".ruff_cache", "__pycache__",
    ))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, cwd=out,
    )
    (built,) = out.glob("baton-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and its dependencies) installed; returns its python."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    return python


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True)


def test_the_wheel_holds_only_baton(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    metadata = {name for name in top if name.endswith(".dist-info")}
    assert len(metadata) == 1
    assert top - metadata == {"baton"}
    # The parts arrive whole, data files included.
    for member in (
        "baton/conductor/server.py",
        "baton/conductor/executors/local_shim.sh",
        "baton/viewer_api/scan_worker.py",
        "baton/client/cli.py",
        "baton/gateway/server.py",
        "baton/gateway/static/index.html",
        "baton/common/spec.py",
        "baton/v1/conductor_pb2.pyi",
        "baton/py.typed",
    ):
        assert member in names, member
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "baton = baton.client.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_a_fresh_install_imports_baton_and_nothing_generic(installed: Path, tmp_path: Path) -> None:
    modules = "baton.conductor, baton.client, baton.viewer_api, baton.common, baton.gateway.server"
    ok = run(installed, f"import {modules}", tmp_path)
    assert ok.returncode == 0, ok.stderr
    for generic in ("common", "conductor", "client", "viewer_api", "gateway"):
        refused = run(installed, f"import {generic}", tmp_path)
        assert refused.returncode != 0
        assert "ModuleNotFoundError" in refused.stderr


def test_every_installed_module_imports_from_the_install(installed: Path, tmp_path: Path) -> None:
    # A module that still said `from common import ...` would import in a
    # checkout (the folder is on the path there) and fail here.
    code = (
        "import importlib, pkgutil, baton\n"
        "names = [m.name for m in pkgutil.walk_packages(baton.__path__, 'baton.')]\n"
        "for name in names:\n"
        "    module = importlib.import_module(name)\n"
        "    assert 'site-packages' in (module.__file__ or ''), (name, module.__file__)\n"
        "print(len(names))\n"
    )
    done = run(installed, code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 50


def test_the_installed_command_line_runs(installed: Path, tmp_path: Path) -> None:
    baton = installed.parent / "baton"
    done = subprocess.run([str(baton), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "submit" in done.stdout
    module = subprocess.run(
        [str(installed), "-m", "baton.client.cli", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert module.returncode == 0, module.stderr
    assert module.stdout.startswith("baton ")
