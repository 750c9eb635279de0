"""The server around the conductor: health, reflection, auth, one conductor per home, crashes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from baton.v1 import conductor_pb2 as pb
from tests.checks import files_under, log_path
from tests.harness import REPO, InProcessConductor, SubprocessConductor, kill_job_groups, state

Factory = Callable[..., InProcessConductor]


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}


def run_conductor_cli(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``baton conductor ARGS``; a conductor that starts serving instead of refusing fails."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.client.cli", "conductor", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
        cwd=REPO,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"`baton conductor {' '.join(args)}` did not exit; it should refuse") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture
def subprocess_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    kill_job_groups(home / "status")


def health_check(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


@pytest.mark.parametrize("service", ["", "baton.v1.Conductor"])
def test_health_answers_serving(conductor: InProcessConductor, service: str) -> None:
    assert health_check(conductor.address, service) == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(conductor: InProcessConductor) -> None:
    with pytest.raises(grpc.RpcError) as err:
        health_check(conductor.address, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def list_services(address: str, metadata: list[tuple[str, str]] | None = None) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)
        names: list[str] = []
        for response in responses:
            names.extend(s.name for s in response.list_services_response.service)
        return names


def test_reflection_lists_the_conductor_service(conductor: InProcessConductor) -> None:
    services = list_services(conductor.address)
    assert "baton.v1.Conductor" in services
    assert "grpc.health.v1.Health" in services


def test_reflection_describes_the_conductor_api(conductor: InProcessConductor) -> None:
    with grpc.insecure_channel(conductor.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="baton.v1.Conductor")
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
    assert len(responses) == 1
    protos = responses[0].file_descriptor_response.file_descriptor_proto
    assert protos, responses[0]
    assert any(b"SubmitJob" in p for p in protos)


@pytest.fixture
def token_conductor(conductor_factory: Factory, tmp_path: Path) -> InProcessConductor:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    return conductor_factory(token_file=token_file)


def test_token_is_required_when_a_token_file_is_set(token_conductor: InProcessConductor) -> None:
    stub = token_conductor.stub
    info = pb.GetConductorInfoRequest()

    with pytest.raises(grpc.RpcError) as missing:
        stub.GetConductorInfo(info, timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as wrong:
        stub.GetConductorInfo(info, metadata=[("authorization", "Bearer not-it")], timeout=10)
    # An unknown token names nobody: UNAUTHENTICATED (PERMISSION_DENIED is for a known caller).
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with pytest.raises(grpc.RpcError) as bare:
        stub.GetConductorInfo(info, metadata=[("authorization", "s3cret-token")], timeout=10)
    assert bare.value.code() == grpc.StatusCode.UNAUTHENTICATED, "the token goes after 'Bearer '"

    ok = stub.GetConductorInfo(info, metadata=[("authorization", "Bearer s3cret-token")], timeout=10)
    assert ok.pid == os.getpid()


def test_unauthenticated_calls_change_nothing(token_conductor: InProcessConductor) -> None:
    stub = token_conductor.stub
    good = [("authorization", "Bearer s3cret-token")]
    for metadata in (None, [("authorization", "Bearer not-it")]):
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitJob(pb.SubmitJobRequest(spec_yaml="name: x\ncommand: echo hi\n"), metadata=metadata)
        assert err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        with pytest.raises(grpc.RpcError) as stream_err:
            list(stub.StreamLogs(pb.StreamLogsRequest(job_id="x"), metadata=metadata, timeout=10))
        assert stream_err.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert files_under(token_conductor.status_dir) == []
    assert list(stub.ListJobs(pb.ListJobsRequest(), metadata=good, timeout=10).jobs) == []

    job = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml="name: x\ncommand: echo hi\n"), metadata=good)
    assert job.id


def test_health_and_reflection_answer_without_a_token(token_conductor: InProcessConductor) -> None:
    assert health_check(token_conductor.address, "") == health_pb2.HealthCheckResponse.SERVING
    assert "baton.v1.Conductor" in list_services(token_conductor.address)


def test_non_loopback_listen_without_token_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = run_conductor_cli("--listen", "0.0.0.0:0", "--home", str(home))
    assert result.returncode != 0
    assert "--token-file" in result.stderr and "--insecure" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, "a refusal is a clear message, not a crash"


def test_half_a_tls_setting_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cert = tmp_path / "cert.pem"
    cert.write_text("not read: refused before\n")
    for args in (["--tls-cert-file", str(cert)], ["--tls-client-ca-file", str(cert)]):
        result = run_conductor_cli("--listen", "127.0.0.1:0", "--home", str(home), *args)
        assert result.returncode != 0
        assert "--tls-key-file" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_second_conductor_on_the_same_home_refuses_to_start(subprocess_home: Path) -> None:
    first = SubprocessConductor(subprocess_home).start()
    try:
        result = run_conductor_cli("--listen", "127.0.0.1:0", "--home", str(subprocess_home))
        assert result.returncode != 0
        assert "another conductor" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        # The first one is unharmed.
        assert first.proc is not None and first.proc.poll() is None
        info = first.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
        assert info.pid == first.proc.pid
    finally:
        first.stop()


def test_conductor_stops_on_sigterm_and_a_new_one_can_take_the_home(subprocess_home: Path) -> None:
    first = SubprocessConductor(subprocess_home).start()
    first.stop()
    assert first.proc is not None and first.proc.returncode == 0
    second = SubprocessConductor(subprocess_home).start()
    try:
        assert second.proc is not None
        info = second.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
        assert info.pid == second.proc.pid
    finally:
        second.stop()


def test_acknowledged_jobs_survive_kill_9(subprocess_home: Path) -> None:
    first = SubprocessConductor(subprocess_home, "--max-running", "2").start()
    try:
        jobs = [
            first.submit(f"name: durable{i}\ncommand: sleep 0.3; echo ran-once\n", request_id=f"key-{i}")
            for i in range(4)
        ]
        first.kill9()
    finally:
        first.stop()

    second = SubprocessConductor(subprocess_home, "--max-running", "2").start()
    try:
        listed = second.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs
        assert sorted(j.id for j in listed) == sorted(j.id for j in jobs), "every acknowledged job is there"
        for job in jobs:
            seen = second.get(job.id)
            assert (seen.name, seen.spec.command) == (job.name, job.spec.command)
        again = second.submit("name: durable0\ncommand: sleep 0.3; echo ran-once\n", request_id="key-0")
        assert again.id == jobs[0].id, "the idempotency key outlives the crash"
        for job in jobs:
            done = second.wait_ended(job.id)
            assert done.state == state("succeeded"), done
            assert done.exit_code == 0
            assert log_path(done).read_text() == "ran-once\n", "the job ran exactly once"
        assert len(second.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == len(jobs)
    finally:
        second.stop()
