"""deploy/: the image, the Kubernetes manifests and the systemd units, checked as
far as a machine without containers or a cluster can.

- The Containerfile, statically: a pinned base, a numeric non-root user, ``baton``
  as entrypoint, the version label, and its CMD and documented command lines
  parse with ``baton``'s own argument parser.
- Every kustomization renders with ``kubectl kustomize``, and every object it
  renders passes the newest Kubernetes schema ``kubernetes-validate`` carries,
  in strict mode (unknown fields refused).
- A policy over the rendered objects: the restricted security context, probes,
  read-only viewers, one conductor, pinned images, resources, scrape
  annotations.
- The services started with the command lines and environment the dev
  overlay and the systemd units give them (test_deploy_run.py).
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import tomllib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from baton.client.cli import build_parser
from tests.harness import REPO

DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/production"]
# Built-in kinds only: the base needs no operator or CRD (no PodMonitor).
BUILT_IN = {
    ("v1", "Namespace"), ("v1", "Service"), ("v1", "PersistentVolumeClaim"), ("v1", "Secret"),
    ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"), ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}  # fmt: skip
WORKLOAD_KINDS = {"StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
# What each component's container must be told, and where its health is.
COMPONENTS = {"conductor": "StatefulSet", "viewer": "Deployment", "gateway": "Deployment"}


# ---------------------------------------------------------------- rendering


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize`` renders from deploy/k8s/KUSTOMIZATION."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: it renders deploy/k8s (kustomize is built in); install it")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / kustomization)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"kubectl kustomize {kustomization}: {done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def workloads(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def find(objects: tuple[dict[str, Any], ...], kind: str, comp: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["labels"].get(
        "app.kubernetes.io/component") == comp]  # fmt: skip
    assert len(found) == 1, f"expected one {kind} of the {comp}, found {len(found)}"
    return found[0]


def flag(args: list[str], name: str) -> str | None:
    """The value of ``name`` in an argument list (``--flag value``), or None."""
    if name in args:
        i = args.index(name)
        assert i + 1 < len(args), f"{name} has no value"
        return args[i + 1]
    return None


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_validates_against_the_newest_schema(kustomization: str) -> None:
    objects = render(kustomization)
    version = kubernetes_validate.latest_version()
    assert tuple(int(p) for p in version.split(".")) >= (1, 32), f"kubernetes-validate too old: {version}"
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    assert kinds <= BUILT_IN, f"not a built-in kind: {kinds - BUILT_IN}"
    for needed in ("StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        assert needed in {k for _, k in kinds}
    for obj in objects:
        where = f"{kustomization}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is not valid Kubernetes {version}: {exc.message}")


def test_an_unknown_field_is_refused() -> None:
    """The validation above can fail: strict mode refuses a misspelt field."""
    obj = next(o for o in render("overlays/dev") if o["kind"] == "StatefulSet")
    bad = yaml.safe_load(yaml.safe_dump(obj))
    bad["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


# ---------------------------------------------------------------- policy


def _pod_rules(pod: dict[str, Any], where: str) -> None:
    sc = pod.get("securityContext", {})
    assert sc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot"
    assert sc.get("runAsUser", 0) != 0 and sc.get("runAsGroup", 0) != 0, f"{where}: pod runs as root"
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp"
    assert pod.get("automountServiceAccountToken") is False, f"{where}: API token mounted"
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), f"{where}: {host}"


def _container_rules(c: dict[str, Any], pod: dict[str, Any], where: str) -> None:
    sc = c.get("securityContext", {})
    assert sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
    assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
    assert sc.get("privileged", False) is False, f"{where}: privileged"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities not dropped"
    assert not sc.get("capabilities", {}).get("add"), f"{where}: capabilities added"
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
    assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
    assert sc.get("runAsUser", 1) != 0, f"{where}: runs as root"
    # Writable mounts only where something is written: volumes of kinds that
    # hold data (emptyDir, claims); secrets and config are mounted read-only.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"], {"persistentVolumeClaim": {}})  # else a claim template
        if "secret" in v or "configMap" in v or "projected" in v:
            assert m.get("readOnly") is True, f"{where}: {m['mountPath']} must be read-only"

    res = c.get("resources", {})
    for want in ("cpu", "memory"):
        assert want in res.get("requests", {}), f"{where}: no {want} request"
    assert "memory" in res.get("limits", {}), f"{where}: no memory limit"

    image = c["image"]
    ref = image.split("@", 1)[0]
    name_part = ref.rsplit("/", 1)[-1]
    assert ":" in name_part or "@" in image, f"{where}: untagged image {image}"
    assert not ref.endswith(":latest"), f"{where}: image {image} uses latest"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_policy(kustomization: str) -> None:
    objects = render(kustomization)
    loads = workloads(objects)
    assert {component(w) for w in loads} == set(COMPONENTS)
    assert {w["kind"] for w in loads} <= {"StatefulSet", "Deployment"}
    for w in loads:
        comp = component(w)
        assert w["kind"] == COMPONENTS[comp], f"the {comp} must be a {COMPONENTS[comp]}"
        pod = w["spec"]["template"]["spec"]
        annotations = w["spec"]["template"]["metadata"].get("annotations", {})
        where = f"{kustomization}: {w['kind']}/{w['metadata']['name']}"
        _pod_rules(pod, where)
        assert not pod.get("initContainers"), f"{where}: init containers are not checked here"
        (c,) = pod["containers"]
        _container_rules(c, pod, f"{where} container {c['name']}")
        args = c["args"]
        assert args[0] == comp, f"{where}: runs {args[0]!r}"
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}

        # Probes: kubelet's gRPC probe on the plaintext health listener, or
        # the gateway's HTTP /healthz on its own port.
        for kind in ("livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            assert probe, f"{where}: no {kind}"
            if comp == "gateway":
                # Alive when it answers; ready when the services behind it do.
                path = "/healthz" if kind == "livenessProbe" else "/readyz"
                assert probe["httpGet"]["path"] == path, f"{where}: {kind}"
                assert ports[probe["httpGet"]["port"]] == port_of(flag(args, "--listen") or "")
            else:
                health = flag(args, "--health-listen")
                assert health, f"{where}: no --health-listen"
                assert probe["grpc"]["port"] == port_of(health) == ports["health"], f"{where}: {kind}"

        # Scrape annotations name the real metrics listener.
        metrics = flag(args, "--metrics-listen")
        assert metrics, f"{where}: no --metrics-listen"
        assert annotations.get("prometheus.io/scrape") == "true", f"{where}: scrape annotation"
        assert annotations.get("prometheus.io/port") == str(port_of(metrics)) == str(ports["metrics"])
        assert annotations.get("prometheus.io/path") == "/metrics"

        # Everything the service is told to read or write is on a volume: the
        # root filesystem is read-only.
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        for arg in args:
            if arg.startswith("/"):
                assert any(arg == m or arg.startswith(m + "/") for m in mounts), (
                    f"{where}: {arg} on no volume"
                )
        assert "/tmp" in mounts, f"{where}: no writable /tmp"

        # Non-loopback, so authenticated (the gateway passes callers' tokens on).
        assert "--insecure" not in args, f"{where}: --insecure"
        if comp != "gateway":
            assert flag(args, "--token-file"), f"{where}: no --token-file"

        if kustomization == "overlays/production":
            assert "cpu" in c["resources"]["limits"], f"{where}: production sets CPU limits"
            assert flag(args, "--tls-cert-file") and flag(args, "--tls-key-file"), f"{where}: no TLS"

    # Exactly one conductor, and it is the StatefulSet with a claim of its own.
    conductor = find(objects, "StatefulSet", "conductor")
    assert conductor["spec"]["replicas"] == 1
    assert [t["metadata"]["name"] for t in conductor["spec"]["volumeClaimTemplates"]] == ["home"]
    assert flag(conductor["spec"]["template"]["spec"]["containers"][0]["args"], "--home") == "/var/lib/baton"
    assert sum(component(w) == "conductor" for w in loads) == 1

    # Viewers see the trees read-only, at the volume and at the mount.
    viewer = find(objects, "Deployment", "viewer")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in viewer["volumes"]}
    for m in viewer["containers"][0]["volumeMounts"]:
        if m["mountPath"] != "/tmp":
            assert m.get("readOnly") is True, f"{kustomization}: viewer mounts {m['mountPath']} writable"
        if m["name"] in ("status", "checkpoints"):
            assert volumes[m["name"]]["persistentVolumeClaim"]["readOnly"] is True
    claims = {c["metadata"]["name"]: c for c in objects if c["kind"] == "PersistentVolumeClaim"}
    for name in ("baton-status", "baton-checkpoints"):
        modes = claims[name]["spec"]["accessModes"]
        if modes != ["ReadWriteMany"]:
            # ReadWriteOnce is per node: then the viewer must run on the conductor's node.
            affinity = viewer["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert any(
                t["topologyKey"] == "kubernetes.io/hostname"
                and t["labelSelector"]["matchLabels"].get("app.kubernetes.io/component") == "conductor"
                for t in affinity
            ), f"{kustomization}: {name} is {modes} but the viewer may land on another node"

    # Every workload has its Service, disruption budget and network policy.
    for comp in COMPONENTS:
        find(objects, "Service", comp)
        find(objects, "PodDisruptionBudget", comp)
        find(objects, "NetworkPolicy", comp)


def test_policy_catches_a_writable_root() -> None:
    """The rules above fail where they should (a test that cannot fail proves nothing)."""
    pod = yaml.safe_load(
        yaml.safe_dump(find(render("base"), "Deployment", "viewer")["spec"]["template"]["spec"])
    )
    c = pod["containers"][0]
    _container_rules(c, pod, "viewer")
    for breaks in (
        lambda c: c["securityContext"].__setitem__("readOnlyRootFilesystem", False),
        lambda c: c["securityContext"]["capabilities"].__setitem__("drop", ["NET_RAW"]),
        lambda c: c.__setitem__("image", "registry.example.com/baton/baton:latest"),
        lambda c: c.__setitem__("image", "registry.example.com/baton/baton"),
        lambda c: c["resources"]["limits"].pop("memory"),
    ):
        broken = yaml.safe_load(yaml.safe_dump(c))
        breaks(broken)
        with pytest.raises(AssertionError):
            _container_rules(broken, pod, "viewer")


# ---------------------------------------------------------------- the image


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Containerfile, continuation lines joined."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Containerfile").read_text().splitlines():
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text = (pending + raw).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        lines.append((word.upper(), rest.strip()))
    return lines


def final_stage() -> list[tuple[str, str]]:
    instructions = containerfile()
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


def image_env() -> dict[str, str]:
    """The ENV of the image's final stage (``ENV A=1 B=2`` form)."""
    env: dict[str, str] = {}
    for word, rest in final_stage():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _parses(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"baton cannot parse {shlex.join(argv)} (exit {exc.code})")


def test_containerfile() -> None:
    instructions = containerfile()
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    stages = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert len(stages) >= 2, "multi-stage: a builder and a runtime"
    for ref in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+(@sha256:[0-9a-f]{64})?", image), f"{image}: not pinned by tag"
        assert not image.split("@")[0].endswith(":latest"), image
        assert "slim" in image and image.startswith("python:3.1"), f"{image}: a slim Python 3.11+"

    last = final_stage()
    users = [rest for word, rest in last if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0, users[-1]
    (entrypoint,) = [rest for word, rest in last if word == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["baton"]

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    final_args = {rest.partition("=")[0]: rest.partition("=")[2] for word, rest in last if word == "ARG"}
    assert final_args.get("VERSION") == version, "ARG VERSION's default is pyproject's version"
    labels = " ".join(rest for word, rest in last if word == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert any("baton --version" in rest and "${VERSION}" in rest for word, rest in last if word == "RUN"), (
        "the build checks the installed version against the label"
    )
    env = image_env()
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env["PATH"].split(":")[0] == "/opt/baton/bin"


def test_containerfile_commands_parse() -> None:
    """The CMD and every documented `podman run` line parse with baton's own parser."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    (cmd,) = [rest for word, rest in final_stage() if word == "CMD"]
    _parses(yaml.safe_load(cmd))
    examples = [
        line.lstrip("#").strip()
        for line in (DEPLOY / "Containerfile").read_text().splitlines()
        if line.lstrip("#").strip().startswith("podman run")
    ]
    assert len(examples) >= 2, "the Containerfile documents how to run the conductor and the viewer"
    for example in examples:
        argv = shlex.split(example)
        image = next(a for a in argv if a.startswith("localhost/baton:"))
        assert image == f"localhost/baton:{version}"
        _parses(argv[argv.index(image) + 1 :])


def test_parsing_fails_on_a_wrong_flag() -> None:
    """The parse check above can fail."""
    with pytest.raises(pytest.fail.Exception):
        _parses(["conductor", "--no-such-flag"])
