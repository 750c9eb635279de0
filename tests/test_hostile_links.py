"""Links out of the trees (issue 15, items 3 and 4): every file either service
opens for a client resolves inside its tree, and deletion never goes through a link.

One suite plants a link pointing outside at every file and directory level of
both trees (status: project, group, name, run directory, status.json,
output.log; checkpoints: project, group, name, run directory, checkpoint
directory, config.yaml, job.json), then calls every RPC that could read or
delete through each. Every read is refused (NOT_FOUND when the viewer's index
never listed what the link makes, FAILED_PRECONDITION with reason
PATH_OUTSIDE_TREE when a known run or checkpoint holds the link), no answer
or error carries a byte of the outside files, and the outside files are
untouched. The figures (links planted, reads refused) are printed.

The policy it holds the services to: a link that resolves inside its own tree
is followed (the index lists runs reached through one, and a read must find
what a list shows); a link that leaves is refused. Deletion follows no link
at all: a link in the way is refused (PATH_IS_LINK), a checkpoint that is a
link is unlinked itself.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.v1 import viewer_pb2 as vpb
from tests.checks import error_info
from tests.harness import InProcessConductor
from tests.procs import PY, spec_yaml
from tests.treegen import format_ts, job_bytes
from tests.viewer_harness import InProcessViewer

S = job_pb2
SECRET = "OUTSIDE-SECRET-7f3a"
REFUSED = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)


def _job(key: tuple[str, str, str, str]) -> dict[str, Any]:
    p, g, n, r = key
    now = time.time_ns() // 1000
    return {
        "id": f"id-{r}", "project": p, "group": g, "name": n, "runId": r,
        "state": "JOB_STATE_SUCCEEDED", "createTime": format_ts(now - 5_000_000),
        "endTime": format_ts(now - 1_000_000), "exitCode": 0, "reason": SECRET,
    }  # fmt: skip


def _run(run_dir: Path, key: tuple[str, str, str, str], *, reason: str = "") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "status.json").write_bytes(job_bytes({**_job(key), "reason": reason}))


def _checkpoint(path: Path, *, secret: bool) -> None:
    path.mkdir(parents=True, exist_ok=True)
    body = SECRET if secret else "inside"
    # Not valid YAML: a parse error that quoted the file would show the secret.
    (path / "config.yaml").write_text(f"lr: 0.1\n{body}: [unclosed\n" if secret else "lr: 0.1\n")
    (path / "job.json").write_text(f'{{"name": "{body}"' if secret else '{"name": "inside"}')
    (path / "model.bin").write_bytes(b"m" * 10)


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its hash and modification time (links not followed)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            with open(p, "rb") as f:
                out[p] = (hashlib.sha256(f.read()).hexdigest(), st.st_mtime_ns)
    return out


class Tally:
    """Every call made through a planted link: refused, with nothing from outside in it.

    Failures are collected, not raised at once, so a run against code that
    reads through links reports how many calls did.
    """

    def __init__(self) -> None:
        self.refused = 0
        self.calls: list[str] = []
        self.failures: list[str] = []

    def refuse(self, what: str, call: Callable[[], Any], reason: str = "") -> None:
        self.calls.append(what)
        try:
            got = call()
            if hasattr(got, "__iter__") and not hasattr(got, "ListFields"):
                got = list(got)
        except grpc.RpcError as exc:
            details = f"{exc.details()} {exc.trailing_metadata()}"
            if exc.code() not in REFUSED or SECRET in details:
                self.failures.append(f"{what}: {exc.code()} {details[:300]}")
            elif reason and error_info(exc).reason != reason:
                self.failures.append(f"{what}: reason {error_info(exc).reason}, expected {reason}")
            else:
                self.refused += 1
            return
        leaked = " (OUTSIDE CONTENT)" if SECRET in str(got) else ""
        self.failures.append(f"{what}: answered{leaked} {str(got)[:200]!r}")


def _viewer_run(key: tuple[str, str, str, str]) -> dict[str, str]:
    p, g, n, r = key
    return {"project": p, "group": g, "name": n, "run_id": r}


def test_links_out_of_both_trees_are_refused_by_every_reading_and_deleting_rpc(
    tmp_path: Path,
    conductor_factory: Callable[..., InProcessConductor],
    viewer_factory: Callable[..., InProcessViewer],
) -> None:
    began = time.monotonic()
    home = tmp_path / "home"
    status, ckpts = home / "status", home / "checkpoints"
    outside = tmp_path / "outside"
    # What the links point at: a whole status subtree and checkpoints subtree, secrets inside.
    o_run = outside / "status" / "op" / "og" / "on" / "orun"
    _run(o_run, ("op", "og", "on", "orun"), reason=SECRET)
    (o_run / "output.log").write_text(f"{SECRET} log line\n")
    o_ck = outside / "ckpt" / "op" / "og" / "on"
    (o_ck / "orun").mkdir(parents=True)
    (o_ck / "orun" / ".baton-run").write_text('{"job_id": "x", "run_id": "orun"}\n')
    _checkpoint(o_ck / "orun" / "s1", secret=True)
    _checkpoint(o_ck / "s0", secret=True)  # a plain-layout checkpoint
    before = _snapshot(outside)

    # -------- the status tree: a link at every level.
    p, g, n = "proj", "grp", "job"
    real = status / p / g / n
    _run(real / "good", (p, g, n, "good"))  # the control: read normally
    (real / "good" / "output.log").write_text("inside line\n")
    links: list[Path] = []

    def plant(link: Path, target: Path) -> None:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        links.append(link)

    plant(status / "lproj", outside / "status" / "op")
    plant(status / p / "lgrp", outside / "status" / "op" / "og")
    plant(status / p / g / "ljob", outside / "status" / "op" / "og" / "on")
    plant(real / "lrun", o_run)
    (real / "lstatus").mkdir()
    plant(real / "lstatus" / "status.json", o_run / "status.json")
    _run(real / "llog", (p, g, n, "llog"))  # a known run whose output.log leads out
    plant(real / "llog" / "output.log", o_run / "output.log")
    status_links = len(links)

    # -------- the checkpoints tree: a link at every level.
    cp = ckpts / p / g / n
    (cp / "run2").mkdir(parents=True)
    (cp / "run2" / ".baton-run").write_text('{"job_id": "run2", "run_id": "run2"}\n')
    _checkpoint(cp / "run2" / "good", secret=False)
    plant(ckpts / "lproj", outside / "ckpt" / "op")
    plant(ckpts / p / "lgrp", outside / "ckpt" / "op" / "og")
    plant(ckpts / p / g / "ljob", o_ck)
    plant(cp / "lrun", o_ck / "orun")  # a run's checkpoint directory
    plant(cp / "run2" / "lsuf", o_ck / "orun" / "s1")  # one checkpoint
    (cp / "run2" / "lconf").mkdir()
    plant(cp / "run2" / "lconf" / "config.yaml", o_ck / "orun" / "s1" / "config.yaml")
    (cp / "run2" / "lspec").mkdir()
    plant(cp / "run2" / "lspec" / "job.json", o_ck / "orun" / "s1" / "job.json")
    ckpt_links = len(links) - status_links

    c = conductor_factory(home=home)
    v = viewer_factory(status_dir=status, checkpoints_dir=ckpts)
    t = Tally()
    vs = v.stub

    # The controls: the same RPCs read what is really inside.
    assert vs.GetJob(vpb.ViewerGetJobRequest(**_viewer_run((p, g, n, "good"))), timeout=10).run_id == "good"
    assert (
        vs.ReadLog(vpb.ReadLogRequest(**_viewer_run((p, g, n, "good"))), timeout=10).data == b"inside line\n"
    )
    got = vs.GetCheckpointConfig(
        vpb.GetCheckpointConfigRequest(project=p, group=g, name=n, suffix="run2/good")
    )
    assert json_format.MessageToDict(got.config) == {"lr": 0.1}

    # -------- status reads through each link.
    status_keys = [
        ("lproj", "og", "on", "orun"), (p, "lgrp", "on", "orun"), (p, g, "ljob", "orun"),
        (p, g, n, "lrun"), (p, g, n, "lstatus"), (p, g, n, "llog"),
    ]  # fmt: skip
    for key in status_keys:
        ref = _viewer_run(key)
        name = "/".join(key)
        if key[3] != "llog":  # llog's status.json is its own: GetJob rightly answers
            t.refuse(f"GetJob {name}", lambda ref=ref: vs.GetJob(vpb.ViewerGetJobRequest(**ref), timeout=10))
        t.refuse(f"ReadLog {name}", lambda ref=ref: vs.ReadLog(vpb.ReadLogRequest(**ref), timeout=10))
        t.refuse(f"TailLog {name}", lambda ref=ref: vs.TailLog(vpb.TailLogRequest(**ref), timeout=10))
        for follow in (False, True):
            t.refuse(
                f"StreamLogs {name} follow={follow}",
                lambda ref=ref, follow=follow: vs.StreamLogs(
                    vpb.ViewerStreamLogsRequest(**ref, follow=follow), timeout=10
                ),
            )
    # The known run with the linked log says why: the path is refused, not missing.
    llog = _viewer_run((p, g, n, "llog"))
    t.refuse("ReadLog llog (reason)", lambda: vs.ReadLog(vpb.ReadLogRequest(**llog)), "PATH_OUTSIDE_TREE")

    # -------- checkpoint reads through each link.
    ckpt_refs = [
        ("lproj", "og", "on", "orun/s1"), (p, "lgrp", "on", "orun/s1"), (p, g, "ljob", "orun/s1"),
        ("lproj", "og", "on", "s0"), (p, g, n, "lrun/s1"), (p, g, n, "run2/lsuf"),
        (p, g, n, "run2/lconf"), (p, g, n, "run2/lspec"),
    ]  # fmt: skip
    for cp_key in ckpt_refs:
        kw = dict(zip(("project", "group", "name", "suffix"), cp_key, strict=True))
        name = "/".join(cp_key)
        t.refuse(f"GetCheckpointConfig {name}", lambda kw=kw: vs.GetCheckpointConfig(
            vpb.GetCheckpointConfigRequest(**kw), timeout=10))  # fmt: skip
        t.refuse(f"GetCheckpointJobSpec {name}", lambda kw=kw: vs.GetCheckpointJobSpec(
            vpb.GetCheckpointJobSpecRequest(**kw), timeout=10))  # fmt: skip
        if not cp_key[3].endswith(("lconf", "lspec")):  # those are real checkpoints holding a link
            t.refuse(f"GetCheckpoint {name}", lambda kw=kw: vs.GetCheckpoint(
                vpb.GetCheckpointRequest(**kw), timeout=10))  # fmt: skip
    for kind, call in (("Config", vs.GetCheckpointConfig), ("JobSpec", vs.GetCheckpointJobSpec)):
        req = vpb.GetCheckpointConfigRequest if kind == "Config" else vpb.GetCheckpointJobSpecRequest
        suffix = "run2/lconf" if kind == "Config" else "run2/lspec"
        t.refuse(f"GetCheckpoint{kind} reason", lambda call=call, req=req, suffix=suffix: call(
            req(project=p, group=g, name=n, suffix=suffix), timeout=10), "PATH_OUTSIDE_TREE")  # fmt: skip
    # Nothing from outside in any list either.
    listed = str(vs.ListJobs(vpb.ViewerListJobsRequest(page_size=1000), timeout=10))
    listed += str(vs.ListCheckpoints(vpb.ListCheckpointsRequest(page_size=1000), timeout=10))
    if SECRET in listed or "orun" in listed:
        t.failures.append("ListJobs/ListCheckpoints show what is outside")

    # -------- the conductor: a job that turns its own output.log and result into links out.
    swap = (
        f"import os; d = os.environ['BATON_RUN_DIR']; os.unlink(d + '/output.log'); "
        f"os.symlink({str(o_run / 'output.log')!r}, d + '/output.log'); "
        f"os.symlink({str(o_run / 'status.json')!r}, os.environ['BATON_RESULT_FILE'])"
    )
    job = c.submit(
        spec_yaml(name="swapper", steps=[{"name": "s", "command": f"{PY} -c {shlex.quote(swap)}"}])
    )
    ended = c.wait_ended(job.id, timeout=20)
    links += [Path(ended.run_dir) / "output.log", Path(ended.run_dir) / "result.json"]
    assert ended.state == S.JOB_STATE_SUCCEEDED, ended
    if ended.result.fields or "result dropped" not in ended.reason or SECRET in str(ended):
        t.failures.append(f"a result.json linked out was taken: {str(ended.result)[:200]}")
    for follow in (False, True):
        t.refuse(f"conductor StreamLogs follow={follow}", lambda follow=follow: c.stub.StreamLogs(
            pb.StreamLogsRequest(job_id=job.id, follow=follow), timeout=10))  # fmt: skip
    t.refuse("conductor GetJobStep", lambda: c.stub.GetJobStep(
        pb.GetJobStepRequest(job_id=job.id, step=1, tail_lines=10), timeout=10))  # fmt: skip

    # -------- deletion: through a link at every directory level, nothing outside goes.
    for cp_key in [("lproj", "og", "on"), (p, "lgrp", "on"), (p, g, "ljob")]:
        kw = dict(zip(("project", "group", "name"), cp_key, strict=True))
        for refs in ([], ["orun/s1"], ["s0"]):
            what = f"DeleteCheckpoints {'/'.join(cp_key)} {refs}"
            t.refuse(what, lambda kw=kw, refs=refs: c.stub.DeleteCheckpoints(
                pb.DeleteCheckpointsRequest(**kw, suffixes=refs), timeout=10))  # fmt: skip
    for refs in (["lrun/s1"], ["run2/lsuf"]):
        t.refuse(f"DeleteCheckpoints {refs}", lambda refs=refs: c.stub.DeleteCheckpoints(
            pb.DeleteCheckpointsRequest(project=p, group=g, name=n, suffixes=refs), timeout=10))  # fmt: skip
    # Every checkpoint of the job: its own go, the links in it are unlinked, never followed.
    c.stub.DeleteCheckpoints(pb.DeleteCheckpointsRequest(project=p, group=g, name=n), timeout=10)
    assert not (cp / "lrun").is_symlink() and not (cp / "run2").exists()

    after = _snapshot(outside)
    print(
        f"\nsymlink suite: {len(links)} links planted ({status_links} status tree, {ckpt_links} checkpoints "
        f"tree, 2 by a job in its own run directory); {t.refused} of {len(t.calls)} reads and deletions "
        f"through them refused; outside files untouched ({len(after)} checked); "
        f"{time.monotonic() - began:.1f} s"
    )
    assert not t.failures, f"{len(t.failures)} calls not refused:\n" + "\n".join(t.failures)
    assert t.refused == len(t.calls)
    assert after == before, f"outside files changed or deleted: {sorted(set(before) - set(after))}"


def test_a_link_that_stays_inside_its_tree_is_followed(
    tmp_path: Path, viewer_factory: Callable[..., InProcessViewer]
) -> None:
    status = tmp_path / "status"
    _run(status / "p" / "g" / "n" / "real", ("p", "g", "n", "real"))
    (status / "p" / "g" / "n" / "real" / "output.log").write_text("one\ntwo\n")
    (status / "p" / "g" / "n" / "alias").symlink_to(status / "p" / "g" / "n" / "real")
    v = viewer_factory(status_dir=status, checkpoints_dir=tmp_path / "ckpt")
    ref = _viewer_run(("p", "g", "n", "alias"))
    v.wait_for(lambda: len(v.list_all()[0]) == 2, "both runs listed")
    assert v.stub.GetJob(vpb.ViewerGetJobRequest(**ref), timeout=10).run_id == "alias"
    assert v.stub.ReadLog(vpb.ReadLogRequest(**ref), timeout=10).data == b"one\ntwo\n"
    assert v.stub.TailLog(vpb.TailLogRequest(**ref, tail_lines=1), timeout=10).data == b"two\n"


def test_delete_job_never_deletes_through_a_linked_name_directory(
    conductor: InProcessConductor, tmp_path: Path
) -> None:
    job = conductor.wait_ended(conductor.submit(spec_yaml(name="kept", project="p", command="echo hi")).id)
    run_dir = Path(job.run_dir)
    name_dir = run_dir.parent
    # Someone with write access to the tree swaps the name directory for a link
    # to a directory outside it that holds a run directory of the same id.
    outside = tmp_path / "outside-name"
    name_dir.rename(outside)
    name_dir.symlink_to(outside)
    precious = outside / run_dir.name / "output.log"
    assert precious.read_text() == "hi\n"
    conductor.stub.DeleteJob(pb.DeleteJobRequest(job_id=job.id), timeout=10)
    # The publisher removes run directories in the background, in order: once a
    # later job's status.json is written, the removal has been tried.
    later = conductor.wait_ended(conductor.submit(spec_yaml(name="later", project="p", command="true")).id)
    status = Path(later.run_dir) / "status.json"
    deadline = time.monotonic() + 10
    while '"JOB_STATE_SUCCEEDED"' not in (status.read_text() if status.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert precious.read_text() == "hi\n", "DeleteJob deleted through a link out of the tree"
    assert name_dir.is_symlink()
