"""Guards people expect (issue 12, item 9), through real servers.

ClearJobs with no filter at all is refused unless the request says `all`, so
an empty request (a script with an unset variable, a bare `baton clear`)
never deletes every ended job by accident; `dry_run` shows what would go.

A service that is asked to stop says NOT_SERVING on grpc.health.v1 before it
goes away, so load balancers and watchers move on before calls start failing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from baton.conductor.server import SERVICE as CONDUCTOR
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.viewer_api.server import SERVICE as VIEWER
from tests.checks import bad_request_fields, error_info_reason
from tests.harness import InProcessConductor, SubprocessConductor, kill_job_groups
from tests.services import spec
from tests.viewer_harness import InProcessViewer, SubprocessViewer

# ------------------------------------------------------------------ ClearJobs


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    err = info.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err  # type: ignore[attr-defined]
    return err


def listed(conductor: InProcessConductor) -> set[str]:
    return {j.id for j in conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs}


def test_clear_jobs_wants_a_filter_or_all_and_previews_with_dry_run(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    stub = conductor.stub
    gate = tmp_path / "gate"
    ok = conductor.wait_ended(conductor.submit(spec("ok", "true", project="p1")).id)
    bad = conductor.wait_ended(conductor.submit(spec("bad", "exit 1", project="p2")).id)
    busy = conductor.submit(spec("busy", f"while [ ! -e {gate} ]; do sleep 0.05; done"))
    conductor.wait_for(busy.id, "RUNNING")
    everyone = {ok.id, bad.id, busy.id}

    # No filter: an empty project, and an age of zero, narrow nothing either.
    for request in (
        pb.ClearJobsRequest(),
        pb.ClearJobsRequest(project="", group="", name=""),
        pb.ClearJobsRequest(older_than=duration_pb2.Duration()),
        pb.ClearJobsRequest(dry_run=True),
    ):
        err = refused(lambda r=request: stub.ClearJobs(r, timeout=10))
        assert bad_request_fields(err) == ["all"], request
        assert error_info_reason(err) == "CLEAR_FILTER_REQUIRED"
        assert "all" in err.details()  # type: ignore[attr-defined]
    assert listed(conductor) == everyone

    # A dry run answers as the real call would, and deletes nothing.
    preview = stub.ClearJobs(pb.ClearJobsRequest(all=True, dry_run=True), timeout=10)
    assert set(preview.job_ids) == {ok.id, bad.id}
    assert preview.deleted_count == 2
    preview = stub.ClearJobs(pb.ClearJobsRequest(project="p1", dry_run=True), timeout=10)
    assert list(preview.job_ids) == [ok.id] and preview.deleted_count == 1
    # With `all`, a filter still decides ("all the failed ones").
    preview = stub.ClearJobs(
        pb.ClearJobsRequest(all=True, states=[job_pb2.JOB_STATE_FAILED], dry_run=True), timeout=10
    )
    assert list(preview.job_ids) == [bad.id]
    assert listed(conductor) == everyone
    assert Path(ok.run_dir).is_dir() and Path(bad.run_dir).is_dir()

    # `all` does not let a running job go: states are still checked.
    err = refused(
        lambda: stub.ClearJobs(pb.ClearJobsRequest(all=True, states=[job_pb2.JOB_STATE_RUNNING]), timeout=10)
    )
    assert bad_request_fields(err) == ["states[0]"]

    done = stub.ClearJobs(pb.ClearJobsRequest(all=True), timeout=30)
    assert set(done.job_ids) == {ok.id, bad.id} and done.deleted_count == 2
    assert listed(conductor) == {busy.id}
    gate.touch()
    conductor.wait_ended(busy.id)


# ------------------------------------------------------------------ health on shutdown


class HealthWatches:
    """grpc.health.v1 Watch streams on the overall status and each named service.

    Each stream is read on its own thread from the start, so what the server
    sent before it cut the streams is kept, whatever order they end in.
    """

    def __init__(self, address: str, services: list[str]) -> None:
        self.channel = grpc.insecure_channel(address)
        stub = health_pb2_grpc.HealthStub(self.channel)
        self.said: dict[str, list[str]] = {}
        self.threads: list[threading.Thread] = []
        for name in ["", *services]:
            stream = stub.Watch(health_pb2.HealthCheckRequest(service=name), timeout=60)
            first = next(stream).status
            assert first == health_pb2.HealthCheckResponse.SERVING, (name, first)
            self.said[name] = []
            self.threads.append(threading.Thread(target=self._read, args=(stream, self.said[name])))
        for thread in self.threads:
            thread.start()

    @staticmethod
    def _read(stream: Iterator[health_pb2.HealthCheckResponse], said: list[str]) -> None:
        try:
            for response in stream:
                said.append(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        except grpc.RpcError as err:
            # The server cut the stream as it went away; a deadline means it never did.
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                said.append("DEADLINE_EXCEEDED")

    def until_gone(self) -> dict[str, list[str]]:
        """What each stream said after its first SERVING, until the server cut it."""
        for thread in self.threads:
            thread.join(90)
        self.channel.close()
        return self.said


@contextlib.contextmanager
def stopping(stop: Callable[[], None]) -> Iterator[None]:
    """Run ``stop`` (which blocks until the server is gone) on a thread for the block."""
    thread = threading.Thread(target=stop)
    thread.start()
    try:
        yield
    finally:
        thread.join(30)
    assert not thread.is_alive()


def test_the_conductor_says_not_serving_before_it_stops(conductor: InProcessConductor) -> None:
    watches = HealthWatches(conductor.address, [CONDUCTOR])
    with stopping(conductor.stop):
        said = watches.until_gone()
    assert said == {"": ["NOT_SERVING"], CONDUCTOR: ["NOT_SERVING"]}


def test_the_viewer_says_not_serving_before_it_stops(
    viewer_factory: Callable[..., InProcessViewer],
) -> None:
    viewer = viewer_factory()
    watches = HealthWatches(viewer.address, [VIEWER])
    with stopping(viewer.stop):
        said = watches.until_gone()
    assert said == {"": ["NOT_SERVING"], VIEWER: ["NOT_SERVING"]}


def test_sigterm_makes_a_conductor_process_say_not_serving_first(tmp_path: Path) -> None:
    home = tmp_path / "home"
    conductor = SubprocessConductor(home).start()
    try:
        assert conductor.proc is not None
        watches = HealthWatches(conductor.address, [CONDUCTOR])
        conductor.proc.send_signal(signal.SIGTERM)
        assert watches.until_gone() == {"": ["NOT_SERVING"], CONDUCTOR: ["NOT_SERVING"]}
        assert conductor.proc.wait(15) == 0
    finally:
        conductor.stop()
        kill_job_groups(home / "status")


def test_sigterm_makes_a_viewer_process_say_not_serving_first(tmp_path: Path) -> None:
    viewer = SubprocessViewer(tmp_path / "home", tmp_path / "viewer.log").start()
    try:
        assert viewer.proc is not None
        watches = HealthWatches(viewer.address, [VIEWER])
        viewer.proc.send_signal(signal.SIGTERM)
        assert watches.until_gone() == {"": ["NOT_SERVING"], VIEWER: ["NOT_SERVING"]}
        assert viewer.proc.wait(15) == 0
    finally:
        viewer.stop()
