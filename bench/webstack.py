"""``baton up`` (conductor, viewer and gateway) as a subprocess, and Debian's
Chromium driven by Playwright: what the dashboard's browser test
(tests/test_dashboard.py) and the benchmark's ``web`` section both start.

Chromium is the Debian package at /usr/bin/chromium (tools/browser.sh installs
it; ``make test`` runs that). Playwright's own browser download is never used:
it cannot reach the internet from these machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import duration_pb2

from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2
from bench.procs import NOT_ENDED, REPO, kill_home_processes

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that reaches for the network on its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def browser_missing() -> str:
    """Why the browser cannot run here ("" when it can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: run tools/browser.sh as root (make test does)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[dev]'"
    return ""


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, through a started ``sync_playwright()``."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


class BatonUp:
    """``baton up`` on 127.0.0.1 port 0 with a fresh home under ``root``.

    Leaving the context cancels every job that has not ended (with ``token``,
    when the services need one), stops the services and kills whatever of the
    home's jobs is left. ``root`` is removed too when it was made here.
    """

    def __init__(self, root: Path | None = None, *extra_args: str, token: str | None = None) -> None:
        self._own_root = root is None
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="baton-web-"))
        self.home = self.root / "home"
        self.extra_args = extra_args
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.addresses: dict[str, str] = {}
        self._channel: grpc.Channel | None = None

    @property
    def url(self) -> str:
        """The gateway's base URL (``http://127.0.0.1:PORT``)."""
        return f"http://{self.addresses['gateway']}"

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    @property
    def stub(self) -> conductor_pb2_grpc.ConductorStub:
        """A gRPC stub for the conductor (send ``metadata`` with each call)."""
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.addresses["conductor"])
        return conductor_pb2_grpc.ConductorStub(self._channel)

    def start(self, timeout: float = 60.0) -> BatonUp:
        self.root.mkdir(parents=True, exist_ok=True)
        address_file = self.root / "addresses.json"
        address_file.unlink(missing_ok=True)
        self.log_path = self.root / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "baton.client.cli", "up", "--home", str(self.home),
                 "--listen", "127.0.0.1:0", "--viewer-listen", "127.0.0.1:0",
                 "--gateway-listen", "127.0.0.1:0", "--address-file", str(address_file),
                 *self.extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=REPO,
                # Its own session: a Ctrl-C meant for us must not stop it before
                # the cleanup has cancelled its jobs.
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not address_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"baton up exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"baton up did not start within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)
        self.addresses = json.loads(address_file.read_text())
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cancel_all(self, timeout: float = 30.0) -> None:
        """Cancel every job that has not ended, and wait until all have."""
        grace = duration_pb2.Duration(seconds=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.stub.ListJobs(
                pb.ListJobsRequest(states=NOT_ENDED, page_size=1000), metadata=self.metadata, timeout=10
            ).jobs
            if not active:
                return
            for job in active:
                if job.state != job_pb2.JOB_STATE_CANCELLING:
                    with contextlib.suppress(grpc.RpcError):  # ended meanwhile
                        self.stub.CancelJob(
                            pb.CancelJobRequest(job_id=job.id, grace_period=grace, reason="cleanup"),
                            metadata=self.metadata, timeout=10,
                        )  # fmt: skip
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None and self.addresses:
                with contextlib.suppress(grpc.RpcError):
                    self.cancel_all()
        finally:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            kill_home_processes(self.home)
            if self._own_root:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> BatonUp:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
