"""Roles and identity (issue 15 item 6), against real servers.

Every RPC of both services (read from their descriptors) x every kind of
caller: no credentials, an unknown token, a reader, an operator acting on its
own project, an operator limited to another project, an admin. Then the
token file's reload on SIGHUP with a stream open, mutual-TLS identities, the
audit log, the old one-line token file and `baton token hash`.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import yaml
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.v1 import conductor_pb2, conductor_pb2_grpc, job_pb2, viewer_pb2, viewer_pb2_grpc
from baton.v1 import conductor_pb2 as pb
from tests.harness import REPO, InProcessConductor, SubprocessConductor, kill_job_groups
from tests.services import Stack, spec, stack

RD, OP, AD = "reader", "operator", "admin"
# The least role of each RPC, written out here on its own: a new RPC fails
# this test until someone decides who may call it.
EXPECTED_RULES = {
    "baton.v1.Conductor": {
        "SubmitJob": OP, "GetJob": RD, "ListJobs": RD, "PauseJob": OP, "ResumeJob": OP, "CancelJob": OP,
        "DeleteJob": AD, "StreamLogs": RD, "WatchJobs": RD, "GetConductorInfo": RD, "GetJobHealth": RD,
        "GetJobStep": RD, "DeleteCheckpoints": AD, "ClearJobs": AD,
    },
    "baton.v1.Viewer": {
        name: RD for name in (
            "ListJobs", "GetJob", "ListJobRuns", "ListProjects", "ListRunningJobs", "ListRecentJobs",
            "GetDashboardStats", "ListCheckpoints", "GetCheckpoint", "GetLatestCheckpoint",
            "GetCheckpointConfig", "GetCheckpointJobSpec", "GetCheckpointStats", "ReadLog", "TailLog",
            "StreamLogs", "StreamLog",
        )
    },
}  # fmt: skip
# RPCs whose target is a job of a project: an operator limited to other projects may not.
PROJECT_BOUND = {"SubmitJob", "PauseJob", "ResumeJob", "CancelJob"}
RANK = {RD: 1, OP: 2, AD: 3}
SERVICES = [
    (conductor_pb2.DESCRIPTOR.services_by_name["Conductor"], conductor_pb2_grpc.ConductorStub),
    (viewer_pb2.DESCRIPTOR.services_by_name["Viewer"], viewer_pb2_grpc.ViewerStub),
]
TOKENS = {"reader": "tok-reader", "op-ml": "tok-op-ml", "op-other": "tok-op-other", "root": "tok-admin"}
# Column -> (bearer token sent or None, role, projects the operator may act on).
CALLERS: dict[str, tuple[str | None, str | None]] = {
    "no token": (None, None),
    "unknown token": ("tok-nobody", None),
    "reader": (TOKENS["reader"], RD),
    "operator (own project)": (TOKENS["op-ml"], OP),
    "operator (other project)": (TOKENS["op-other"], OP),
    "admin": (TOKENS["root"], AD),
}


# ErrorInfo reasons (as literals: this file runs on a commit without common.auth, and fails there).
CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
CREDENTIALS_UNKNOWN = "CREDENTIALS_UNKNOWN"
ROLE_TOO_LOW = "ROLE_TOO_LOW"
PROJECT_NOT_ALLOWED = "PROJECT_NOT_ALLOWED"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_file(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"tokens": entries}, sort_keys=False))
    return path


def standard_tokens(path: Path) -> Path:
    return token_file(
        path,
        [
            {"name": "reader", "role": "reader", "sha256": hash_token(TOKENS["reader"])},
            {"name": "op-ml", "role": "operator", "projects": ["ml"], "sha256": hash_token(TOKENS["op-ml"])},
            {
                "name": "op-other",
                "role": "operator",
                "projects": ["other"],
                "sha256": hash_token(TOKENS["op-other"]),
            },
            {"name": "root", "role": "admin", "sha256": hash_token(TOKENS["root"])},
        ],
    )


def bearer(token: str | None) -> list[tuple[str, str]] | None:
    return [("authorization", f"Bearer {token}")] if token is not None else None


def reason_of(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"{err.code()} without rich details: {err.details()}"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    raise AssertionError(f"{err.code()} without an ErrorInfo")


def invoke(stub: Any, method: Any, request: Any, metadata: Any) -> tuple[grpc.StatusCode, str]:
    """(code, ErrorInfo reason or "") of one call; a stream counts as OK once it answers."""
    call = getattr(stub, method.name)
    try:
        if method.server_streaming:
            stream = call(request, metadata=metadata, timeout=10)
            try:
                next(iter(stream), None)
            finally:
                stream.cancel()
        else:
            call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK, ""
        return err.code(), reason_of(err)
    return grpc.StatusCode.OK, ""


def probe_request(method: Any, job: job_pb2.Job) -> Any:
    """A request that passes authorization harmlessly: it changes nothing whoever sends it."""
    from google.protobuf import message_factory

    request = message_factory.GetMessageClass(method.input_type)()
    fields = {f.name for f in method.input_type.fields}
    if method.name == "SubmitJob":
        request.spec_yaml = spec("probe", "true", project="ml")
        request.dry_run = True
    if method.name == "ClearJobs":
        request.all = True
        request.dry_run = True
    if "job_id" in fields:
        # DeleteJob of the real job would delete it; the others act on a job that has ended.
        request.job_id = "no-such-job" if method.name == "DeleteJob" else job.id
    for name in ("project", "group", "name"):
        if name in fields and method.name not in ("ListProjects",):
            setattr(request, name, getattr(job, name) if method.name != "DeleteCheckpoints" else "nothing")
    return request


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Stack, job_pb2.Job]]:
    tokens = standard_tokens(tmp_path / "tokens.yaml")
    with stack(tmp_path / "home", viewer_settings={"token_file": tokens}, token_file=tokens) as s:
        stub = conductor_pb2_grpc.ConductorStub(grpc.insecure_channel(s.address))
        admin = bearer(TOKENS["root"])
        job = stub.SubmitJob(
            pb.SubmitJobRequest(spec_yaml=spec("hello", "echo hi", project="ml")), metadata=admin
        )
        deadline = time.monotonic() + 30
        while (
            stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=admin).state != job_pb2.JOB_STATE_SUCCEEDED
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        viewer = viewer_pb2_grpc.ViewerStub(grpc.insecure_channel(s.viewer_address))
        while True:
            try:
                seen = viewer.GetJob(viewer_pb2.ViewerGetJobRequest(job_id=job.id), metadata=admin)
                if seen.state == job_pb2.JOB_STATE_SUCCEEDED:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "the viewer did not index the job"
            time.sleep(0.05)
        yield s, stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=admin)


def test_every_rpc_has_a_rule() -> None:
    """A new RPC fails here until its rule is written both in common/auth.py and above."""
    from baton.common import auth

    listed = {
        f"/{service.full_name}/{m.name}": RANK[EXPECTED_RULES[service.full_name][m.name]]
        for service, _ in SERVICES
        for m in service.methods
    }
    assert {method: int(role) for method, role in auth.RULES.items()} == listed


def test_role_table_every_rpc_every_caller(secured: tuple[Stack, job_pb2.Job]) -> None:
    s, job = secured
    addresses = {"baton.v1.Conductor": s.address, "baton.v1.Viewer": s.viewer_address}
    cells = 0
    table: dict[str, dict[str, str]] = {}
    for service, stub_class in SERVICES:
        stub = stub_class(grpc.insecure_channel(addresses[service.full_name]))
        for method in service.methods:
            needed = EXPECTED_RULES[service.full_name][method.name]  # KeyError: an RPC without a rule
            request = probe_request(method, job)
            # The answer once allowed, as the admin gets it: the same for every caller allowed.
            allowed_code, allowed_reason = invoke(stub, method, request, bearer(TOKENS["root"]))
            assert allowed_code not in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.UNIMPLEMENTED,
            ), (method.full_name, allowed_code)
            row = table.setdefault(f"{service.name}.{method.name}", {})
            for column, (token, role) in CALLERS.items():
                code, reason = invoke(stub, method, request, bearer(token))
                if token is None:
                    want = (grpc.StatusCode.UNAUTHENTICATED, CREDENTIALS_MISSING)
                elif role is None:
                    want = (grpc.StatusCode.UNAUTHENTICATED, CREDENTIALS_UNKNOWN)
                elif RANK[role] < RANK[needed]:
                    want = (grpc.StatusCode.PERMISSION_DENIED, ROLE_TOO_LOW)
                elif column == "operator (other project)" and method.name in PROJECT_BOUND:
                    want = (grpc.StatusCode.PERMISSION_DENIED, PROJECT_NOT_ALLOWED)
                else:
                    want = (allowed_code, allowed_reason)
                assert (code, reason) == want, (method.full_name, column)
                row[column] = "ok" if want == (allowed_code, allowed_reason) else reason
                cells += 1
    assert cells == 6 * sum(len(s.methods) for s, _ in SERVICES)
    # Printed for the record (pytest -s): the table the README shows.
    print("\n".join(f"{rpc:32} " + " | ".join(f"{v:20}" for v in row.values()) for rpc, row in table.items()))


def test_operator_may_act_only_on_its_projects_and_submissions_name_it(
    secured: tuple[Stack, job_pb2.Job],
) -> None:
    s, _ = secured
    stub = conductor_pb2_grpc.ConductorStub(grpc.insecure_channel(s.address))
    with structlog.testing.capture_logs() as logs:
        job = stub.SubmitJob(
            pb.SubmitJobRequest(spec_yaml=spec("long", "sleep 60", project="ml")),
            metadata=bearer(TOKENS["op-ml"]),
        )
        assert job.submitted_by == "op-ml"
        with pytest.raises(grpc.RpcError) as other:
            stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=bearer(TOKENS["op-other"]))
        assert (other.value.code(), reason_of(other.value)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            PROJECT_NOT_ALLOWED,
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.SubmitJob(
                pb.SubmitJobRequest(spec_yaml=spec("x", "true", project="ml")),
                metadata=bearer(TOKENS["op-other"]),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as missing:
            stub.CancelJob(pb.CancelJobRequest(job_id="no-such-job"), metadata=bearer(TOKENS["op-other"]))
        # A missing job is NOT_FOUND for everybody: any reader learns that from GetJob.
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError):
            stub.CancelJob(pb.CancelJobRequest(job_id=job.id))
        cancelled = stub.CancelJob(pb.CancelJobRequest(job_id=job.id), metadata=bearer(TOKENS["op-ml"]))
        assert cancelled.state in (job_pb2.JOB_STATE_CANCELLING, job_pb2.JOB_STATE_CANCELLED)
        stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=bearer(TOKENS["op-ml"]))
    audit = [(e["who"], e["what"], e["job"], e["outcome"]) for e in logs if e["event"] == "audit"]
    assert audit == [
        ("op-ml", "SubmitJob", job.id, "OK"),
        ("op-other", "CancelJob", job.id, "PERMISSION_DENIED"),
        ("op-other", "SubmitJob", "", "PERMISSION_DENIED"),
        ("op-other", "CancelJob", "no-such-job", "NOT_FOUND"),
        ("anonymous", "CancelJob", job.id, "UNAUTHENTICATED"),
        ("op-ml", "CancelJob", job.id, "OK"),
    ], "one audit line per mutating call, none for reads"
    assert (
        stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=bearer(TOKENS["reader"])).submitted_by
        == "op-ml"
    )


def test_a_one_line_token_file_is_one_admin_token_with_a_warning(
    conductor_factory: Any, tmp_path: Path
) -> None:
    legacy = tmp_path / "token"
    legacy.write_text("old-style-token\n")
    with structlog.testing.capture_logs() as logs:
        c: InProcessConductor = conductor_factory(token_file=legacy)
    assert any(e["event"] == "token_file_legacy" and e["log_level"] == "warning" for e in logs)
    with pytest.raises(grpc.RpcError) as err:
        c.stub.DeleteJob(pb.DeleteJobRequest(job_id="no-such-job"), metadata=bearer("old-style-token"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND, "the old token has every right"


@pytest.mark.parametrize(
    "text",
    [
        "tokens:\n  - name: a\n    role: root\n    sha256: " + "0" * 64 + "\n",
        "tokens:\n  - name: a\n    role: reader\n    sha256: not-a-hash\n",
        "tokens:\n  - name: a\n    role: reader\n    projects: [ml]\n    sha256: " + "0" * 64 + "\n",
        "tokens:\n  - name: a\n    role: reader\n",
        "tokens: [1, 2]\n",
    ],
)
def test_a_bad_token_file_stops_the_service_with_a_clear_message(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", "conductor", "--listen", "127.0.0.1:0",
         "--home", str(tmp_path / "home"), "--token-file", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode != 0
    assert "tokens[" in result.stderr or "tokens" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_token_hash_prints_the_line_for_the_token_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", "token", "hash"],
        input="s3cret\n", capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sha256: {hash_token('s3cret')}\n"
    assert "s3cret" not in result.stdout


def test_sighup_reloads_the_token_file_and_keeps_open_streams(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    token_file(
        tokens,
        [
            {"name": "watcher", "role": "reader", "sha256": hash_token("tok-watch")},
            {"name": "old-admin", "role": "admin", "sha256": hash_token("tok-old")},
        ],
    )
    home = tmp_path / "home"
    c = SubprocessConductor(home, "--token-file", str(tokens)).start()
    try:
        stub = c.stub
        seen: list[job_pb2.JobEvent] = []
        ended: list[BaseException] = []
        stream = stub.WatchJobs(pb.WatchJobsRequest(), metadata=bearer("tok-watch"), timeout=60)

        def follow() -> None:
            try:
                for response in stream:
                    seen.extend(response.events)
            except grpc.RpcError as err:
                ended.append(err)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        assert stub.GetConductorInfo(pb.GetConductorInfoRequest(), metadata=bearer("tok-old")).pid
        token_file(
            tokens,
            [
                {"name": "watcher", "role": "reader", "sha256": hash_token("tok-watch")},
                {"name": "new-op", "role": "operator", "sha256": hash_token("tok-new")},
            ],
        )
        assert c.proc is not None
        c.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                stub.GetConductorInfo(pb.GetConductorInfoRequest(), metadata=bearer("tok-new"))
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED
                assert time.monotonic() < deadline, "SIGHUP did not reload the token file"
                time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as gone:
            stub.GetConductorInfo(pb.GetConductorInfoRequest(), metadata=bearer("tok-old"))
        assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED, "a removed token is refused"
        job = stub.SubmitJob(
            pb.SubmitJobRequest(spec_yaml=spec("after-hup", "true")), metadata=bearer("tok-new")
        )
        assert job.submitted_by == "new-op"
        while not any(e.job.id == job.id for e in seen):
            assert not ended, f"the watch opened before SIGHUP ended: {ended}"
            assert time.monotonic() < deadline, "the stream opened before SIGHUP saw nothing after it"
            time.sleep(0.05)
        assert c.proc.poll() is None
        stream.cancel()
        # A broken file on reload keeps the previous one, and the conductor.
        tokens.write_text("tokens: {broken\n")
        c.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert stub.GetConductorInfo(pb.GetConductorInfoRequest(), metadata=bearer("tok-new")).pid
    finally:
        c.stop()
        kill_job_groups(home / "status")
    log = (tmp_path / "home-conductor.log").read_text()
    assert "token_file_reloaded" in log and "token_file_reload_failed" in log
    assert "tok-new" not in log and "tok-old" not in log, "the log never shows a token"


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(tmp_path: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A certificate with subject CN=``name`` signed by ``ca`` (cert, key), as tests/test_client.py does."""
    cert, key, csr, ext = (tmp_path / f"{name}.{x}" for x in ("pem", "key", "csr", "ext"))
    ext.write_text(extensions)
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr)
    )
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "1", "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mutual_tls_identities_map_to_roles(conductor_factory: Any, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem", tmp_path / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=baton test CA",
             "-keyout", str(ca[1]), "-out", str(ca[0]))  # fmt: skip
    server = _issue(tmp_path, "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    alice = _issue(tmp_path, "alice", ca, "extendedKeyUsage=clientAuth\n")
    bob = _issue(tmp_path, "bob", ca, "subjectAltName=DNS:bob.example.org\nextendedKeyUsage=clientAuth\n")
    mallory = _issue(tmp_path, "mallory", ca, "extendedKeyUsage=clientAuth\n")
    tokens = token_file(
        tmp_path / "tokens.yaml",
        [
            {"name": "alice", "role": "operator", "projects": ["ml"], "subject": "CN=alice"},
            {"name": "bob", "role": "reader", "san": "bob.example.org"},
        ],
    )
    c: InProcessConductor = conductor_factory(
        token_file=tokens, tls_cert_file=server[0], tls_key_file=server[1], tls_client_ca_file=ca[0]
    )

    def stub_for(cert: tuple[Path, Path]) -> conductor_pb2_grpc.ConductorStub:
        credentials = grpc.ssl_channel_credentials(
            ca[0].read_bytes(), cert[1].read_bytes(), cert[0].read_bytes()
        )
        return conductor_pb2_grpc.ConductorStub(
            grpc.secure_channel(f"localhost:{c.running.port}", credentials)
        )  # type: ignore[union-attr]

    submit = pb.SubmitJobRequest(spec_yaml=spec("by-cert", "true", project="ml"))
    job = stub_for(alice).SubmitJob(submit, timeout=20)
    assert job.submitted_by == "alice"
    with pytest.raises(grpc.RpcError) as other:
        stub_for(alice).SubmitJob(
            pb.SubmitJobRequest(spec_yaml=spec("x", "true", project="other")), timeout=20
        )
    assert (other.value.code(), reason_of(other.value)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        PROJECT_NOT_ALLOWED,
    )
    assert stub_for(bob).GetJob(pb.GetJobRequest(job_id=job.id), timeout=20).submitted_by == "alice"
    with pytest.raises(grpc.RpcError) as reader:
        stub_for(bob).CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=20)
    assert (reader.value.code(), reason_of(reader.value)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        ROLE_TOO_LOW,
    )
    with pytest.raises(grpc.RpcError) as unknown:
        stub_for(mallory).GetJob(pb.GetJobRequest(job_id=job.id), timeout=20)
    # Signed by the CA but given no role: nobody known.
    assert (unknown.value.code(), reason_of(unknown.value)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        CREDENTIALS_UNKNOWN,
    )


def test_a_client_ca_without_a_token_file_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not read: refused before\n")
    result = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", "conductor", "--listen", "127.0.0.1:0",
         "--home", str(tmp_path / "home"), "--tls-cert-file", str(cert), "--tls-key-file", str(cert),
         "--tls-client-ca-file", str(cert)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode != 0 and "--token-file" in result.stderr, result.stderr
