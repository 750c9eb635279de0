"""A real Ray head on loopback for tests and the benchmark: ``with RayHead() as head: head.address``.

It runs ``ray start --head --block`` from the ``ray`` package (the ``ray`` extra)
in a fresh short temporary directory, with every port Ray lets us set chosen free
on 127.0.0.1, and waits until the Jobs REST API answers. ``stop()`` ends exactly
the processes of this head (never ``ray stop``, which ends every Ray process on
the machine): every process started from here carries a marker in its
environment, so even job entrypoints that Ray puts in their own session are
found and killed.

``call()`` is a tiny urllib client for the Jobs REST API, so the process that
uses a head never needs to import ``ray``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

# Set in the environment of `ray start`; Ray passes its environment on to the GCS,
# raylet, dashboard, workers and job entrypoints, so it names this head's processes.
MARKER_VAR = "BATON_TESTCLUSTER"
# How many worker ports (--min/--max-worker-port): each Ray worker process holds
# one (a job's supervisor actor is a worker), so this bounds concurrent workers.
WORKER_PORTS = 200


class RayHeadError(RuntimeError):
    pass


def call(address: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One Jobs REST API request: ``(HTTP status, parsed JSON or the text)``.

    HTTP errors are returned, not raised (their body is Ray's plain-text reason).
    """
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(address.rstrip("/") + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        status, raw, ctype = err.code, err.read(), err.headers.get("Content-Type", "")
    text = raw.decode("utf-8", "replace")
    if "json" in ctype:
        return status, json.loads(text)
    return status, text


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind :0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_range(count: int, avoid: set[int], low: int = 20000, high: int = 60000) -> int:
    """The first of ``count`` consecutive ports that are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(low, high - count)
        ports = range(base, base + count)
        if not avoid.intersection(ports) and all(_port_free(p) for p in ports):
            return base
    raise RayHeadError(f"found no {count} consecutive free ports")


def _ray_executable() -> str:
    beside = Path(sys.executable).parent / "ray"
    if beside.exists():
        return str(beside)
    found = shutil.which("ray")
    if found is None:
        raise RayHeadError("no `ray` command: install the ray extra (pip install -e '.[ray]')")
    return found


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) from /proc/<pid>/stat, or None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1])


class RayHead:
    """One Ray head node on 127.0.0.1, started and stopped by this process.

    ``RayHead(num_cpus=2, num_gpus=2)``; ``start()`` blocks until the Jobs API at
    ``address`` answers (a head takes several seconds). Attributes after start:
    ``address`` (Jobs REST API base URL), ``gcs_address``, ``ports`` (every port
    set on the command line), ``temp_dir``, ``pid`` (of ``ray start``),
    ``command``, ``env`` (what was added to the environment), ``start_seconds``.
    """

    def __init__(
        self,
        *,
        num_cpus: int = 2,
        num_gpus: int = 2,
        object_store_memory: int = 100 * 1024 * 1024,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
        ray: str | None = None,
        temp_root: str = "/tmp",
        start_timeout: float = 60.0,
    ) -> None:
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.object_store_memory = object_store_memory
        self.resources = resources
        self.extra_env = dict(env or {})
        self.ray = ray
        self.temp_root = temp_root
        self.start_timeout = start_timeout
        self.marker = f"ray-{secrets.token_hex(6)}"
        self.address = ""
        self.gcs_address = ""
        self.ports: dict[str, int] = {}
        self.temp_dir = ""
        self.pid = 0
        self.command: list[str] = []
        self.env: dict[str, str] = {}
        self.start_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _choose_ports(self) -> None:
        names = [
            "gcs",
            "dashboard",
            "node_manager",
            "object_manager",
            "metrics_export",
            "dashboard_agent_http",
            "dashboard_agent_grpc",
            "runtime_env_agent",
            "ray_client_server",
        ]
        # Hold every socket until all are chosen, so no two names get the same port.
        socks = []
        try:
            for name in names:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", 0))
                self.ports[name] = int(s.getsockname()[1])
        finally:
            for s in socks:
                s.close()
        low = free_port_range(WORKER_PORTS, set(self.ports.values()))
        self.ports["min_worker"] = low
        self.ports["max_worker"] = low + WORKER_PORTS - 1

    def start(self) -> RayHead:
        if self._proc is not None:
            raise RayHeadError("this RayHead was already started")
        t0 = time.monotonic()
        # Short: Ray puts Unix sockets under <temp>/session_<date>_<pid>/sockets/,
        # and a socket path may hold at most 107 bytes.
        self.temp_dir = tempfile.mkdtemp(prefix="rh-", dir=self.temp_root)
        self._choose_ports()
        p = self.ports
        self.command = [
            self.ray or _ray_executable(),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={p['gcs']}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={p['dashboard']}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            f"--metrics-export-port={p['metrics_export']}",
            f"--dashboard-agent-listen-port={p['dashboard_agent_http']}",
            f"--dashboard-agent-grpc-port={p['dashboard_agent_grpc']}",
            f"--runtime-env-agent-port={p['runtime_env_agent']}",
            f"--ray-client-server-port={p['ray_client_server']}",
            f"--min-worker-port={p['min_worker']}",
            f"--max-worker-port={p['max_worker']}",
            f"--num-cpus={self.num_cpus}",
            f"--num-gpus={self.num_gpus}",
            f"--object-store-memory={self.object_store_memory}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
        ]
        if self.resources:
            self.command.append(f"--resources={json.dumps(self.resources)}")
        self.env = {
            MARKER_VAR: self.marker,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray turns --node-ip-address=127.0.0.1 into the machine's address (a
            # head is meant to be reachable by other nodes) and its gRPC servers
            # then listen on every interface. With "clusters" off (as Ray does on
            # Windows and macOS) the node address stays 127.0.0.1 and every server
            # of the head listens on loopback only: checked with `ss -ltnp`.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Whatever Ray's processes (and jobs) put in a temporary directory
            # (multiprocessing's pymp-*, ...) goes away with the head.
            "TMPDIR": self.temp_dir,
            **self.extra_env,
        }
        # A RAY_ADDRESS of ours would point `ray start` and its jobs at another cluster.
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        full_env.update(self.env)
        self.gcs_address = f"127.0.0.1:{p['gcs']}"
        self.address = f"http://127.0.0.1:{p['dashboard']}"
        log = open(os.path.join(self.temp_dir, "ray-start.log"), "wb")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.temp_dir,
                start_new_session=True,
            )
        finally:
            log.close()
        self.pid = self._proc.pid
        try:
            self._wait_ready(t0 + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            if self._proc.poll() is not None:
                raise RayHeadError(
                    f"`ray start` exited with {self._proc.returncode} before the Jobs API answered:\n"
                    + self.start_log()[-4000:]
                )
            # The Jobs API answers a few seconds before it can take a job: a
            # submission waits for the head's dashboard agent. Ready means both.
            with contextlib.suppress(OSError, ValueError):
                status, _ = call(self.address, "GET", "/api/jobs/", timeout=2)
                if status == 200:
                    agent = f"http://127.0.0.1:{self.ports['dashboard_agent_http']}"
                    status, _ = call(agent, "GET", "/api/healthz", timeout=2)
                    if status == 200:
                        return
            if time.monotonic() > deadline:
                raise RayHeadError(
                    f"the Ray Jobs API at {self.address} did not answer within {self.start_timeout} s:\n"
                    + self.start_log()[-4000:]
                )
            time.sleep(0.1)

    def start_log(self) -> str:
        """What `ray start` printed."""
        try:
            return Path(self.temp_dir, "ray-start.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def logs_dir(self) -> str:
        """Ray's log directory of this head's session (job logs are job-driver-<id>.log)."""
        return os.path.join(self.temp_dir, "session_latest", "logs")

    def processes(self) -> list[int]:
        """Live (non-zombie) processes of this head: ``ray start``, its descendants,
        and every process carrying this head's marker in its environment."""
        needle = f"{MARKER_VAR}={self.marker}".encode()
        stats: dict[int, tuple[str, int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _stat(int(entry))
                if st is not None:
                    stats[int(entry)] = st
        ours: set[int] = set()
        if self.pid:
            ours.add(self.pid)
        for pid in stats:
            if pid != os.getpid() and needle in _environ(pid).split(b"\0"):
                ours.add(pid)
        # Descendants too, in case one was started with a clean environment.
        changed = True
        while changed:
            changed = False
            for pid, (_, ppid) in stats.items():
                if ppid in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        return sorted(pid for pid in ours if pid in stats and stats[pid][0] not in ("Z", "X"))

    def stop(self, grace: float = 1.0) -> None:
        """Stop this head and everything it started; safe to call twice.

        SIGTERM to `ray start`'s process group and every process of this head,
        SIGKILL to what is left after ``grace`` seconds (the GCS and raylet
        take longer than 5 s to obey SIGTERM, and nothing of a test head needs
        saving); raises RayHeadError if
        a process of this head is still alive after that.
        """
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._proc is not None:
                self._signal_all(signal.SIGTERM)
                deadline = time.monotonic() + grace
                while time.monotonic() < deadline and self._alive():
                    time.sleep(0.05)
                for _ in range(50):
                    if not self._alive():
                        break
                    self._signal_all(signal.SIGKILL)
                    time.sleep(0.1)
                left = self._alive()
                if left:
                    raise RayHeadError(f"processes of the Ray head still alive after SIGKILL: {left}")
        finally:
            if self._proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
            if self.temp_dir:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _alive(self) -> list[int]:
        if self._proc is not None:
            self._proc.poll()  # reap our own child, so it does not linger as a zombie
        return self.processes()

    def _signal_all(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def main() -> int:
    """``python -m tools.testclusters.ray``: start a head, print its facts as JSON, stop on Enter/EOF."""
    with RayHead() as head:
        print(
            json.dumps(
                {
                    "address": head.address,
                    "gcs_address": head.gcs_address,
                    "temp_dir": head.temp_dir,
                    "start_seconds": round(head.start_seconds, 2),
                    "ports": head.ports,
                    "processes": head.processes(),
                    "command": head.command,
                    "env": head.env,
                },
                indent=2,
            ),
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            sys.stdin.readline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
