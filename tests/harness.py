"""Real conductors for tests: in-process on a loopback port 0, or as a subprocess.

The in-process conductor runs its own event loop in a thread, so tests talk to
it with the ordinary sync gRPC client, over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from baton.conductor.config import ConductorConfig
from baton.conductor.server import RunningConductor, start
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2

FINAL_STATES = {job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED}
REPO = Path(__file__).resolve().parent.parent


def state(name: str) -> int:
    return job_pb2.JobState.Value("JOB_STATE_" + name.upper())


class _Client:
    """What both conductor flavours offer tests: a stub and waiting helpers."""

    address: str
    token: str | None = None

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    @property
    def stub(self) -> conductor_pb2_grpc.ConductorStub:
        if getattr(self, "_stub", None) is None:
            self._channel = self.channel()
            self._stub = conductor_pb2_grpc.ConductorStub(self._channel)
        return self._stub

    def submit(self, spec_yaml: str, **kw: Any) -> job_pb2.Job:
        return self.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml, **kw), timeout=30)

    def get(self, job_id: str) -> job_pb2.Job:
        return self.stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)

    def wait_for(
        self, job_id: str, pred: Callable[[job_pb2.Job], bool] | str, timeout: float = 30.0
    ) -> job_pb2.Job:
        """Poll GetJob until ``pred`` holds (or the job is in state ``pred``)."""
        if isinstance(pred, str):
            want = state(pred)

            def check(j: job_pb2.Job) -> bool:
                return j.state == want
        else:
            check = pred
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while not check(job):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on {job_id}; last seen:\n{job}")
            time.sleep(0.02)
            job = self.get(job_id)
        return job

    def wait_ended(self, job_id: str, timeout: float = 30.0) -> job_pb2.Job:
        return self.wait_for(job_id, lambda j: j.state in FINAL_STATES, timeout)

    def close_channel(self) -> None:
        if getattr(self, "_channel", None) is not None:
            self._channel.close()
            self._channel = None
            self._stub = None


class InProcessConductor(_Client):
    """A conductor on 127.0.0.1:0 inside this process (its own loop, own thread)."""

    def __init__(self, home: Path, **settings: Any) -> None:
        self.home = home
        self.config = ConductorConfig(listen="127.0.0.1:0", home=home, **settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.running: RunningConductor | None = None

    def start(self) -> InProcessConductor:
        self.thread.start()
        self.running = asyncio.run_coroutine_threadsafe(start(self.config), self.loop).result(30)
        self.address = self.running.address
        return self

    def stop(self) -> None:
        self.close_channel()
        if self.running is not None:
            asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(30)
            self.running = None
        # A test may stop its conductor itself; the fixture stops it again at teardown.
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.loop.close()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the conductor's loop (for white-box checks)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def status_dir(self) -> Path:
        assert self.config.status_dir is not None
        return self.config.status_dir


class SubprocessConductor(_Client):
    """``baton conductor`` as a child process, for crash and restart tests."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.args = args
        # Added to the conductor's environment (SLURM_CONF for a test cluster).
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> SubprocessConductor:
        info = self.home / "state" / "conductor.json"
        info.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")} | self.extra_env
        self.log = open(self.home.parent / f"{self.home.name}-conductor.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "baton.client.cli",
                "conductor",
                "--listen",
                "127.0.0.1:0",
                "--home",
                str(self.home),
                *self.args,
            ],
            stdout=self.log,
            stderr=self.log,
            env=env,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"conductor exited with {self.proc.returncode}")
            try:
                data = json.loads(info.read_text())
                if data["pid"] == self.proc.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("conductor did not start")
            time.sleep(0.02)
        self.address = data["address"]
        self.close_channel()
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.close_channel()

    def stop(self) -> None:
        self.close_channel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()


def kill_job_groups(status_dir: Path) -> None:
    """Leave no job behind after a test: kill every group a launch recorded."""
    state_root = status_dir.parent / "state" / "launches"
    for pids in state_root.glob("*/*/job.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pids.read_text()), signal.SIGKILL)
