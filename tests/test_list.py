"""ListJobs: filters, pagination (newest first, each job once) and bad page requests."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.checks import bad_request_fields, wait_until
from tests.harness import FINAL_STATES, InProcessConductor, kill_job_groups, state

Factory = Callable[..., InProcessConductor]

# (project, group, name, command), in submission order. With max_running=1 they run
# one by one: the ten short ones end, "hold" keeps running, "last" waits QUEUED.
POPULATION = [
    ("a", "x", "train", "true"),
    ("a", "x", "eval", "exit 1"),
    ("a", "y", "train", "true"),
    ("b", "x", "train", "true"),
    ("a", "x", "train", "exit 1"),
    ("b", "y", "eval", "true"),
    ("a", "x", "train", "true"),
    ("b", "x", "train", "exit 1"),
    ("a", "y", "eval", "true"),
    ("a", "x", "eval", "true"),
    ("b", "x", "hold", "sleep 600"),
    ("a", "x", "last", "true"),
]


@dataclass
class Population:
    conductor: InProcessConductor
    jobs: list[job_pb2.Job]  # as they stand once settled, in submission order

    def expected(self, req: pb.ListJobsRequest) -> list[str]:
        """Ids the filters of ``req`` match, newest first."""
        return [
            j.id
            for j in reversed(self.jobs)
            if (not req.project or j.project == req.project)
            and (not req.group or j.group == req.group)
            and (not req.name or j.name == req.name)
            and (not req.states or j.state in req.states)
        ]


@pytest.fixture(scope="module")
def population(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Population]:
    c = InProcessConductor(tmp_path_factory.mktemp("list") / "home", max_running=1).start()
    try:
        submitted = [
            c.submit(f"name: {name}\nproject: {project}\ngroup: {group}\ncommand: '{cmd}'\n")
            for project, group, name, cmd in POPULATION
        ]
        for job in submitted[:-2]:
            c.wait_ended(job.id)
        c.wait_for(submitted[-2].id, lambda j: j.state == state("running") and j.external_id != "")
        jobs = [c.get(j.id) for j in submitted]
        assert jobs[-1].state == state("queued")
        assert {j.state for j in jobs} == {
            state("succeeded"),
            state("failed"),
            state("running"),
            state("queued"),
        }
        yield Population(c, jobs)
    finally:
        c.stop()
        kill_job_groups(c.status_dir)


def walk(c: InProcessConductor, req: pb.ListJobsRequest, page_size: int) -> list[str]:
    """Every id over all pages; checks that only the last page lacks a next token."""
    ids: list[str] = []
    token = ""
    for _ in range(1000):
        page = pb.ListJobsRequest()
        page.CopyFrom(req)
        page.page_size = page_size
        page.page_token = token
        resp = c.stub.ListJobs(page, timeout=10)
        limit = page_size if page_size > 0 else 100
        assert len(resp.jobs) <= limit
        ids.extend(j.id for j in resp.jobs)
        token = resp.next_page_token
        if not token:
            return ids
        assert resp.jobs, "a page with a next token must not be empty"
    raise AssertionError("pagination never ended")


S = job_pb2
FILTERS = {
    "all": pb.ListJobsRequest(),
    "project": pb.ListJobsRequest(project="a"),
    "other-project": pb.ListJobsRequest(project="b"),
    "group": pb.ListJobsRequest(group="x"),
    "name": pb.ListJobsRequest(name="train"),
    "project+group": pb.ListJobsRequest(project="a", group="x"),
    "project+group+name": pb.ListJobsRequest(project="a", group="x", name="train"),
    "group+name": pb.ListJobsRequest(group="y", name="train"),
    "state": pb.ListJobsRequest(states=[S.JOB_STATE_SUCCEEDED]),
    "states": pb.ListJobsRequest(states=[S.JOB_STATE_FAILED, S.JOB_STATE_RUNNING]),
    "queued": pb.ListJobsRequest(states=[S.JOB_STATE_QUEUED]),
    "project+state": pb.ListJobsRequest(project="a", states=[S.JOB_STATE_FAILED]),
    "name+states": pb.ListJobsRequest(name="train", states=[S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED]),
    "no-such-project": pb.ListJobsRequest(project="nope"),
    "no-job-in-state": pb.ListJobsRequest(states=[S.JOB_STATE_CANCELLED]),
    "empty-combination": pb.ListJobsRequest(project="b", name="last"),
}


@pytest.mark.parametrize("page_size", [1, 3, 100, 0, 5000])
@pytest.mark.parametrize("filters", list(FILTERS), ids=list(FILTERS))
def test_filters_and_pages_give_exactly_the_matching_jobs(
    population: Population, filters: str, page_size: int
) -> None:
    req = FILTERS[filters]
    want = population.expected(req)

    got = walk(population.conductor, req, page_size)

    assert got == want, "every matching job once, newest first"


def test_expectations_are_not_trivial(population: Population) -> None:
    # Guards the table above: each filter must leave some jobs out, most must keep some.
    total = len(population.jobs)
    sizes = {name: len(population.expected(req)) for name, req in FILTERS.items()}
    assert sizes["all"] == total == len(POPULATION)
    assert all(n < total for name, n in sizes.items() if name != "all")
    assert sizes["no-such-project"] == sizes["no-job-in-state"] == sizes["empty-combination"] == 0
    assert sizes["project+group+name"] == 3
    assert sizes["states"] == 4


def test_jobs_come_newest_first_with_their_state(population: Population) -> None:
    resp = population.conductor.stub.ListJobs(pb.ListJobsRequest(), timeout=10)
    assert [j.id for j in resp.jobs] == [j.id for j in reversed(population.jobs)]
    assert resp.next_page_token == ""
    by_id = {j.id: j for j in population.jobs}
    for job in resp.jobs:
        assert job.state == by_id[job.id].state
        assert (job.project, job.group, job.name) == (
            by_id[job.id].project,
            by_id[job.id].group,
            by_id[job.id].name,
        )


def test_a_page_exactly_as_large_as_the_matches_has_no_next_token(population: Population) -> None:
    req = pb.ListJobsRequest(project="a", group="x", name="train", page_size=3)
    resp = population.conductor.stub.ListJobs(req, timeout=10)
    assert len(resp.jobs) == 3
    assert resp.next_page_token == ""


def test_negative_page_size_is_invalid_argument(population: Population) -> None:
    with pytest.raises(grpc.RpcError) as err:
        population.conductor.stub.ListJobs(pb.ListJobsRequest(page_size=-1), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in bad_request_fields(err.value)


def _b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!not base64!!!",
        _b64([1, 2, 3]),
        _b64({"f": "0000000000000000", "p": 3}),
        _b64("a string"),
        "x" * 400,
    ],
)
def test_garbage_page_token_is_invalid_argument(population: Population, token: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        population.conductor.stub.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad_request_fields(err.value)


@pytest.mark.parametrize(
    "changed",
    [
        pb.ListJobsRequest(project="b"),
        pb.ListJobsRequest(project="a", group="x"),
        pb.ListJobsRequest(project="a", name="train"),
        pb.ListJobsRequest(project="a", states=[S.JOB_STATE_SUCCEEDED]),
        pb.ListJobsRequest(),
    ],
    ids=["other-project", "added-group", "added-name", "added-state", "dropped-filter"],
)
def test_page_token_reused_with_other_filters_is_invalid_argument(
    population: Population, changed: pb.ListJobsRequest
) -> None:
    c = population.conductor
    first = c.stub.ListJobs(pb.ListJobsRequest(project="a", page_size=2), timeout=10)
    assert first.next_page_token
    req = pb.ListJobsRequest()
    req.CopyFrom(changed)
    req.page_size = 2
    req.page_token = first.next_page_token
    with pytest.raises(grpc.RpcError) as err:
        c.stub.ListJobs(req, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad_request_fields(err.value)


def test_page_token_with_the_same_filters_in_another_order_of_states(population: Population) -> None:
    c = population.conductor
    states = [S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED]
    first = c.stub.ListJobs(pb.ListJobsRequest(states=states, page_size=2), timeout=10)
    second = c.stub.ListJobs(
        pb.ListJobsRequest(states=list(reversed(states)), page_size=100, page_token=first.next_page_token),
        timeout=10,
    )
    want = population.expected(pb.ListJobsRequest(states=states))
    assert [j.id for j in first.jobs] + [j.id for j in second.jobs] == want


def test_pages_stay_consistent_while_jobs_are_added_and_deleted(
    conductor_factory: Factory, tmp_path: Path
) -> None:
    c = conductor_factory(max_running=4)
    jobs = [c.submit(f"name: page{i}\ncommand: 'true'\n") for i in range(7)]
    for job in jobs:
        c.wait_ended(job.id)
    newest_first = [j.id for j in reversed(jobs)]

    first = c.stub.ListJobs(pb.ListJobsRequest(page_size=3), timeout=10)
    assert [j.id for j in first.jobs] == newest_first[:3]
    # A new job and the deletion of the last job sent must not shift the next pages.
    added = c.submit("name: page-new\ncommand: 'true'\n")
    c.stub.DeleteJob(pb.DeleteJobRequest(job_id=newest_first[2]), timeout=10)
    second = c.stub.ListJobs(pb.ListJobsRequest(page_size=3, page_token=first.next_page_token), timeout=10)
    assert [j.id for j in second.jobs] == newest_first[3:6]
    c.stub.DeleteJob(pb.DeleteJobRequest(job_id=newest_first[6]), timeout=10)
    third = c.stub.ListJobs(pb.ListJobsRequest(page_size=3, page_token=second.next_page_token), timeout=10)
    assert [j.id for j in third.jobs] == []
    assert third.next_page_token == ""
    wait_until(lambda: c.get(added.id).state in FINAL_STATES, "the added job to end")
