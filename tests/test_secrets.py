"""Secrets, file modes and the smaller exposure rules (issue 15 items 5 and 9), against real servers.

A secret's value reaches the job's environment, byte for byte, and nothing
else: every reply, event, status file, state file, log and error is searched
for it. Everything Baton writes is kept from other users.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.conductor.server import HomeLocked
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2, viewer_pb2, viewer_pb2_grpc
from tests.harness import REPO, InProcessConductor, SubprocessConductor, kill_job_groups
from tests.services import spec

# Quotes, a dollar, a backslash, no final newline change: byte for byte.
SECRET = b"s3cr3t-7f3a9 'quoted' \"double\" $HOME \\ \xc3\xa9\n"
MARKER = b"s3cr3t-7f3a9"


def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)
    path = directory / "api-token"
    path.write_bytes(SECRET)
    os.chmod(path, 0o600)
    return directory


def field_violations(err: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [v.field for v in bad.field_violations]
    return out


def every_file(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_secret_values_reach_the_job_and_nothing_else(tmp_path: Path) -> None:
    home = tmp_path / "home"
    seen_by_job = tmp_path / "seen"
    c = SubprocessConductor(home, "--secrets-dir", str(secrets_dir(tmp_path))).start()
    viewer = None
    replies: list[bytes] = []
    try:
        from tests.viewer_harness import InProcessViewer

        viewer = InProcessViewer(home=home).start()
        stub = c.stub
        yaml_spec = spec(
            "uses-secret",
            f'printf %s "$API_KEY" > {seen_by_job}; echo done',
            secret_env={"API_KEY": "api-token"},
            env={"PLAIN": "published"},
        )
        dry = stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=yaml_spec, dry_run=True), timeout=30)
        job = c.submit(yaml_spec)
        replies += [dry.SerializeToString(), job.SerializeToString()]
        assert dict(job.spec.secret_env) == {"API_KEY": "api-token"}, "the mapping's names are published"
        ended = c.wait_ended(job.id)
        assert ended.state == job_pb2.JOB_STATE_SUCCEEDED, ended.reason
        assert seen_by_job.read_bytes() == SECRET, "the job's environment has the value, byte for byte"
        replies.append(ended.SerializeToString())
        replies.append(stub.ListJobs(pb.ListJobsRequest(), timeout=10).SerializeToString())
        watch = stub.WatchJobs(pb.WatchJobsRequest(), timeout=10)
        for response in watch:
            replies.append(response.SerializeToString())
            if any(e.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END for e in response.events):
                break
        watch.cancel()
        replies.append(
            b"".join(c.data for c in stub.StreamLogs(pb.StreamLogsRequest(job_id=job.id), timeout=10))
        )
        vstub = viewer_pb2_grpc.ViewerStub(grpc.insecure_channel(viewer.address))
        deadline = time.monotonic() + 20
        while True:
            try:
                vjob = vstub.GetJob(viewer_pb2.ViewerGetJobRequest(job_id=job.id), timeout=10)
                if vjob.state == job_pb2.JOB_STATE_SUCCEEDED:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.05)
        replies.append(vjob.SerializeToString())
        replies.append(vstub.ListJobs(viewer_pb2.ViewerListJobsRequest(), timeout=10).SerializeToString())

        # A secret the conductor does not hold: refused at submit, dry run too, naming the field.
        missing = spec("no-secret", "true", secret_env={"API_KEY": "no-such-secret"})
        for dry_run in (True, False):
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=missing, dry_run=dry_run), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(err.value) == ["spec.secret_env.API_KEY"]
            replies.append(str(err.value.details()).encode() + str(err.value.trailing_metadata()).encode())
        both = spec("both", "true", secret_env={"API_KEY": "api-token"}, env={"API_KEY": "x"})
        with pytest.raises(grpc.RpcError) as err:
            c.submit(both)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        spec_file = tmp_path / "missing.yaml"
        spec_file.write_text(missing)
        cli = subprocess.run(
            [sys.executable, "-m", "baton.client.cli", "--conductor", c.address, "submit", str(spec_file)],
            capture_output=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert cli.returncode != 0 and b"spec.secret_env.API_KEY" in cli.stderr + cli.stdout
        replies.append(cli.stdout + cli.stderr)
    finally:
        if viewer is not None:
            viewer.stop()
        c.stop()
        kill_job_groups(home / "status")
    for reply in replies:
        assert MARKER not in reply
    leaked = [p for p in every_file(home) if MARKER in p.read_bytes()]
    assert leaked == [], "status files, the registry, launch env files and logs never hold a secret"
    log = (tmp_path / "home-conductor.log").read_bytes()
    assert b"conductor_serving" in log, "the conductor's own log was searched"
    assert MARKER not in log
    env_files = list((home / "state" / "launches").glob("*/*/env"))
    assert env_files and all(p.stat().st_size == 0 for p in env_files), "the job emptied its env file"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in env_files)


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            out[str(p.relative_to(root.parent))] = stat.S_IMODE(p.stat().st_mode)
    return out


def test_files_baton_writes_are_not_world_readable(conductor_factory: Any, tmp_path: Path) -> None:
    group = grp.getgrgid(1).gr_name  # any group: root may give files to it
    c: InProcessConductor = conductor_factory(home=tmp_path / "home", group=group)
    checkpoint = (
        'mkdir -p "$BATON_CHECKPOINT_DIR/.c1" && mv "$BATON_CHECKPOINT_DIR/.c1" "$BATON_CHECKPOINT_DIR/c1"'
    )
    job = c.submit(spec("modes", f"echo hi; {checkpoint}"))
    assert c.wait_ended(job.id).state == job_pb2.JOB_STATE_SUCCEEDED
    assert c.running is not None
    c.running.publisher.flush(10)
    home = tmp_path / "home"
    modes = _modes(home / "state") | _modes(home / "status") | _modes(home / "checkpoints")
    world = {p: oct(m) for p, m in modes.items() if m & 0o007}
    assert world == {}, "nothing is world-readable"
    state = _modes(home / "state")
    assert state["state"] == 0o700
    for name in ("registry.db", "conductor.json", "conductor.lock"):
        assert state[f"state/{name}"] == 0o600, name
    for tree in ("status", "checkpoints"):
        root = home / tree
        assert root.stat().st_gid == 1 and root.stat().st_mode & stat.S_ISGID, "the group shares the tree"
        for p in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(p.stat().st_mode) & 0o777
            assert p.stat().st_gid == 1, p
            assert mode == (0o750 if p.is_dir() else 0o640), (p, oct(mode))


def test_a_secrets_dir_others_may_read_stops_the_conductor(tmp_path: Path) -> None:
    directory = secrets_dir(tmp_path)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "baton.client.cli", "conductor", "--listen", "127.0.0.1:0",
             "--home", str(tmp_path / "home"), "--secrets-dir", str(directory)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip

    os.chmod(directory, 0o750)
    result = run()
    assert result.returncode != 0 and "--secrets-dir" in result.stderr and "Traceback" not in result.stderr
    os.chmod(directory, 0o700)
    os.chmod(directory / "api-token", 0o644)
    result = run()
    assert result.returncode != 0 and "api-token" in result.stderr and "Traceback" not in result.stderr
    assert MARKER.decode() not in result.stderr


@pytest.mark.parametrize("settings", [{"insecure": True}, {"token_file": "TOKEN"}])
def test_exposed_listen_addresses_warn_at_start(
    conductor_factory: Any, tmp_path: Path, settings: dict
) -> None:
    if settings.get("token_file") == "TOKEN":
        settings = {"token_file": tmp_path / "token"}
        settings["token_file"].write_text("tok\n")
    with structlog.testing.capture_logs() as logs:
        c = InProcessConductor(tmp_path / "home", **settings)
        c.config = c.config.model_copy(update={"listen": "0.0.0.0:0"})
        c.start()
        c.stop()
    events = {e["event"] for e in logs if e["log_level"] == "warning"}
    assert ("insecure_listen" if "insecure" in settings else "plaintext_token") in events, events


@pytest.mark.parametrize("tree", ["status_dir", "checkpoints_dir"])
def test_two_conductors_on_one_tree_are_refused(conductor_factory: Any, tmp_path: Path, tree: str) -> None:
    shared = tmp_path / "shared"
    conductor_factory(home=tmp_path / "a", **{tree: shared})
    with pytest.raises(HomeLocked, match=str(shared)):
        conductor_factory(home=tmp_path / "b", **{tree: shared})
