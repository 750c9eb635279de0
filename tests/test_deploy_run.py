"""The services run exactly as deploy/ runs them, on loopback, and work.

The command line, arguments and environment come from the rendered dev
overlay (and the image's ENTRYPOINT and ENV) or from the systemd units, and
only these are changed, each in one stated way:

- **addresses**: every listen flag (``--listen``, ``--health-listen``,
  ``--metrics-listen``) becomes 127.0.0.1:0; a flag naming another service
  (``--conductor``, ``--viewer``) becomes that service's real address here.
- **paths**: each one in a table (``Paths``): in a pod, each volume mount's path
  becomes a directory of its own under the test's temp dir (one per claim or
  Secret, so pods sharing a claim share it), the image's venv
  ``/opt/baton/bin`` becomes this test's venv, and any other path (the image's
  root filesystem, read-only in the pod) becomes a directory under
  ``rootfs/``, which must stay empty. The system directories of PATH stay as
  they are: this machine's stand in for the image's.
- **secrets**: the token file is the test's own (one admin token), written
  where the Secret or /etc/baton would put it; the committed token file is
  checked to parse.

Each service must then listen on exactly the ports it was given: the
conductor and the viewer answer grpc.health.v1 on their plaintext health ports
(and nothing else there) and serve /metrics; the gateway answers /healthz and
/readyz. A job submitted with the CLI runs to success and the viewer shows it;
one submitted through the gateway does too, and the gateway shows both. A
SIGTERM stops each within the pod's grace or the unit's TimeoutStopSec.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from baton.common.auth import hash_token, parse_credentials
from baton.v1 import conductor_pb2, conductor_pb2_grpc, viewer_pb2, viewer_pb2_grpc
from tests.harness import kill_job_groups
from tests.test_deploy import COMPONENTS, DEPLOY, final_stage, find, flag, image_env, render

VENV_BIN = Path(sys.executable).parent
TOKEN = "deploy-test-token-0123456789"
TOKENS_YAML = yaml.safe_dump(
    {"tokens": [{"name": "deploy-test", "role": "admin", "sha256": hash_token(TOKEN)}]}
)
LISTEN_FLAGS = ("--listen", "--health-listen", "--metrics-listen")
PEER_FLAGS = {"--conductor": "conductor", "--viewer": "viewer"}
# PATH entries that are the operating system's, here as in the image.
SYSTEM_DIRS = {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
# What systemd gives a system service (systemd.exec(5), "Environment variables
# in spawned processes"): its default PATH, and for User= the user's HOME,
# USER, LOGNAME and SHELL (the baton user of deploy/README.md).
SYSTEMD_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
    "HOME": "/var/lib/baton",
    "USER": "baton",
    "LOGNAME": "baton",
    "SHELL": "/usr/sbin/nologin",
}


class Paths:
    """The stated table from the deployment's paths to this machine's."""

    def __init__(self, tmp: Path, table: dict[str, Path]) -> None:
        self.table = dict(sorted(table.items(), key=lambda kv: -len(kv[0])))  # longest prefix first
        self.rootfs = tmp / "rootfs"
        self.rootfs.mkdir(exist_ok=True)
        for path in self.table.values():
            path.mkdir(parents=True, exist_ok=True)

    def __call__(self, value: str) -> str:
        for prefix, here in self.table.items():
            if value == prefix or value.startswith(prefix + "/"):
                return str(here) + value[len(prefix) :]
        # On the image's root filesystem: a directory that nothing may write into.
        target = self.rootfs / value.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        return str(target)

    def search_path(self, value: str) -> str:
        return ":".join(p if p in SYSTEM_DIRS else self(p) for p in value.split(":"))

    def rootfs_writes(self) -> list[str]:
        return [str(p.relative_to(self.rootfs)) for p in self.rootfs.rglob("*") if not p.is_dir()]


@dataclass
class Launch:
    """One service as the deployment starts it, translated to this machine."""

    name: str
    argv: list[str]  # as written, before addresses are filled in
    env: dict[str, str]
    cwd: str
    stop_within: float
    paths: Paths
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)

    def command(self, peers: dict[str, str]) -> list[str]:
        out = list(self.argv)
        for i, arg in enumerate(out[:-1]):
            if arg in LISTEN_FLAGS:
                out[i + 1] = "127.0.0.1:0"
            elif arg in PEER_FLAGS:
                out[i + 1] = peers[PEER_FLAGS[arg]]
        return out

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports['--listen']}"


def translate_args(args: list[str], paths: Paths) -> list[str]:
    return [paths(a) if a.startswith("/") else a for a in args]


# ---------------------------------------------------------------- from the manifests


def pod_launch(objects: tuple[dict[str, Any], ...], comp: str, tmp: Path) -> Launch:
    workload = find(objects, COMPONENTS[comp], comp)
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    table = {"/opt/baton/bin": VENV_BIN}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:  # a StatefulSet's claim template
            key = f"claim-{mount['name']}-{workload['metadata']['name']}"
        elif "persistentVolumeClaim" in volume:
            key = "claim-" + volume["persistentVolumeClaim"]["claimName"]
        elif "secret" in volume:
            key = "secret-" + volume["secret"]["secretName"]
        else:
            assert "emptyDir" in volume, f"{comp}: volume {mount['name']} of an unhandled kind"
            key = f"emptydir-{comp}-{mount['name']}"
        table[mount["mountPath"]] = tmp / "volumes" / key
    paths = Paths(tmp, table)

    env = image_env()
    for var in container.get("env", []):
        assert "value" in var, f"{comp}: env {var['name']} from a source this test does not model"
        env[var["name"]] = var["value"]
    env = {k: paths.search_path(v) if k == "PATH" else paths(v) if v.startswith("/") else v
           for k, v in env.items()}  # fmt: skip

    (entrypoint,) = [yaml.safe_load(rest) for word, rest in final_stage() if word == "ENTRYPOINT"]
    (workdir,) = [rest for word, rest in final_stage() if word == "WORKDIR"]
    # A pod's `command` replaces the image's ENTRYPOINT; `baton` is found on the image's PATH.
    command = container.get("command") or ["/opt/baton/bin/" + entrypoint[0], *entrypoint[1:]]
    argv = translate_args([*command, *container["args"]], paths)
    return Launch(comp, argv, env, paths(workdir), float(pod["terminationGracePeriodSeconds"]), paths)


def install_k8s_secrets(objects: tuple[dict[str, Any], ...], launch: Launch) -> None:
    """The test's token file where the pod's Secret volume puts the tokens."""
    token_file = Path(flag(launch.argv, "--token-file") or "")
    secret_dir = token_file.parent.name.removeprefix("secret-")
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == secret_dir]
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    data |= secret.get("stringData", {})
    assert token_file.name in data, f"the Secret {secret_dir} has no key {token_file.name}"
    parse_credentials(data[token_file.name], f"Secret {secret_dir}")  # the committed one is valid
    token_file.write_text(TOKENS_YAML)


# ---------------------------------------------------------------- from the units


def unit_launch(unit: Path, tmp: Path) -> Launch:
    """ExecStart, Environment= and EnvironmentFile= of a unit, as systemd runs them."""
    service: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            service.setdefault(key.strip(), []).append(value.strip())
    paths = Paths(tmp, {
        "/opt/baton/bin": VENV_BIN, "/var/lib/baton": tmp / "home", "/etc/baton": tmp / "etc"})  # fmt: skip
    env = {k: paths.search_path(v) if k == "PATH" else paths(v) if v.startswith("/") else v
           for k, v in SYSTEMD_ENV.items()}  # fmt: skip
    for assignment in service.get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    for path in service.get("EnvironmentFile", []):
        optional = path.startswith("-")
        here = Path(paths(path.lstrip("-")))
        assert optional or here.exists(), f"{unit.name}: EnvironmentFile {path} is required"
        # The test provides none: an optional file that is absent adds nothing.
    (exec_start,) = service["ExecStart"]
    argv = translate_args(shlex.split(exec_start), paths)
    stop = float(service.get("TimeoutStopSec", ["90"])[-1])  # systemd's default is 90 s
    # A unit without WorkingDirectory= runs in / (systemd.exec(5)).
    return Launch(unit.stem, argv, env, "/", stop, paths)


# ---------------------------------------------------------------- running


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (its sockets matched in /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def health(port: int) -> int | None:
    """grpc.health.v1's status of the server on ``port``, None when no gRPC answers there."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError:
            return None
        return int(reply.status)


def baton_call(port: int, service: str) -> grpc.StatusCode:
    """The status of one of the service's own RPCs on ``port``, with the test's token."""
    metadata = [("authorization", f"Bearer {TOKEN}")]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            if service == "conductor":
                conductor_pb2_grpc.ConductorStub(channel).GetConductorInfo(
                    conductor_pb2.GetConductorInfoRequest(), timeout=5, metadata=metadata
                )
            else:
                viewer_pb2_grpc.ViewerStub(channel).GetDashboardStats(
                    viewer_pb2.GetDashboardStatsRequest(), timeout=5, metadata=metadata
                )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def http_get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.status, reply.read().decode()


def classify(launch: Launch, kind: str) -> dict[str, int]:
    """Which flag each listening port answers to, told by what the port serves."""
    assert launch.proc is not None
    wanted = [f for f in LISTEN_FLAGS if f in launch.argv]
    deadline = time.monotonic() + 60
    while True:
        if launch.proc.poll() is not None:
            pytest.fail(
                f"{launch.name} exited {launch.proc.returncode} before serving: "
                f"{shlex.join(launch.argv)}\n{tail(launch)}"
            )
        ports = listening_ports(launch.proc.pid)
        if len(ports) >= len(wanted) and all(health(p) is not None or _is_http(p) for p in ports):
            break
        assert time.monotonic() < deadline, f"{launch.name} listens on {sorted(ports)}, wants {wanted}"
        time.sleep(0.2)
    found: dict[str, int] = {}
    for port in ports:
        if health(port) is None:
            # HTTP: the gateway's own port answers /healthz; a metrics port answers metrics.
            found.setdefault("--listen" if gateway_alive(port) else "--metrics-listen", port)
        elif baton_call(port, kind) == grpc.StatusCode.OK:
            found.setdefault("--listen", port)
        else:
            # Health alone: nothing of Baton's is served there.
            assert baton_call(port, kind) == grpc.StatusCode.UNIMPLEMENTED
            found.setdefault("--health-listen", port)
    assert sorted(found) == sorted(wanted) and len(ports) == len(wanted), (launch.name, found, sorted(ports))
    return found


def tail(launch: Launch) -> str:
    """The end of what the service logged."""
    return launch.log.read_text(errors="replace")[-3000:] if launch.log and launch.log.exists() else ""


def gateway_alive(port: int) -> bool:
    try:
        status, text = http_get(port, "/healthz")
        return status == 200 and json.loads(text) == {"status": "SERVING"}
    except (OSError, http.client.HTTPException, ValueError):
        return False


def gateway_call(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> Any:
    """One JSON call through the gateway; (status, decoded body)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _is_http(port: int) -> bool:
    try:
        http_get(port, "/metrics")
    except urllib.error.HTTPError:
        return True  # an HTTP answer all the same (the gateway's own port has no /metrics)
    except (OSError, http.client.HTTPException):
        return False
    return True


@contextmanager
def running(launches: list[Launch]) -> Iterator[dict[str, Launch]]:
    """Start each in order (later ones may name earlier ones), stop all in reverse."""
    started: dict[str, Launch] = {}
    peers: dict[str, str] = {}
    try:
        for launch in launches:
            kind = launch.argv[1]  # the verb: conductor, viewer
            argv = launch.command(peers)
            # Logs to a file: a pipe nobody reads would fill and stall the service.
            launch.log = launch.paths.rootfs.parent / f"{launch.name}.log"
            with open(launch.log, "wb") as log:
                launch.proc = subprocess.Popen(argv, env=launch.env, cwd=launch.cwd, stdin=subprocess.DEVNULL,
                                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
            launch.argv = argv
            started[kind] = launch
            launch.ports = classify(launch, kind)
            peers[kind] = launch.address
        yield started
    finally:
        for launch in reversed(list(started.values())):
            if launch.proc is not None and launch.proc.poll() is None:
                launch.proc.kill()
                launch.proc.wait()


def stop(launch: Launch) -> None:
    """SIGTERM; it must exit 0 within its grace (the pod's, or the unit's TimeoutStopSec)."""
    assert launch.proc is not None
    began = time.monotonic()
    launch.proc.send_signal(signal.SIGTERM)
    try:
        code = launch.proc.wait(launch.stop_within)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{launch.name} still running {launch.stop_within:.0f} s after SIGTERM")
    assert code == 0, f"{launch.name} exited {code} on SIGTERM: {tail(launch)}"
    assert time.monotonic() - began < launch.stop_within


def exercise(services: dict[str, Launch], tmp: Path) -> None:
    """Health, metrics, and a real job submitted with the CLI, seen by the viewer."""
    for kind, launch in services.items():
        if kind in ("conductor", "viewer"):  # probes and scrapes need both
            assert {"--health-listen", "--metrics-listen"} <= set(launch.ports), (kind, launch.ports)
        if "--health-listen" in launch.ports:
            assert health(launch.ports["--health-listen"]) == health_pb2.HealthCheckResponse.SERVING, kind
        if "--metrics-listen" in launch.ports:
            status, text = http_get(launch.ports["--metrics-listen"], "/metrics")
            families = {f.name for f in text_string_to_metric_families(text)}
            expected = "baton_http_requests" if kind == "gateway" else "grpc_server_handled"
            assert status == 200 and expected in families, f"{kind}: /metrics: {sorted(families)}"

    client = tmp / "client"
    client.mkdir()
    command = 'echo "ran in $PWD with TMPDIR=${TMPDIR:-unset}"'
    (client / "job.yaml").write_text(
        yaml.safe_dump({"name": "deployed", "project": "deploy", "workdir": ".", "command": command})
    )
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "BATON_CONDUCTOR": services["conductor"].address,
        "BATON_VIEWER": services["viewer"].address,
        "BATON_TOKEN": TOKEN,
    }
    baton = str(VENV_BIN / "baton")
    done = subprocess.run([baton, "submit", "job.yaml", "--follow", "--json"], cwd=client, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    job = lines[0]["job"]
    output = b"".join(base64.b64decode(line["log"].get("data", "")) for line in lines[1:])
    conductor_env = services["conductor"].env
    assert output.decode() == f"ran in {client} with TMPDIR={conductor_env.get('TMPDIR', 'unset')}\n"
    assert lines[-1]["log"]["complete"] is True and lines[-1]["log"]["state"] == "JOB_STATE_SUCCEEDED"

    deadline = time.monotonic() + 30
    while True:
        seen = subprocess.run([baton, "get", job["id"], "--from", "viewer", "--json"],
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        if seen.returncode == 0 and json.loads(seen.stdout)["state"] == "JOB_STATE_SUCCEEDED":
            break
        assert time.monotonic() < deadline, f"the viewer never showed {job['id']} succeeded: {seen.stderr}"
        time.sleep(0.5)

    gateway = services["gateway"].ports["--listen"]
    assert json.loads(http_get(gateway, "/readyz")[1]).get("status") == "SERVING"
    assert gateway_call(gateway, "GET", f"/v1/jobs/{job['id']}", token=None)[0] == 401
    status, via_gateway = gateway_call(gateway, "GET", f"/v1/jobs/{job['id']}")
    assert status == 200 and via_gateway["state"] == "JOB_STATE_SUCCEEDED", via_gateway
    spec = yaml.safe_dump({"name": "gatewayed", "project": "deploy", "command": "echo through the gateway"})
    status, submitted = gateway_call(gateway, "POST", "/v1/jobs", {"specYaml": spec})
    assert status == 200, submitted
    deadline = time.monotonic() + 30
    while True:
        status, seen_job = gateway_call(gateway, "GET", f"/v1/viewer/jobs/{submitted['id']}")
        if status == 200 and seen_job["state"] == "JOB_STATE_SUCCEEDED":
            break
        assert time.monotonic() < deadline, f"{submitted['id']} never succeeded: {status} {seen_job}"
        time.sleep(0.5)


def test_the_dev_overlay_runs_as_rendered(tmp_path: Path) -> None:
    objects = render("overlays/dev")
    launches = [pod_launch(objects, comp, tmp_path) for comp in ("conductor", "viewer", "gateway")]
    for launch in launches:
        if flag(launch.argv, "--token-file"):
            install_k8s_secrets(objects, launch)
    try:
        with running(launches) as services:
            exercise(services, tmp_path)
            for launch in reversed(launches):
                stop(launch)
    finally:
        kill_job_groups(Path(launches[0].paths("/srv/baton/status")))
    for launch in launches:
        assert launch.paths.rootfs_writes() == [], f"{launch.name} wrote to the image's root filesystem"


def test_the_systemd_units_run_as_written(tmp_path: Path) -> None:
    units = DEPLOY / "systemd"
    names = ("conductor", "viewer", "gateway")
    launches = [unit_launch(units / f"baton-{name}.service", tmp_path) for name in names]
    assert sorted(p.name for p in units.glob("*.service")) == [
        f"baton-{name}.service" for name in sorted(names)
    ]
    token_file = Path(flag(launches[0].argv, "--token-file") or "")
    assert token_file == Path(flag(launches[1].argv, "--token-file") or ""), "one token file for both"
    token_file.write_text(TOKENS_YAML)
    try:
        with running(launches) as services:
            exercise(services, tmp_path)
            for launch in reversed(launches):
                stop(launch)
    finally:
        kill_job_groups(tmp_path / "home" / "status")
    assert launches[0].paths.rootfs_writes() == []
