"""The Python client against real servers: streams that survive a restarted
conductor and cut connections with nothing lost or repeated, retries that
happen only where they are safe, deadlines, errors with their details, TLS
and tokens, and the asyncio flavour."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.client import (
    AsyncConductorClient,
    AsyncViewerClient,
    ConductorClient,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    TlsSettings,
    Unauthenticated,
    Unavailable,
    ViewerClient,
)
from baton.v1 import conductor_pb2 as cpb
from baton.v1 import job_pb2
from tests.harness import InProcessConductor, kill_job_groups
from tests.services import Stack, lines_job, restart, spec, stack
from tests.tcpproxy import TcpProxy

FAST = RetryPolicy(attempts=3, initial_backoff=0.05, max_backoff=0.2, reconnect_for=30)


class CountCalls(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Counts the attempts of each unary method that leave the client."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method
        self.calls[method.rsplit("/", 1)[-1]] += 1
        return await continuation(details, request)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Stack]:
    with stack(tmp_path / "home") as s:
        yield s


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def log_bytes(job: job_pb2.Job) -> bytes:
    return (Path(job.run_dir) / "output.log").read_bytes()


# ------------------------------------------------------------ streams survive


def test_streams_survive_a_conductor_restart(tmp_path: Path) -> None:
    """Stop the conductor mid-stream and start it again on its port: the follow
    and the watch go on from where they were, every byte and event once."""
    home = tmp_path / "home"
    conductor = InProcessConductor(home).start()
    try:
        with ConductorClient(conductor.address, retry=FAST) as client:
            watch = client.watch_jobs()
            job = client.submit_job(spec("talker", lines_job(120, 0.025)))
            follow = client.stream_logs(job.id, follow=True)
            received = bytearray()
            events: list[job_pb2.JobEvent] = []
            watcher = threading.Thread(target=lambda: events.extend(_until_ended(watch, job.id)))
            watcher.start()
            restarted = False
            for chunk in follow:
                received += chunk.data
                if len(received) > 600 and not restarted:
                    # The job keeps running and writing while no conductor serves.
                    conductor = restart(conductor)
                    restarted = True
            watcher.join(30)
            assert follow.result is not None and follow.result.state == job_pb2.JOB_STATE_SUCCEEDED
            final = client.get_job(job.id)
            assert sha(bytes(received)) == sha(log_bytes(final))
            assert follow.reconnects >= 1 and watch.reconnects >= 1
            revisions = [e.revision for e in events if e.type != job_pb2.JOB_EVENT_TYPE_SNAPSHOT]
            assert revisions == list(range(revisions[0], final.revision + 1)), revisions
            assert events[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED
            watch.close()
    finally:
        conductor.stop()
        kill_job_groups(home / "status")


def _until_ended(watch: Any, job_id: str) -> Iterator[job_pb2.JobEvent]:
    for event in watch:
        yield event
        if event.job.id == job_id and event.job.state == job_pb2.JOB_STATE_SUCCEEDED:
            return


def test_log_follow_through_cut_connections_is_exact(services: Stack) -> None:
    """A proxy between client and conductor drops every connection, several times, mid-stream."""
    proxy = TcpProxy(services.address)
    try:
        with ConductorClient(proxy.address, retry=FAST) as client:
            job = client.submit_job(spec("bulk", lines_job(3000, 0.0005, width=900)))
            received = bytearray()
            follow = client.stream_logs(job.id, follow=True)
            next_cut = 100_000
            for chunk in follow:
                received += chunk.data
                if len(received) >= next_cut and proxy.cuts < 4:
                    proxy.cut()
                    next_cut += 250_000
            assert follow.result is not None
            assert sha(bytes(received)) == sha(log_bytes(client.get_job(job.id)))
            assert follow.reconnects >= 1
    finally:
        proxy.close()


def test_watch_through_cut_connections_sees_each_revision_once(services: Stack) -> None:
    proxy = TcpProxy(services.address)
    try:
        with ConductorClient(proxy.address, retry=FAST) as client:
            watch = client.watch_jobs()
            submitted = 0
            for i in range(3):
                client.submit_job(spec(f"quick{i}", "true"))
                submitted += 1
            events: list[job_pb2.JobEvent] = []
            ended: set[str] = set()
            for event in watch:
                events.append(event)
                if len(events) % 3 == 0 and submitted < 8:
                    proxy.cut()
                    client.submit_job(spec("more", "true"))
                    submitted += 1
                if event.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                    ended.add(event.job.id)
                if len(ended) == 8:
                    break
            watch.close()
            revisions = [e.revision for e in events if e.type != job_pb2.JOB_EVENT_TYPE_SNAPSHOT]
            assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))
            assert watch.reconnects >= 1
    finally:
        proxy.close()


def test_watch_snapshot_is_whole_and_marks_its_end(services: Stack) -> None:
    with ConductorClient(services.address) as client:
        jobs = [client.submit_job(spec(f"s{i}", "true")) for i in range(3)]
        for job in jobs:
            client.wait_for_job(job.id, timeout=30)
        watch = client.watch_jobs()
        snapshot = [next(watch) for _ in range(3)]
        assert {e.job.id for e in snapshot} == {j.id for j in jobs}
        assert all(e.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT for e in snapshot)
        assert watch.snapshot_done and watch.revision == client.get_conductor_info().revision
        watch.close()


class WatchRequests(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Records the since_revision of each WatchJobs call for one name the client opens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.since: list[int] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        if isinstance(request, cpb.WatchJobsRequest) and request.name == self.name:
            self.since.append(request.since_revision)
        return await continuation(details, request)


def test_watch_resumes_from_the_revision_of_a_heartbeat_or_snapshot_end(tmp_path: Path) -> None:
    """A filtered watch sees no change while others move the revision on: its
    SNAPSHOT_END and HEARTBEAT events (given with ``progress``, told apart by
    type) carry it forward, and a reconnect resumes from there, not from 0 or
    from an older revision."""
    with stack(tmp_path / "home", feed_heartbeat=0.2) as services:
        proxy = TcpProxy(services.address)
        requests = WatchRequests("quiet")  # wait_for_job watches too
        try:
            with ConductorClient(proxy.address, retry=FAST, interceptors=[requests]) as client:
                before = client.submit_job(spec("other", "true"))
                client.wait_for_job(before.id, timeout=30)
                watch = client.watch_jobs(name="quiet", progress=True)
                end = next(watch)
                assert end.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END and not end.HasField("job")
                assert end.revision == watch.revision == client.get_conductor_info().revision
                other = client.submit_job(spec("other", "true"))
                client.wait_for_job(other.id, timeout=30)
                moved = client.get_conductor_info().revision
                assert moved > end.revision
                for event in watch:
                    assert event.type == job_pb2.JOB_EVENT_TYPE_HEARTBEAT and not event.HasField("job")
                    if event.revision == moved:
                        break
                assert watch.revision == moved
                proxy.cut()
                quiet = client.submit_job(spec("quiet", "true"))
                seen = []
                for event in watch:
                    if event.type != job_pb2.JOB_EVENT_TYPE_HEARTBEAT:
                        seen.append(event)
                        if event.job.state == job_pb2.JOB_STATE_SUCCEEDED:
                            break
                watch.close()
            assert watch.reconnects >= 1
            assert requests.since[0] == 0 and requests.since[1:] and set(requests.since[1:]) == {moved}
            assert {e.type for e in seen} == {job_pb2.JOB_EVENT_TYPE_UPDATED}
            assert {e.job.id for e in seen} == {quiet.id}
            assert seen[0].revision == moved + 1
        finally:
            proxy.close()


def test_tail_then_follow_through_a_cut(services: Stack) -> None:
    """--tail N, then a reconnect: it goes on from the byte it reached, not from a new tail."""
    proxy = TcpProxy(services.address)
    try:
        with ConductorClient(proxy.address, retry=FAST) as client:
            job = client.submit_job(spec("tailed", lines_job(80, 0.02)))
            client.wait_for_job(job.id, states={job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_SUCCEEDED})
            time.sleep(0.3)
            follow = client.stream_logs(job.id, tail_lines=2, follow=True)
            received = bytearray()
            start = None
            for chunk in follow:
                start = chunk.offset if start is None else start
                received += chunk.data
                if proxy.cuts == 0 and received:
                    proxy.cut()
            assert start is not None and start > 0
            assert bytes(received) == log_bytes(client.get_job(job.id))[start:]
    finally:
        proxy.close()


# ------------------------------------------------------------ retries, deadlines


def test_idempotent_calls_are_retried_until_the_conductor_is_back(tmp_path: Path) -> None:
    home = tmp_path / "home"
    conductor = InProcessConductor(home).start()
    address = conductor.address
    conductor.stop()
    counter = CountCalls()
    patient = RetryPolicy(attempts=100, initial_backoff=0.05, max_backoff=0.2)
    result: list[Any] = []
    with ConductorClient(address, retry=patient, interceptors=[counter], timeout=30) as client:
        caller = threading.Thread(target=lambda: result.append(client.get_conductor_info()))
        caller.start()
        time.sleep(0.6)
        again = InProcessConductor(home)
        again.config = again.config.model_copy(update={"listen": address})
        again.start()
        try:
            caller.join(30)
            assert result and result[0].pid > 0
            assert counter.calls["GetConductorInfo"] > 1
        finally:
            again.stop()


def test_only_idempotent_calls_are_retried(tmp_path: Path) -> None:
    conductor = InProcessConductor(tmp_path / "home").start()
    address = conductor.address
    conductor.stop()
    counter = CountCalls()
    with ConductorClient(address, retry=FAST, interceptors=[counter]) as client:
        with pytest.raises(Unavailable) as err:
            client.get_job("some-job")
        assert counter.calls["GetJob"] == FAST.attempts
        assert address in str(err.value) and "baton conductor" in str(err.value)
        assert "baton up" in str(err.value)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and err.value.address == address
        for call in (
            lambda: client.pause_job("some-job"),
            lambda: client.resume_job("some-job"),
            lambda: client.cancel_job("some-job"),
            lambda: client.delete_job("some-job"),
        ):
            with pytest.raises(Unavailable):
                call()
        assert [counter.calls[m] for m in ("PauseJob", "ResumeJob", "CancelJob", "DeleteJob")] == [1] * 4
        with pytest.raises(Unavailable):
            client.submit_job(spec("x", "true"))
        assert counter.calls["SubmitJob"] == FAST.attempts  # safe: it always carries a request_id


def test_submit_is_idempotent_by_request_id(services: Stack) -> None:
    with ConductorClient(services.address) as client:
        first = client.submit_job(spec("once", "true"))
        assert first.request_id  # generated when the caller gives none
        again = client.submit_job(spec("once", "true"), request_id=first.request_id)
        assert again.id == first.id
        assert len(list(client.iter_jobs(name="once"))) == 1
        dry = client.submit_job(spec("once", "true"), dry_run=True)
        assert dry.name == "once" and len(list(client.iter_jobs(name="once"))) == 1


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A listener that accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for s in held:
        s.close()


def test_every_call_has_a_deadline(black_hole: str) -> None:
    counter = CountCalls()
    with ConductorClient(black_hole, timeout=0.5, interceptors=[counter]) as client:
        with pytest.raises(DeadlineExceeded) as err:
            client.get_job("any")
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert counter.calls["GetJob"] == 1  # the deadline covers every attempt
        with pytest.raises(DeadlineExceeded):
            client.list_jobs(timeout=0.2)


def test_a_silent_stream_is_reopened_then_given_up(black_hole: str) -> None:
    """No message at all (not even a heartbeat) for idle_timeout: the stream is reopened;
    unreachable for reconnect_for: Unavailable, naming the address."""
    policy = RetryPolicy(initial_backoff=0.05, max_backoff=0.1, reconnect_for=1.0)
    with ConductorClient(black_hole, idle_timeout=0.3, retry=policy) as client:
        watch = client.watch_jobs()
        with pytest.raises(Unavailable) as err:
            next(watch)
        assert watch.reconnects >= 2
        assert black_hole in str(err.value)


# ------------------------------------------------------------ errors, auth, TLS


def test_errors_keep_code_reason_and_field_violations(services: Stack) -> None:
    with ConductorClient(services.address) as client:
        with pytest.raises(InvalidArgument) as bad:
            client.submit_job("name: ../x\ncommand: echo\n")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in bad.value.field_violations] == ["spec.name"]
        with pytest.raises(NotFound) as missing:
            client.get_job("no-such-job")
        assert missing.value.reason == "JOB_NOT_FOUND" and missing.value.metadata["job_id"] == "no-such-job"
        job = client.submit_job(spec("done", "true"))
        client.wait_for_job(job.id, timeout=30)
        with pytest.raises(FailedPrecondition) as state:
            client.pause_job(job.id)
        assert state.value.reason == "JOB_NOT_RUNNING"
        with pytest.raises(NotFound):
            list(client.stream_logs("no-such-job", follow=True))
    with ViewerClient(services.viewer_address) as viewer, pytest.raises(NotFound):
        viewer.get_job("no-such-job")


def test_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    with stack(tmp_path / "home", token_file=token_file) as s:
        with ConductorClient(s.address, token="s3cret") as client:
            assert client.get_conductor_info().pid > 0
        with ConductorClient(s.address, token="") as client, pytest.raises(Unauthenticated):
            client.get_conductor_info()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_a_private_root(services: Stack, tmp_path: Path) -> None:
    """TLS to a proxy that terminates it in front of the conductor, trusting a private root."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    proxy = TcpProxy(services.address, tls=context)
    try:
        with ConductorClient(proxy.address, tls=TlsSettings.from_files(ca_file=cert)) as client:
            job = client.submit_job(spec("secure", "echo over tls"))
            chunks = list(client.stream_logs(job.id, follow=True))
            assert b"".join(c.data for c in chunks) == b"over tls\n"
        with ConductorClient(proxy.address, retry=FAST, timeout=2) as plain, pytest.raises(Unavailable):
            plain.get_conductor_info()
    finally:
        proxy.close()


def _issue(tmp_path: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    """A certificate for ``name`` signed by ``ca`` (cert, key), with X.509 ``extensions``."""
    cert, key, csr, ext = (tmp_path / f"{name}.{x}" for x in ("pem", "key", "csr", "ext"))
    ext.write_text(extensions)
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key),
         "-out", str(csr)],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_services_serve_mutual_tls(tmp_path: Path) -> None:
    """Both services serve TLS themselves and, given a client CA, let in only clients it signed."""
    ca = tmp_path / "ca.pem", tmp_path / "ca.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=baton test CA", "-keyout", str(ca[1]), "-out", str(ca[0])],
        check=True, capture_output=True,
    )  # fmt: skip
    server = _issue(
        tmp_path, "localhost", ca, "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
    )
    client = _issue(tmp_path, "alice", ca, "extendedKeyUsage=clientAuth\n")
    # A signed certificate gets in only as the identity the token file gives it.
    roles = tmp_path / "tokens.yaml"
    roles.write_text("tokens:\n  - name: alice\n    role: operator\n    subject: CN=alice\n")
    tls = {
        "tls_cert_file": server[0],
        "tls_key_file": server[1],
        "tls_client_ca_file": ca[0],
        "token_file": roles,
    }
    trusted = TlsSettings.from_files(ca_file=ca[0], cert_file=client[0], key_file=client[1])
    with stack(tmp_path / "home", viewer_settings=tls, **tls) as s:
        with (
            ConductorClient(s.address, tls=trusted) as conductor,
            ViewerClient(s.viewer_address, tls=trusted) as viewer,
        ):
            job = conductor.submit_job(spec("mtls", "echo over mutual tls"))
            chunks = list(conductor.stream_logs(job.id, follow=True))
            assert b"".join(c.data for c in chunks) == b"over mutual tls\n"
            deadline = time.monotonic() + 10
            while [j.id for j in viewer.list_jobs(name="mtls").jobs] != [job.id]:
                assert time.monotonic() < deadline, "the viewer did not list the job"
                time.sleep(0.02)
            assert viewer.get_job(job.id).state == job_pb2.JOB_STATE_SUCCEEDED
        # The same settings from the environment, as for the command line.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("BATON_CA_FILE", str(ca[0]))
            env.setenv("BATON_CERT_FILE", str(client[0]))
            env.setenv("BATON_KEY_FILE", str(client[1]))
            with ConductorClient(s.address) as from_env:
                assert from_env.get_job(job.id).state == job_pb2.JOB_STATE_SUCCEEDED
        no_certificate = TlsSettings.from_files(ca_file=ca[0])
        asks: list[tuple[Any, str, str]] = [
            (ConductorClient, s.address, "get_conductor_info"),
            (ViewerClient, s.viewer_address, "get_dashboard_stats"),
        ]
        for client_class, address, ask in asks:
            # Without a client certificate, and in plaintext: no handshake, so no call.
            for settings in (no_certificate, None):
                c = client_class(address, tls=settings, retry=FAST, timeout=2)
                with c, pytest.raises(Unavailable):
                    getattr(c, ask)()


# ------------------------------------------------------------ the asyncio flavour, the viewer


def test_async_clients(services: Stack) -> None:
    async def main() -> None:
        async with (
            AsyncConductorClient(services.address) as conductor,
            AsyncViewerClient(services.viewer_address) as viewer,
        ):
            job = await conductor.submit_job(spec("async", "echo one; echo two"))
            data = b""
            async with conductor.stream_logs(job.id, follow=True) as stream:
                async for chunk in stream:
                    data += chunk.data
            assert data == b"one\ntwo\n" and stream.result is not None
            assert stream.result.state == job_pb2.JOB_STATE_SUCCEEDED and stream.result.exit_code == 0
            ended = await conductor.wait_for_job(job.id, timeout=30)
            assert ended.state == job_pb2.JOB_STATE_SUCCEEDED
            seen = None
            for _ in range(100):  # the viewer notices the change through inotify
                try:
                    seen = await viewer.get_job(job.id)
                    if seen.state == job_pb2.JOB_STATE_SUCCEEDED:
                        break
                except NotFound:
                    pass
                await asyncio.sleep(0.05)
            assert seen is not None and seen.state == job_pb2.JOB_STATE_SUCCEEDED
            listed = [j.id async for j in viewer.iter_jobs(project="default", page_size=1)]
            assert job.id in listed
            tail = await viewer.tail_log(job.id, tail_lines=1)
            assert tail.data == b"two\n"
            chunks = [c async for c in viewer.stream_logs(job.id)]
            assert b"".join(c.data for c in chunks) == b"one\ntwo\n" and chunks[-1].complete

    asyncio.run(main())


def test_viewer_client(services: Stack) -> None:
    with ConductorClient(services.address) as conductor, ViewerClient(services.viewer_address) as viewer:
        job = conductor.submit_job(spec("seen", "echo hi", project="proj"))
        conductor.wait_for_job(job.id, timeout=30)
        deadline = time.monotonic() + 10
        while viewer.list_jobs(project="proj").total_size < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [j.id for j in viewer.list_jobs(project="proj").jobs] == [job.id]
        assert viewer.get_job(project="proj", group="default", name="seen", run_id=job.run_id).id == job.id
        assert [p.project for p in viewer.list_projects().projects] == ["proj"]
        assert viewer.read_log(job.id).data == b"hi\n"
        assert viewer.get_dashboard_stats().total_runs == 1
        assert viewer.get_checkpoint_stats(project="proj").checkpoint_count == 0
        with pytest.raises(NotFound):
            viewer.get_latest_checkpoint("proj", "default", "seen")


def test_health_steps_and_bulk_deletes(services: Stack) -> None:
    with ConductorClient(services.address) as client:
        job = client.submit_job(spec("steady", "echo begun; exec sleep 30"))
        client.wait_for_job(job.id, states={job_pb2.JOB_STATE_RUNNING}, timeout=30)
        deadline = time.monotonic() + 10
        health = client.get_job_health(job.id)
        while not health.has_process and time.monotonic() < deadline:  # RUNNING comes just before the launch
            time.sleep(0.02)
            health = client.get_job_health(job.id)
        assert health.has_process and health.alive and health.process_count >= 1
        client.cancel_job(job.id, grace=5)
        ended = client.wait_for_job(job.id, timeout=30)
        assert ended.state == job_pb2.JOB_STATE_CANCELLED
        assert not client.get_job_health(job.id).has_process
        step = client.get_job_step(job.id, 1, tail_lines=5)
        assert step.step.index == 1 and b"begun" in step.tail
        cleared = client.clear_jobs(states=[job_pb2.JOB_STATE_CANCELLED])
        assert job.id in cleared.job_ids
        with pytest.raises(NotFound):
            client.get_job(job.id)
        assert client.delete_checkpoints("default", "default", "steady").deleted_count == 0


def test_clear_jobs_wants_a_filter_or_all_and_can_preview(services: Stack) -> None:
    with ConductorClient(services.address) as client:
        job = client.wait_for_job(client.submit_job(spec("brief", "true")).id, timeout=30)
        with pytest.raises(InvalidArgument) as info:
            client.clear_jobs()
        assert info.value.reason == "CLEAR_FILTER_REQUIRED"
        assert [v.field for v in info.value.field_violations] == ["all"]
        preview = client.clear_jobs(all=True, dry_run=True)
        assert list(preview.job_ids) == [job.id] and preview.deleted_count == 1
        assert client.get_job(job.id).id == job.id

    async def clear_all() -> list[str]:
        async with AsyncConductorClient(services.address) as conductor:
            with pytest.raises(InvalidArgument):
                await conductor.clear_jobs(dry_run=True)
            return list((await conductor.clear_jobs(all=True)).job_ids)

    assert asyncio.run(clear_all()) == [job.id]
    with ConductorClient(services.address) as client, pytest.raises(NotFound):
        client.get_job(job.id)
