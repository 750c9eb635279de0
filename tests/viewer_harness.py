"""A real viewer for tests: in-process on 127.0.0.1:0 (its own loop in a thread),
or as ``python -m client.cli viewer`` in a subprocess (optionally on a
read-only bind mount). Tests talk to it with the ordinary sync gRPC stub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from baton.v1 import viewer_pb2 as vpb
from baton.v1 import viewer_pb2_grpc
from baton.viewer_api.config import ViewerConfig
from baton.viewer_api.server import RunningViewer, start

REPO = Path(__file__).resolve().parent.parent


class ViewerHandle:
    """A viewer under test, wherever it runs: its address, a stub, and helpers on top."""

    address: str
    _channel: grpc.Channel | None = None
    _stub: viewer_pb2_grpc.ViewerStub | None = None

    @property
    def stub(self) -> viewer_pb2_grpc.ViewerStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.address)
            self._stub = viewer_pb2_grpc.ViewerStub(self._channel)
        return self._stub

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None

    def list_all(self, **filters: Any) -> tuple[list[Any], list[int]]:
        """Every page of ListJobs: (jobs in order, total_size of each page)."""
        jobs: list[Any] = []
        totals: list[int] = []
        token = ""
        while True:
            resp = self.stub.ListJobs(vpb.ViewerListJobsRequest(page_token=token, **filters), timeout=10)
            jobs.extend(resp.jobs)
            totals.append(resp.total_size)
            token = resp.next_page_token
            if not token:
                return jobs, totals

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
        """Poll ``check`` (which calls RPCs) until it holds; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)


class InProcessViewer(ViewerHandle):
    """``viewer_api.server.start`` on 127.0.0.1:0 in this process (own loop, own thread)."""

    def __init__(self, **settings: Any) -> None:
        self.config = ViewerConfig(listen="127.0.0.1:0", **settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="viewer-loop")
        self.running: RunningViewer | None = None

    def start(self) -> InProcessViewer:
        self.thread.start()
        try:
            self.running = asyncio.run_coroutine_threadsafe(start(self.config), self.loop).result(60)
        except BaseException:
            self.stop()
            raise
        self.address = self.running.address
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the viewer's loop (for white-box nudges such as reconcile)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def reconcile(self) -> None:
        assert self.running is not None
        self.call(self.running.indexer.reconcile())

    def stop(self) -> None:
        self.close_channel()
        if self.running is not None:
            self.call(self.running.stop(0.5), timeout=30)
            self.running = None
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()


@contextlib.contextmanager
def viewer_session(**settings: Any) -> Iterator[InProcessViewer]:
    """An in-process viewer for a ``with`` block (module-scoped fixtures use this)."""
    v = InProcessViewer(**settings).start()
    try:
        yield v
    finally:
        v.stop()


def can_mount_read_only() -> str | None:
    """None when this process can make a private read-only bind mount, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot bind-mount read-only"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare or mount is not installed"
    with tempfile.TemporaryDirectory() as d:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && ! touch "$1/x" 2>/dev/null',
             "sh", d],
            capture_output=True,
            text=True,
            timeout=20,
        )  # fmt: skip
    if probe.returncode != 0:
        return f"cannot make a read-only bind mount here: {probe.stderr.strip() or probe.returncode}"
    return None


# Runs a command in a new user namespace whose inotify watch limit is $1: the
# kernel then refuses watches past it, as it does when fs.inotify.max_user_watches runs out.
_WATCH_LIMIT_SCRIPT = 'echo "$1" > /proc/sys/user/max_inotify_watches && shift && exec "$@"'


def can_limit_watches() -> str | None:
    """None when this process can run a command under a lower inotify watch limit, else why not."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", _WATCH_LIMIT_SCRIPT, "sh", "5", "true"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    if probe.returncode != 0:
        why = probe.stderr.strip() or probe.returncode
        return f"cannot limit inotify watches in a user namespace here: {why}"
    return None


class SubprocessViewer(ViewerHandle):
    """``python -m client.cli viewer --listen 127.0.0.1:0`` as a child process.

    With ``read_only``, it runs in a private mount namespace where ``home`` is
    bind-mounted onto itself read-only; the wrapper refuses to start the viewer
    if a write into the mount succeeds, so the viewer really sees a read-only
    filesystem. The address is read from the ``viewer_serving`` log line (the
    viewer writes no port file). With ``watch_limit``, it runs in a user
    namespace where the kernel allows only that many inotify watches.
    """

    def __init__(
        self, home: Path, log_path: Path, *args: str, read_only: bool = False, watch_limit: int | None = None
    ) -> None:
        self.home = home
        self.log_path = log_path
        self.args = args
        self.read_only = read_only
        self.watch_limit = watch_limit
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> SubprocessViewer:
        cmd = [
            sys.executable,
            "-m",
            "baton.client.cli",
            "viewer",
            "--listen",
            "127.0.0.1:0",
            "--home",
            str(self.home),
        ]
        cmd += self.args
        if self.read_only:
            script = (
                'set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; '
                'if touch "$1/.rw-probe" 2>/dev/null; then echo "mount is writable" >&2; exit 97; fi; '
                'shift; exec "$@"'
            )
            cmd = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(self.home),
                *cmd,
            ]
        if self.watch_limit is not None:
            cmd = ["unshare", "--user", "--map-root-user", "sh", "-c", _WATCH_LIMIT_SCRIPT, "sh",
                   str(self.watch_limit), *cmd]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") == "viewer_serving":
                    self.address = event["address"]
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"viewer exited with {self.proc.returncode}:\n{self.log_path.read_text(errors='replace')}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"viewer did not start:\n{self.log_path.read_text(errors='replace')}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
