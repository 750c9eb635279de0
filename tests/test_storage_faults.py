"""A conductor whose disk fills up refuses what it cannot record and shows nothing it has not.

The conductor's home sits on a small tmpfs that the test fills for real: first
its inodes (no new file or directory can be made), then its blocks too (no
write that needs a new page). SubmitJob answers OK only for a job the registry
holds; a job it cannot record is refused (RESOURCE_EXHAUSTED or UNAVAILABLE,
with an ErrorInfo reason) and shows up nowhere, not even after a restart; an
accepted job that cannot be started waits QUEUED for storage. Once space is
freed, with no restart, every accepted job runs exactly once (the jobs count
their own starts in a file off the tmpfs) and ends SUCCEEDED.

Mounting needs root: the tests skip, saying so, without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from baton.common.jobfile import read_job
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import error_info_reason
from tests.harness import InProcessConductor, SubprocessConductor, kill_job_groups
from tests.procs import TICKER, spec_yaml, wait_until

OK = grpc.StatusCode.OK
# What a refusal for storage may be, and the reason that goes with each code.
STORAGE_REFUSALS = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "STORAGE_FULL",
    grpc.StatusCode.UNAVAILABLE: "STORAGE_UNAVAILABLE",
}
# Big enough that recording the job needs pages the registry's WAL does not have
# yet; each value stays under the kernel's 128 KiB limit on one variable, so an
# accepted job still starts.
PAD = {"PAD": "x" * 120_000}


@contextlib.contextmanager
def small_tmpfs(where: Path, *, size: str, inodes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` with ``inodes`` inodes at ``where`` (skip when that is not possible)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size},nr_inodes={inodes}"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            # Something still holds a file open there (a job left behind by a failure).
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def exhaust_inodes(directory: Path) -> int:
    """Make empty files in ``directory`` until the filesystem has no inode left; how many."""
    directory.mkdir()
    made = 0
    while True:
        try:
            os.close(os.open(directory / str(made), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return made
        made += 1


def exhaust_blocks(filler: Path) -> None:
    """Append to ``filler`` (made beforehand: it needs an inode) until no block is left."""
    chunk = b"\xa5" * (1 << 20)
    with open(filler, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return


def free_inodes(mount: Path) -> int:
    return os.statvfs(mount).f_ffree


def ticker(ran: Path, ticks: int = 3) -> str:
    return f"{TICKER} --ran-file {shlex.quote(str(ran))} --ticks {ticks}"


@dataclass
class Answer:
    """How SubmitJob answered one submission."""

    name: str
    phase: str
    code: grpc.StatusCode
    reason: str | None = None
    job_id: str = ""

    @property
    def refused(self) -> bool:
        return self.code != OK


def submit(c: InProcessConductor, name: str, phase: str, command: str, **fields: object) -> Answer:
    spec = spec_yaml(name=name, command=command, **fields)
    try:
        job = c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec), timeout=15)
    except grpc.RpcError as err:
        return Answer(name, phase, err.code(), error_info_reason(err))
    return Answer(name, phase, OK, job_id=job.id)


def assert_answered_as_the_contract_says(answers: list[Answer]) -> None:
    """OK, or a storage refusal whose ErrorInfo reason matches its code: nothing else."""
    wrong = [
        a
        for a in answers
        if a.code != OK and (a.code not in STORAGE_REFUSALS or a.reason != STORAGE_REFUSALS[a.code])
    ]
    assert wrong == [], f"answers outside OK / RESOURCE_EXHAUSTED / UNAVAILABLE with a reason: {wrong}"


def all_jobs(c: InProcessConductor) -> list[job_pb2.Job]:
    """Every job ListJobs shows, page by page (small pages: some jobs carry big specs)."""
    jobs: list[job_pb2.Job] = []
    token = ""
    while True:
        page = c.stub.ListJobs(pb.ListJobsRequest(page_size=10, page_token=token), timeout=10)
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs


def snapshot(c: InProcessConductor) -> list[job_pb2.Job]:
    """The jobs of a WatchJobs snapshot (from revision 0, up to its SNAPSHOT_END)."""
    call = c.stub.WatchJobs(pb.WatchJobsRequest(since_revision=0), timeout=10)
    jobs: list[job_pb2.Job] = []
    try:
        for ev in (ev for response in call for ev in response.events):
            if ev.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END:
                return jobs
            assert ev.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT, ev
            jobs.append(ev.job)
    finally:
        call.cancel()
    raise AssertionError("the snapshot ended without its end marker")


def history(c: InProcessConductor) -> list[job_pb2.Job]:
    """Every change the registry kept after revision 1, as WatchJobs replays them."""
    last = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10).revision
    call = c.stub.WatchJobs(pb.WatchJobsRequest(since_revision=1), timeout=30)
    jobs = []
    try:
        for ev in (ev for response in call for ev in response.events):
            if ev.type in (job_pb2.JOB_EVENT_TYPE_UPDATED, job_pb2.JOB_EVENT_TYPE_DELETED):
                jobs.append(ev.job)
            if ev.revision >= last:
                return jobs
    finally:
        call.cancel()
    raise AssertionError(f"the watch ended before revision {last}")


class Watch:
    """Every event of one WatchJobs call, read in a thread as they come."""

    def __init__(self, c: SubprocessConductor) -> None:
        self.events: list[job_pb2.JobEvent] = []
        self._call = c.stub.WatchJobs(pb.WatchJobsRequest(since_revision=0))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for response in self._call:
                self.events.extend(response.events)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)


def run_dirs(status_dir: Path) -> dict[str, list[Path]]:
    """The run directories under a status dir, by job name."""
    found: dict[str, list[Path]] = {}
    for run in status_dir.glob("*/*/*/*"):
        if run.is_dir():
            found.setdefault(run.parent.name, []).append(run)
    return found


def wait_published(job: job_pb2.Job) -> job_pb2.Job:
    """The job's status.json once it holds ``job``'s revision: a whole record, parsed."""
    path = Path(job.run_dir) / "status.json"

    def revision() -> int:
        try:
            return read_job(path).revision
        except FileNotFoundError:
            return -1

    wait_until(lambda: revision() == job.revision, timeout=15, what=f"status.json of {job.name}")
    return read_job(path)


def storage_waits(c: InProcessConductor, job_ids: list[str]) -> list[job_pb2.Job]:
    """Those of the jobs that GetJob shows QUEUED, waiting for storage to start."""
    jobs = [c.get(job_id) for job_id in job_ids]
    return [j for j in jobs if j.state == job_pb2.JOB_STATE_QUEUED and "storage" in j.reason]


def test_a_full_filesystem_refuses_what_it_cannot_record_and_runs_every_accepted_job_once(
    tmp_path: Path,
) -> None:
    ran = tmp_path / "ran"  # off the tmpfs: the jobs' own count of their starts
    with small_tmpfs(tmp_path / "fs", size="64m", inodes=4000) as fs:
        home = fs / "home"
        filler = fs / "filler"
        live: list[InProcessConductor] = []
        try:
            c = InProcessConductor(home, max_running=20).start()
            live.append(c)
            status_dir = c.status_dir
            filler.touch()
            inode_files = fs / "inodes"
            assert exhaust_inodes(inode_files) > 0
            assert free_inodes(fs) == 0

            # Inodes gone, blocks free: the registry can write, nothing can start.
            answers = [submit(c, f"inodes-{i:02d}", "inodes", ticker(ran)) for i in range(40)]
            accepted = [a for a in answers if not a.refused]
            assert accepted, f"no job was accepted with only the inodes gone: {answers}"
            wait_until(
                lambda: storage_waits(c, [a.job_id for a in accepted]),
                timeout=15,
                what="an accepted job to wait QUEUED for storage",
            )

            # Blocks gone too. Most specs are big, so recording them needs new pages;
            # every fifth is small and may still fit in what the registry has.
            exhaust_blocks(filler)
            both = [
                submit(c, f"full-{i:02d}", "both", ticker(ran), env=PAD if i % 5 else {}) for i in range(60)
            ]
            answers += both
            assert len(answers) == 100
            assert_answered_as_the_contract_says(answers)
            assert [a for a in both if a.refused], (
                "nothing was refused with the disk full: the test proves nothing"
            )
            accepted = [a for a in answers if not a.refused]
            refused_names = {a.name for a in answers if a.refused}

            # A refused job shows nowhere; every accepted one does; the server still answers.
            assert c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10).pid == os.getpid()
            listed = {j.name: j.id for j in all_jobs(c)}
            assert refused_names.isdisjoint(listed), "a refused job is listed"
            assert {a.name: a.job_id for a in accepted}.items() <= listed.items()
            assert refused_names.isdisjoint(j.name for j in snapshot(c)), "a refused job is in a snapshot"
            assert refused_names.isdisjoint(run_dirs(status_dir)), "a refused job has a run directory"

            # Space again (blocks first: no job starts where it could not write its log),
            # and no restart: what waited starts, new jobs are taken.
            filler.unlink()
            shutil.rmtree(inode_files)
            for i in range(5):
                deadline = time.monotonic() + 15
                answer = submit(c, f"after-{i}", "after", ticker(ran))
                while answer.refused and time.monotonic() < deadline:
                    assert_answered_as_the_contract_says([answer])
                    time.sleep(0.2)
                    answer = submit(c, f"after-{i}", "after", ticker(ran))
                assert not answer.refused, f"still refused 15 s after space was freed: {answer}"
                accepted.append(answer)

            for a in accepted:
                job = c.wait_ended(a.job_id, timeout=60)
                assert job.state == job_pb2.JOB_STATE_SUCCEEDED, job
            # Each accepted job ran exactly once, counted by the jobs themselves.
            assert Counter(ran.read_text().split()) == Counter({a.job_id: 1 for a in accepted})
            for a in accepted:
                job = c.get(a.job_id)
                published = wait_published(job)
                assert (published.id, published.state) == (job.id, job_pb2.JOB_STATE_SUCCEEDED)

            # After a restart: the same jobs, nothing of the refused ones, nothing run again.
            c.stop()
            live.remove(c)
            c = InProcessConductor(home, max_running=20).start()
            live.append(c)
            assert sorted(j.id for j in all_jobs(c)) == sorted(a.job_id for a in accepted)
            assert refused_names.isdisjoint(run_dirs(status_dir))
            changes = history(c)
            assert refused_names.isdisjoint(j.name for j in changes), "a refused job was in an event"
            waited = {
                j.id
                for j in changes
                if j.state == job_pb2.JOB_STATE_QUEUED and "waiting for storage" in j.reason
            }
            assert waited and waited <= {a.job_id for a in accepted}
            assert Counter(ran.read_text().split()) == Counter({a.job_id: 1 for a in accepted})
        finally:
            for c in live:
                c.stop()
            kill_job_groups(home / "status")


def refuse_for_storage(c: InProcessConductor | SubprocessConductor, name: str) -> grpc.RpcError:
    """Submit a job the full disk cannot take; the refusal."""
    spec = spec_yaml(name=name, command="true", env=PAD)
    with pytest.raises(grpc.RpcError) as caught:
        c.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec, request_id=f"req-{name}"), timeout=15)
    err = caught.value
    assert (err.code(), error_info_reason(err)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "STORAGE_FULL"), (
        err.code(),
        err.details(),
    )
    return err


def test_a_submission_refused_for_storage_leaves_no_status_file_and_no_job_after_a_restart(
    tmp_path: Path,
) -> None:
    # The status directory is off the tmpfs, where a phantom status.json could be written.
    status_dir = tmp_path / "status"
    with small_tmpfs(tmp_path / "fs", size="4m", inodes=1000) as fs:
        home = fs / "home"
        live: list[InProcessConductor] = []
        try:
            c = InProcessConductor(home, status_dir=status_dir).start()
            live.append(c)
            exhaust_blocks(fs / "filler")
            for i in range(3):
                refuse_for_storage(c, f"phantom-{i}")

            assert c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
            assert snapshot(c) == []
            info = c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
            assert list(info.job_counts) == []
            assert list(status_dir.rglob("*")) == [], "a refused job left something in the status directory"

            (fs / "filler").unlink()
            c.stop()
            live.remove(c)
            c = InProcessConductor(home, status_dir=status_dir).start()
            live.append(c)
            assert c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs == []
            assert snapshot(c) == []
            # Asked again, the same request ids make new jobs: nothing of the refused ones was kept.
            for i in range(3):
                spec = spec_yaml(name=f"phantom-{i}", command="true")
                c.submit(spec, request_id=f"req-phantom-{i}")
            assert len(c.stub.ListJobs(pb.ListJobsRequest(), timeout=10).jobs) == 3
        finally:
            for c in live:
                c.stop()
            kill_job_groups(home / "status")


def test_once_space_is_freed_an_idle_conductor_takes_new_jobs_again_without_a_restart(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "fs", size="4m", inodes=1000) as fs:
        c = InProcessConductor(fs / "home", status_dir=tmp_path / "status").start()
        try:
            exhaust_blocks(fs / "filler")
            refuse_for_storage(c, "too-big")
            (fs / "filler").unlink()
            # The registry tries again within 2 s; give it three times that.
            deadline = time.monotonic() + 6
            answer = submit(c, "small", "after", "true")
            while answer.refused and time.monotonic() < deadline:
                assert_answered_as_the_contract_says([answer])
                time.sleep(0.2)
                answer = submit(c, "small", "after", "true")
            assert not answer.refused, f"still refused 6 s after space was freed: {answer}"
            assert c.wait_ended(answer.job_id).state == job_pb2.JOB_STATE_SUCCEEDED
        finally:
            c.stop()


def test_a_watch_open_across_a_refused_submission_keeps_the_conductor_answering(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", size="8m", inodes=1000) as fs:
        # A subprocess, so a conductor that stops answering can still be killed;
        # its home is the mount itself, so its log (beside the home) is off the tmpfs.
        c = SubprocessConductor(fs)
        watch: Watch | None = None
        try:
            c.start()
            job = c.submit(spec_yaml(name="before", command="true"))
            assert c.wait_ended(job.id).state == job_pb2.JOB_STATE_SUCCEEDED
            watch = Watch(c)
            w = watch
            wait_until(
                lambda: any(ev.type == job_pb2.JOB_EVENT_TYPE_SNAPSHOT_END for ev in w.events),
                what="the snapshot's end",
            )
            exhaust_blocks(fs / "filler")
            refuse_for_storage(c, "too-big")
            seen = len(watch.events)
            time.sleep(7)  # past the watch's heartbeat (5 s)
            try:
                c.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=3)
            except grpc.RpcError as err:
                pytest.fail(f"the conductor stopped answering after the refusal: {err.code()}")
            assert any(ev.type == job_pb2.JOB_EVENT_TYPE_HEARTBEAT for ev in watch.events[seen:]), (
                "no heartbeat on the watch"
            )
        finally:
            (fs / "filler").unlink(missing_ok=True)
            if c.proc is not None and c.proc.poll() is None:
                c.kill9()
            c.stop()
            if watch is not None:
                watch.close()
            kill_job_groups(fs / "status")


def test_a_retry_with_no_room_to_start_waits_queued_then_runs_once_space_is_back(tmp_path: Path) -> None:
    """RUNNING -> QUEUED: the one change of state that only a full filesystem makes."""
    ran, gate = tmp_path / "ran", tmp_path / "gate"
    fail_once = (
        f'echo "$BATON_ATTEMPT" >> {shlex.quote(str(ran))}; [ "$BATON_ATTEMPT" = 2 ] && exit 0; '
        f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.02; done; exit 3"
    )
    with small_tmpfs(tmp_path / "fs", size="16m", inodes=1000) as fs:
        c = InProcessConductor(fs / "home", status_dir=tmp_path / "status").start()
        try:
            job = c.submit(spec_yaml(name="retry-full", command=fail_once, retries=1))
            c.wait_for(job.id, lambda j: ran.exists())
            exhaust_inodes(fs / "inodes")
            gate.touch()  # attempt 1 fails; attempt 2 finds no inode for its launch
            waiting = c.wait_for(job.id, lambda j: j.state == job_pb2.JOB_STATE_QUEUED, timeout=20)
            assert "waiting for storage" in waiting.reason and waiting.attempt == 2, waiting
            shutil.rmtree(fs / "inodes")
            done = c.wait_ended(job.id, timeout=30)
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED and done.attempt == 2, done
            assert ran.read_text().split() == ["1", "2"], "each attempt ran once"
        finally:
            c.stop()
            kill_job_groups(tmp_path / "status")


def test_a_job_that_ends_on_a_disk_with_no_blocks_left_keeps_its_exit_code(tmp_path: Path) -> None:
    """No room even for the few bytes of an exit record: the supervisor's exit status tells it."""
    gate = tmp_path / "gate"
    wait_gate = f"while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.02; done; exit 7"
    with small_tmpfs(tmp_path / "fs", size="16m", inodes=1000) as fs:
        c = InProcessConductor(fs / "home", status_dir=tmp_path / "status").start()
        try:
            job = c.submit(spec_yaml(name="no-blocks", command=wait_gate))
            c.wait_for(job.id, lambda j: j.state == job_pb2.JOB_STATE_RUNNING and j.external_id != "")
            (fs / "filler").touch()
            exhaust_blocks(fs / "filler")
            gate.touch()
            records = c.home / "state" / "launches" / job.id / "1"
            wait_until(lambda: (records / "exit").exists(), what="the supervisor to end")
            assert (records / "job.exit").read_text() == "", "the disk really had no room for the record"
            (fs / "filler").unlink()  # room again, so the end can be recorded in the registry
            done = c.wait_ended(job.id, timeout=30)
            assert done.state == job_pb2.JOB_STATE_FAILED and done.exit_code == 7, done
        finally:
            c.stop()
            kill_job_groups(tmp_path / "status")
