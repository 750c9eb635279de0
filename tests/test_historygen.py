"""The history generator (bench/history.py) makes what the conductor makes.

Jobs of every ended kind are made through the API on one conductor; a history
is generated into another home; then the two are compared, ignoring ids,
times and other values: the registry's rows (columns, their types, the
runtime notes, the events each job logged), the files and directories of
each run with their modes, status.json, and what GetJob, ListJobs and
GetConductorInfo answer once a conductor serves the generated history. Any
drift of the generator from the conductor (a field the lifecycle starts to
set, a column, a file, an event) fails here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format

from baton.common import checkpointdirs, runsummary
from baton.common.jobfile import job_to_json
from baton.common.jobs import FINAL_STATES
from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from baton.viewer_api import scan
from bench.history import RARE_KEY, History, generate
from tests.harness import InProcessConductor

S = job_pb2
Factory = Callable[..., InProcessConductor]
GENERATED = 1000
# (state, step count, the step it ended in, whether it ever started, whether a signal ended it)
Kind = tuple[int, int, int, bool, bool]


def kind_of(job: job_pb2.Job) -> Kind:
    return (job.state, job.step_count, job.step, job.HasField("start_time"), job.HasField("signal"))


def shape(value: Any) -> Any:
    """Keys and value types, recursively; the spec left out (it is the spec code's, not ours)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items() if k != "spec"}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def job_shape(job: job_pb2.Job) -> Any:
    # Every field, set or not, so values (a log of 0 bytes, exit code 0) cannot change the shape.
    return shape(json_format.MessageToDict(job, always_print_fields_with_no_presence=True))


class Home:
    """What one conductor home holds, read back from the registry and the trees."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.status = home / "status"
        self.checkpoints = home / "checkpoints"
        conn = sqlite3.connect(home / "state" / "registry.db")
        try:
            self.columns = {
                # name, type, not null
                table: [(r[1], r[2], r[3]) for r in conn.execute(f"PRAGMA table_info({table})")]
                for table in ("jobs", "events")
            }
            names = [c[0] for c in self.columns["jobs"]]
            typeofs = ", ".join(f"typeof({n})" for n in names)
            self.rows: dict[str, dict[str, Any]] = {}
            self.row_types: dict[str, tuple[str, ...]] = {}
            for row in conn.execute(f"SELECT {', '.join(names)}, {typeofs} FROM jobs ORDER BY seq"):
                values = dict(zip(names, row[: len(names)], strict=True))
                self.rows[values["id"]] = values
                self.row_types[values["id"]] = tuple(row[len(names) :])
            enames = [c[0] for c in self.columns["events"]]
            etypes = ", ".join(f"typeof({n})" for n in enames)
            self.events: dict[str, list[tuple[int, int, job_pb2.Job]]] = {}
            self.event_types: set[tuple[str, ...]] = set()
            query = f"SELECT revision, job_id, type, job, {etypes} FROM events ORDER BY revision"
            for row in conn.execute(query):
                revision, job_id, kind, blob = row[:4]
                self.event_types.add(tuple(row[4:]))
                self.events.setdefault(job_id, []).append((revision, kind, job_pb2.Job.FromString(blob)))
        finally:
            conn.close()

    def job(self, job_id: str) -> job_pb2.Job:
        return job_pb2.Job.FromString(self.rows[job_id]["job"])

    def by_kind(self) -> dict[Kind, list[str]]:
        out: dict[Kind, list[str]] = {}
        for job_id in self.rows:
            out.setdefault(kind_of(self.job(job_id)), []).append(job_id)
        return out

    def files(self, job: job_pb2.Job) -> dict[str, tuple[str, int]]:
        """Every entry of the job's run and checkpoint directories: kind and mode, by place."""
        out: dict[str, tuple[str, int]] = {}
        for label, top in (("run", Path(job.run_dir)), ("checkpoints", Path(job.checkpoint_dir))):
            if not top.exists():
                continue
            out[label] = ("dir", stat.S_IMODE(top.stat().st_mode))
            for entry in sorted(top.rglob("*")):
                st = entry.lstat()
                what = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
                out[f"{label}/{entry.relative_to(top)}"] = (what, stat.S_IMODE(st.st_mode))
        return out

    def tree_modes(self) -> set[tuple[str, int]]:
        """Modes of the roots and of the project, group and name directories above the runs."""
        out = set()
        for root in (self.status, self.checkpoints):
            out.add(("root", stat.S_IMODE(root.stat().st_mode)))
            for depth, pattern in enumerate(("*", "*/*", "*/*/*"), start=1):
                out.update((f"level{depth}", stat.S_IMODE(p.stat().st_mode)) for p in root.glob(pattern))
        return out


def assert_line_reads_as_file(entry: runsummary.Entry, run_dir: str) -> None:
    """A run's summary line gives the viewer exactly what a read of its status.json gives (all
    but the bytes, which a cold start does not keep), and names that file."""
    key: scan.RunKey = Path(run_dir).parts[-4:]  # type: ignore[assignment]
    path = Path(run_dir) / "status.json"
    st = path.stat()
    from_file = scan.parse_run(key, path.read_bytes(), hash((st.st_ino, st.st_mtime_ns, st.st_size)))
    assert scan.summarized_run(key, entry) == from_file._replace(raw=b""), run_dir
    assert from_file.create_ts > 0


def assert_summarized(home: Home) -> None:
    """Every ended run has the last line for it in its job directory's summary, which reads as
    its status.json does; and one in its checkpoint directory's job
    directory, when it was launched."""
    summaries: dict[str, dict[str, runsummary.Entry]] = {}
    ck_summaries: dict[str, dict[str, list[checkpointdirs.Checkpoint]]] = {}
    ended = ck_ended = 0
    for job_id in home.rows:
        job = home.job(job_id)
        job_dir = os.path.dirname(job.run_dir)
        entry = summaries.setdefault(job_dir, runsummary.read(job_dir)).get(job.id)
        if job.state not in FINAL_STATES:
            assert entry is None, job.id
            continue
        ended += 1
        assert entry is not None, f"{job.id} has no line in its job's summary"
        assert_line_reads_as_file(entry, job.run_dir)
        if job.HasField("start_time"):
            # A launched run's checkpoint directory has its line too, with what a scan finds there.
            ck_dir = os.path.dirname(job.checkpoint_dir)
            lines = ck_summaries.setdefault(ck_dir, runsummary.read_checkpoints(ck_dir))
            assert lines.get(job.run_id) == checkpointdirs.run_checkpoints(job.checkpoint_dir) == [], job.id
            ck_ended += 1
    assert ended and ck_ended


def runtime_shape(text: str) -> Any:
    return shape(json.loads(text))


def event_story(events: list[tuple[int, int, job_pb2.Job]]) -> list[tuple[int, int, int, bool, int]]:
    """What each logged change of a job was: type, state, step, whether it had a process id, step states."""
    return [
        (kind, job.state, job.step, bool(job.external_id), hash(tuple(s.state for s in job.steps)))
        for _, kind, job in events
    ]


def make_through_the_api(conductor: InProcessConductor) -> None:
    """One job of each ended kind the generator makes: one step or several, ended each way."""
    spec = "name: {name}\nproject: shape\ngroup: api\n"
    ids = [
        conductor.submit(spec.format(name="single") + "command: echo hi\n").id,
        conductor.submit(spec.format(name="failing") + "command: exit 3\n").id,
        conductor.submit(spec.format(name="killed") + "command: kill -9 $$\n").id,
        conductor.submit(
            spec.format(name="two")
            + "steps:\n  - name: prepare\n    command: echo a\n  - name: train\n    command: echo b\n"
        ).id,
        conductor.submit(
            spec.format(name="three")
            + "steps:\n  - name: prepare\n    command: echo a\n  - name: train\n    command: exit 2\n"
            + "  - name: report\n    command: echo c\n"
        ).id,
    ]
    for job_id in ids:
        conductor.wait_ended(job_id)
    running = conductor.submit(spec.format(name="stopped") + "command: sleep 100\n").id
    conductor.wait_for(running, "RUNNING")
    # Behind it (one job at a time): cancelled before it ever starts.
    queued = conductor.submit(spec.format(name="never") + "command: echo never\n").id
    grace = duration_pb2.Duration(seconds=2)
    for job_id in (queued, running):
        conductor.stub.CancelJob(pb.CancelJobRequest(job_id=job_id, grace_period=grace), timeout=10)
    for job_id in (queued, running):
        assert conductor.wait_ended(job_id).state == S.JOB_STATE_CANCELLED


def list_all(conductor: InProcessConductor, **filters: Any) -> list[job_pb2.Job]:
    out: list[job_pb2.Job] = []
    token = ""
    while True:
        resp = conductor.stub.ListJobs(
            pb.ListJobsRequest(page_size=1000, page_token=token, **filters), timeout=30
        )
        out.extend(resp.jobs)
        token = resp.next_page_token
        if not token:
            return out


def test_a_generated_history_has_the_shape_of_jobs_made_through_the_api(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    api_conductor = conductor_factory(home=tmp_path / "api", max_running=1)
    make_through_the_api(api_conductor)
    api_answers = {j.id: j for j in list_all(api_conductor)}
    api_conductor.stop()  # everything written: registry and status files
    api = Home(api_conductor.home)

    history = generate(tmp_path / "gen", GENERATED, seed=3, workers=1)
    gen = Home(history.home)
    assert len(gen.rows) == history.jobs == GENERATED

    # -- the registry: same tables, same columns, each filled with values of the same type
    assert gen.columns == api.columns
    assert set(gen.row_types.values()) == set(api.row_types.values()), "jobs rows differ in column types"
    assert gen.event_types == api.event_types

    api_kinds, gen_kinds = api.by_kind(), gen.by_kind()
    assert len(api_kinds) == 7, sorted(api_kinds)
    missing = set(api_kinds) - set(gen_kinds)
    assert not missing, f"the generator no longer makes jobs of these kinds: {sorted(missing)}"
    # Kinds made here that the API part does not make (it would take many more
    # jobs) have parts it covers: a third step, an end in another step of several.
    assert all(k[1] > 1 for k in set(gen_kinds) - set(api_kinds)), sorted(set(gen_kinds) - set(api_kinds))

    for kind, api_ids in api_kinds.items():
        want = api.job(api_ids[0])
        want_row = api.rows[api_ids[0]]
        for job_id in gen_kinds[kind][:20]:
            job = gen.job(job_id)
            row = gen.rows[job_id]
            where = f"kind {kind}, generated {job_id}, API {want.id}"
            assert job_shape(job) == job_shape(want), where
            assert row["state"] == job.state and row["revision"] == job.revision and row["seq"] >= 1, where
            assert row["request_id"] is None and want_row["request_id"] is None
            assert runtime_shape(row["runtime"]) == runtime_shape(want_row["runtime"]), where
            assert json.loads(row["runtime"])["handle"] is None, where
            # The changes the conductor logged for it, one event each, in order, the last one the job.
            story, want_story = gen.events[job_id], api.events[want.id]
            assert event_story(story) == event_story(want_story), where
            assert [r for r, _, _ in story] == sorted(r for r, _, _ in story)
            assert story[-1][0] == job.revision and story[-1][2] == job, where
            assert want_story[-1][2] == want, "the API's last event is its job"
            # The same files and directories, with the same modes.
            assert gen.files(job) == api.files(want), where
            assert Path(job.run_dir) == gen.status / job.project / job.group / job.name / job.run_id
            assert job.id == job.run_id
            status = (Path(job.run_dir) / "status.json").read_bytes()
            assert status == job_to_json(job).encode(), where
            if job.HasField("start_time"):
                marker = json.loads((Path(job.checkpoint_dir) / ".baton-run").read_text())
                assert marker == {"job_id": job.id, "run_id": job.id}
                assert (Path(job.run_dir) / "output.log").stat().st_size == max(
                    [s.log_end for s in job.steps] + [0]
                ), where
    for job_id in api.rows:
        job = api.job(job_id)
        assert (Path(job.run_dir) / "status.json").read_bytes() == job_to_json(job).encode()
        assert api_answers[job_id] == job
    assert gen.tree_modes() == api.tree_modes()
    # Both leave each ended run's line in its job directory's summary.
    assert_summarized(api)
    assert_summarized(gen)

    # Nothing else in the generated trees: every entry belongs to one of its jobs.
    run_dirs = {Path(gen.job(i).run_dir) for i in gen.rows}
    assert {p for p in gen.status.glob("*/*/*/*") if p.name != runsummary.SUMMARY_FILE} == run_dirs
    ckpt_dirs = {Path(gen.job(i).checkpoint_dir) for i in gen.rows if gen.job(i).HasField("start_time")}
    assert {p for p in gen.checkpoints.glob("*/*/*/*") if p.name != runsummary.SUMMARY_FILE} == ckpt_dirs

    check_served(conductor_factory, history, gen, api_answers)


def check_served(
    conductor_factory: Factory, history: History, gen: Home, api_answers: dict[str, job_pb2.Job]
) -> None:
    """A conductor on the generated home serves it as its own history."""
    conductor = conductor_factory(home=history.home, max_running=1)
    info = conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert info.damaged_registry_rows == 0
    assert info.revision == history.max_revision
    assert {c.state: c.count for c in info.job_counts} == dict(history.state_counts)
    assert info.running_jobs == 0

    listed = list_all(conductor)
    assert [j.id for j in listed] == history.ids[::-1], "ListJobs: newest first, in submission order"
    times = [j.create_time.ToNanoseconds() for j in listed]
    assert times == sorted(times, reverse=True)
    shapes = {kind_of(j): job_shape(j) for j in api_answers.values()}
    for job in listed:
        assert job == gen.job(job.id)
        assert conductor.get(job.id) == job
        if kind_of(job) in shapes:
            assert job_shape(job) == shapes[kind_of(job)], job.id

    # Filters find what the generator says it made.
    projects = history.projects()
    project, count = projects.most_common(1)[0]
    assert len(list_all(conductor, project=project)) == count
    assert len(list_all(conductor, project=RARE_KEY[0], group=RARE_KEY[1], name=RARE_KEY[2])) == (
        history.key_counts[RARE_KEY]
    )
    for state, n in history.state_counts.items():
        assert len(list_all(conductor, states=[state])) == n
    assert list_all(conductor, project="no-such-project") == []
    assert list_all(conductor, states=[S.JOB_STATE_RUNNING]) == []
    names = Counter(name for (_, _, name) in history.key_counts.elements())
    name, n = names.most_common(1)[0]
    assert len(list_all(conductor, name=name)) == n

    # A job made now comes after the history: next in order, next revision,
    # and a watch from a recent revision finds the history's changes kept.
    new = conductor.submit("name: after\ncommand: 'true'\n")
    assert new.revision == history.max_revision + 1
    assert list_all(conductor)[0].id == new.id
    last = history.max_revision
    stream = conductor.stub.WatchJobs(pb.WatchJobsRequest(since_revision=last - 3), timeout=10)
    seen = []
    try:
        for resp in stream:
            seen.extend(e.revision for e in resp.events if e.job.id)
            if new.revision in seen:
                break
    except grpc.RpcError as err:
        raise AssertionError(f"watching from a revision the history kept: {err}") from None
    finally:
        stream.cancel()
    assert seen[:4] == [last - 2, last - 1, last, new.revision]
    assert os.path.isdir(new.run_dir)
