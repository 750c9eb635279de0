"""Running Baton as a service: metrics, the plaintext health listener, JSON logs, graceful stop.

Every service here is a real `baton` subprocess on 127.0.0.1 port 0 that
reports its addresses through --address-file; metrics are scraped over HTTP
and read with prometheus_client's own parser.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from baton.common.auth import hash_token
from baton.conductor.transitions import table
from baton.v1 import conductor_pb2 as pb
from baton.v1 import conductor_pb2_grpc, job_pb2, viewer_pb2_grpc
from baton.v1 import viewer_pb2 as vpb
from tests.harness import FINAL_STATES, REPO, SubprocessConductor, kill_job_groups
from tests.procs import PY, proc_stat, wait_until
from tests.services import spec

S = job_pb2
SHUTTING_DOWN = "shutting down"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Service:
    """`baton VERB ...` as a subprocess, started once its --address-file is written."""

    def __init__(self, tmp: Path, verb: str, *args: str) -> None:
        self.addr_file = tmp / f"{verb}-addresses.json"
        self.log_path = tmp / f"{verb}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "baton.client.cli", verb, *args,
                 "--address-file", str(self.addr_file)],
                stdout=log, stderr=log, env=env, cwd=REPO,
            )  # fmt: skip
        self.addresses: dict[str, str] = wait_until(self._read, 30, f"baton {verb} to serve")

    def _read(self) -> dict[str, str] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
        try:
            return dict(json.loads(self.addr_file.read_text()))
        except (OSError, ValueError):
            return None

    def log_text(self) -> str:
        return self.log_path.read_text()

    def terminate(self, within: float = 15.0) -> float:
        """SIGTERM; the seconds until the process exited."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(within)
        return time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    """Services a test starts: killed afterwards if still running, and the jobs of the home too."""
    started: list[Service] = []
    yield started
    for s in started:
        s.kill()
    kill_job_groups(tmp_path / "home" / "status")


def start(services: list[Service], tmp: Path, verb: str, *args: str) -> Service:
    s = Service(tmp, verb, "--home", str(tmp / "home"), *args)
    services.append(s)
    return s


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grpc_labels(service: str, method: str, code: str = "", kind: str = "unary") -> dict[str, str]:
    labels = {"grpc_service": service, "grpc_method": method, "grpc_type": kind}
    return labels | ({"grpc_code": code} if code else {})


C = "baton.v1.Conductor"
V = "baton.v1.Viewer"
NEW, QUEUED, RUNNING, SUCCEEDED = "UNSPECIFIED", "QUEUED", "RUNNING", "SUCCEEDED"


def transitions(samples: Samples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["from"], dict(labels)["to"]): v
        for (name, labels), v in samples.items()
        if name == "baton_job_transitions_total"
    }


def wait_ended(stub: conductor_pb2_grpc.ConductorStub, job_id: str, polls: list[int]) -> job_pb2.Job:
    """GetJob until the job ends; ``polls`` counts the calls made."""

    def ended() -> job_pb2.Job | None:
        polls.append(1)
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=10)
        return job if job.state in FINAL_STATES else None

    return wait_until(ended, 30, f"job {job_id} to end")


def test_conductor_metrics_move_by_exactly_what_happened(tmp_path: Path, services: list[Service]) -> None:
    c = start(services, tmp_path, "conductor", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0")
    metrics = c.addresses["metrics"]
    before = scrape(metrics)
    # Every state and every allowed change is there from the start, at 0.
    assert set(transitions(before)) == set(table())
    assert all(v == 0 for v in transitions(before).values())
    assert value(before, "baton_jobs", state=QUEUED) == value(before, "baton_jobs", state=SUCCEEDED) == 0

    polls: list[int] = []
    with grpc.insecure_channel(c.addresses["conductor"]) as channel:
        stub = conductor_pb2_grpc.ConductorStub(channel)
        job = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec("metered", f"{PY} -c 'print(12345)'")))
        job = wait_ended(stub, job.id, polls)
        assert job.state == S.JOB_STATE_SUCCEEDED
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetJob(pb.GetJobRequest(job_id=""), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        chunks = list(stub.StreamLogs(pb.StreamLogsRequest(job_id=job.id), timeout=10))
    log_bytes = sum(len(ch.data) for ch in chunks)
    assert log_bytes == len(b"12345\n")

    after = scrape(metrics)
    moved = {k: v - transitions(before)[k] for k, v in transitions(after).items()}
    happened = {(NEW, QUEUED): 1, (QUEUED, RUNNING): 1, (RUNNING, SUCCEEDED): 1}
    assert {k: v for k, v in moved.items() if v} == happened
    for name in ("baton_job_queue_wait_seconds_count", "baton_job_run_seconds_count"):
        assert value(after, name) - value(before, name) == 1, name
    ran = (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9
    assert abs(value(after, "baton_job_run_seconds_sum") - ran) < 0.01
    waited = (job.start_time.ToNanoseconds() - job.create_time.ToNanoseconds()) / 1e9
    assert abs(value(after, "baton_job_queue_wait_seconds_sum") - waited) < 0.01
    jobs = {dict(labels)["state"]: v for (name, labels), v in after.items() if name == "baton_jobs"}
    assert jobs == {s: (1.0 if s == SUCCEEDED else 0.0) for s in jobs} and len(jobs) == 8

    handled = "grpc_server_handled_total"
    assert value(after, handled, **grpc_labels(C, "SubmitJob", "OK")) == 1
    assert value(after, handled, **grpc_labels(C, "GetJob", "INVALID_ARGUMENT")) == 1
    assert value(after, handled, **grpc_labels(C, "GetJob", "OK")) == len(polls)
    assert value(after, "grpc_server_handling_seconds_count", **grpc_labels(C, "SubmitJob", "OK")) == 1
    assert value(after, "grpc_server_started_total", **grpc_labels(C, "GetJob")) == len(polls) + 1
    stream = grpc_labels(C, "StreamLogs", "OK", "server_stream")
    assert value(after, handled, **stream) == 1
    assert value(after, "baton_open_streams", grpc_service=C, grpc_method="StreamLogs") == 0
    assert value(after, "baton_log_streamed_bytes_total") == log_bytes
    # One transaction or more per change (group commit may join some).
    assert 1 <= value(after, "baton_registry_commit_seconds_count") <= 4
    # A scrape of the same registry again moves nothing (no job ran since).
    assert transitions(scrape(metrics)) == transitions(after)


def test_baton_up_serves_each_service_its_own_metrics_and_health_and_stays_quiet(
    tmp_path: Path, services: list[Service]
) -> None:
    up = start(
        services, tmp_path, "up",
        "--listen", "127.0.0.1:0", "--viewer-listen", "127.0.0.1:0",
        "--metrics-listen", "127.0.0.1:0", "--viewer-metrics-listen", "127.0.0.1:0",
        "--health-listen", "127.0.0.1:0", "--viewer-health-listen", "127.0.0.1:0",
    )  # fmt: skip
    a = up.addresses
    assert {"conductor", "viewer", "metrics", "viewer_metrics", "health", "viewer_health"} <= set(a)
    before = scrape(a["viewer_metrics"])
    assert value(before, "baton_viewer_index_runs") == 0
    assert value(before, "baton_viewer_scan_seconds_count") >= 1  # the cold start's
    assert value(before, "baton_viewer_unwatched_directories") == 0
    assert value(before, "baton_viewer_last_scan_timestamp_seconds") > time.time() - 120
    # Two registries: neither service shows the other's series.
    assert not any(name.startswith("baton_viewer_") for name, _ in scrape(a["metrics"]))
    assert not any(name.startswith("baton_job") for name, _ in before)

    cch, vch = grpc.insecure_channel(a["conductor"]), grpc.insecure_channel(a["viewer"])
    with cch, vch:
        stub, viewer = conductor_pb2_grpc.ConductorStub(cch), viewer_pb2_grpc.ViewerStub(vch)
        for name in ("one", "two"):
            job = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec(name, "true")))
            wait_ended(stub, job.id, [])
        lists = []

        def both_listed() -> bool:
            lists.append(1)
            jobs = viewer.ListJobs(vpb.ViewerListJobsRequest(), timeout=10).jobs
            return len(jobs) == 2 and all(j.state == S.JOB_STATE_SUCCEEDED for j in jobs)

        wait_until(both_listed, 30, "the viewer to index both runs")
        with pytest.raises(grpc.RpcError) as refused:
            viewer.GetJob(vpb.ViewerGetJobRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for health_address in (a["health"], a["viewer_health"]):
            with grpc.insecure_channel(health_address) as hch:
                answer = health_pb2_grpc.HealthStub(hch).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING

        after = scrape(a["viewer_metrics"])

        # A viewer stream open at SIGTERM ends with UNAVAILABLE too.
        ticker = f"{PY} -c 'import time\nwhile True:\n    print(1, flush=True)\n    time.sleep(0.1)'"
        long = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec("long", ticker)))
        wait_until(lambda: viewer.ListJobs(vpb.ViewerListJobsRequest()).total_size == 3, 30, "the run")
        follow = viewer.StreamLogs(vpb.ViewerStreamLogsRequest(job_id=long.id, follow=True))
        wait_until(lambda: next(follow).data, 30, "the viewer to stream the log")
        assert up.terminate() < 5.0
        with pytest.raises(grpc.RpcError) as ended:
            for _ in follow:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert SHUTTING_DOWN in (ended.value.details() or "")

    assert value(after, "baton_viewer_index_runs") == 2
    lag = "baton_viewer_index_lag_seconds_count"
    assert value(after, lag) > value(before, lag)
    handled = "grpc_server_handled_total"
    assert value(after, handled, **grpc_labels(V, "ListJobs", "OK")) == len(lists)
    assert value(after, handled, **grpc_labels(V, "GetJob", "INVALID_ARGUMENT")) == 1
    # The health listeners' checks count with the service that answered them.
    assert value(after, handled, **grpc_labels("grpc.health.v1.Health", "Check", "OK")) == 1

    assert up.proc.returncode == 0
    # `baton up` at its default level keeps the terminal to its banner: no line per RPC.
    assert '"rpc"' not in up.log_text() and " rpc " not in up.log_text()


def test_sigterm_ends_fifty_open_streams_with_unavailable_and_jobs_live_on(
    tmp_path: Path, services: list[Service]
) -> None:
    c = start(
        services, tmp_path, "conductor",
        "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
    )  # fmt: skip
    ticker = f"{PY} -c 'import time\nwhile True:\n    print(\"tick\", flush=True)\n    time.sleep(0.1)'"
    channel = grpc.insecure_channel(c.addresses["conductor"])
    stub = conductor_pb2_grpc.ConductorStub(channel)
    job = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec("ticking", ticker)))
    job = wait_until(
        lambda: (j := stub.GetJob(pb.GetJobRequest(job_id=job.id))).external_id and j, 30, "the job to start"
    )
    pid = int(job.external_id)

    ends: dict[int, tuple[grpc.StatusCode, str]] = {}
    first = [threading.Event() for _ in range(50)]

    def read(i: int) -> None:
        if i % 2:
            call: Any = stub.StreamLogs(pb.StreamLogsRequest(job_id=job.id, follow=True))
        else:
            call = stub.WatchJobs(pb.WatchJobsRequest())
        try:
            for _ in call:
                first[i].set()
            ends[i] = (grpc.StatusCode.OK, "ended without a status")
        except grpc.RpcError as exc:
            ends[i] = (exc.code(), exc.details() or "")

    health_seen: list[int] = []
    health_channel = grpc.insecure_channel(c.addresses["health"])

    def watch_health() -> None:
        with contextlib.suppress(grpc.RpcError):
            for answer in health_pb2_grpc.HealthStub(health_channel).Watch(health_pb2.HealthCheckRequest()):
                health_seen.append(answer.status)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(50)]
    readers.append(threading.Thread(target=watch_health))
    for t in readers:
        t.start()
    for i, got in enumerate(first):
        assert got.wait(30), f"stream {i} sent nothing"
    wait_until(lambda: health_seen, 10, "the health watch's first answer")
    opened = scrape(c.addresses["metrics"])
    assert value(opened, "baton_open_streams", grpc_service=C, grpc_method="StreamLogs") == 25
    assert value(opened, "baton_open_streams", grpc_service=C, grpc_method="WatchJobs") == 25

    took = c.terminate()
    for t in readers:
        t.join(10)
    channel.close()
    health_channel.close()
    assert took < 5.0, f"the conductor took {took:.1f} s to exit"
    assert c.proc.returncode == 0
    assert len(ends) == 50
    unavailable = grpc.StatusCode.UNAVAILABLE
    wrong = {i: end for i, end in ends.items() if end[0] != unavailable or SHUTTING_DOWN not in end[1]}
    assert not wrong, f"{len(wrong)} streams ended otherwise, e.g. {next(iter(wrong.values()))}"
    # Health said NOT_SERVING before the listener went away.
    assert health_seen[0] == health_pb2.HealthCheckResponse.SERVING
    assert health_pb2.HealthCheckResponse.NOT_SERVING in health_seen

    # The job lives on, and the next conductor takes it back.
    st = proc_stat(pid)
    assert st is not None and st.state != "Z", "the job died with the conductor"
    again = SubprocessConductor(tmp_path / "home")
    try:
        again.start()
        back = again.get(job.id)
        assert back.state == S.JOB_STATE_RUNNING and back.external_id == str(pid)
        again.stub.CancelJob(pb.CancelJobRequest(job_id=job.id), timeout=10)
        assert again.wait_ended(job.id).state == S.JOB_STATE_CANCELLED
        wait_until(lambda: proc_stat(pid) is None or proc_stat(pid).state == "Z", 10, "the job to end")  # type: ignore[union-attr]
    finally:
        again.stop()


def test_new_calls_are_refused_while_draining(conductor: Any) -> None:
    """Between the drain and the server's stop, a new call gets UNAVAILABLE saying why; health answers."""
    conductor.call(conductor.running.listeners.tracker.drain(1.0))
    with pytest.raises(grpc.RpcError) as refused:
        conductor.stub.GetJob(pb.GetJobRequest(job_id="anything"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert SHUTTING_DOWN in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as stream_refused:
        list(conductor.stub.WatchJobs(pb.WatchJobsRequest(), timeout=10))
    assert stream_refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(conductor.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_health_listener_is_plaintext_beside_tls(tmp_path: Path, services: list[Service]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    c = start(
        services, tmp_path, "viewer", "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
    )  # fmt: skip
    with grpc.insecure_channel(c.addresses["health"]) as plain:
        health = health_pb2_grpc.HealthStub(plain)
        for service in ("", V):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # Health only: the API is not reachable through it.
        with pytest.raises(grpc.RpcError) as missing:
            viewer_pb2_grpc.ViewerStub(plain).ListJobs(vpb.ViewerListJobsRequest(), timeout=10)
        assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(c.addresses["viewer"]) as main:
        with pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(main).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    tls = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(c.addresses["viewer"], tls) as main:
        answer = health_pb2_grpc.HealthStub(main).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert c.terminate() < 5.0


def test_json_logs_have_one_line_per_rpc_and_per_transition(tmp_path: Path, services: list[Service]) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: alice, role: operator, sha256: {hash_token('tok-alice')}}}\n")
    c = start(
        services, tmp_path, "conductor",
        "--listen", "127.0.0.1:0", "--log-format", "json", "--token-file", str(tokens),
    )  # fmt: skip
    alice = [("authorization", "Bearer tok-alice")]
    with grpc.insecure_channel(c.addresses["conductor"]) as channel:
        stub = conductor_pb2_grpc.ConductorStub(channel)
        job = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec("logged", "true")), metadata=alice)
        gets = 0
        while True:
            gets += 1
            seen = stub.GetJob(pb.GetJobRequest(job_id=job.id), metadata=alice, timeout=10)
            if seen.state in FINAL_STATES:
                break
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetJob(pb.GetJobRequest(job_id=job.id), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert c.terminate() < 5.0

    lines = [json.loads(line) for line in c.log_text().splitlines() if line.strip()]  # every line parses
    rpcs = [line for line in lines if line["event"] == "rpc"]
    get_lines = [line for line in rpcs if line["method"] == "/baton.v1.Conductor/GetJob"]
    assert len(get_lines) == gets + 1
    submit_lines = [line for line in rpcs if line["method"] == "/baton.v1.Conductor/SubmitJob"]
    assert len(submit_lines) == 1
    for line in [*submit_lines, *get_lines[:-1]]:
        assert line["code"] == "OK" and line["caller"] == "alice", line
        assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 10_000
        assert line["peer"].startswith("ipv4:127.0.0.1:") and line["level"] == "info"
    assert get_lines[-1]["code"] == "UNAUTHENTICATED" and "caller" not in get_lines[-1]
    changes = [
        (line["from_state"], line["to_state"])
        for line in lines
        if line["event"] == "job_transition" and line["job_id"] == job.id
    ]
    assert changes == [(NEW, QUEUED), (QUEUED, RUNNING), (RUNNING, SUCCEEDED)]
    assert all("reason" in line for line in lines if line["event"] == "job_transition")
