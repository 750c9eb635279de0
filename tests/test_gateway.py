"""``baton gateway`` as a user meets it: a real gateway process over HTTP in front of a
real conductor and viewer. Every fixed route, the error mapping (HTTP status and
google.rpc.Status body), logs and watches as server-sent events resumed with
Last-Event-ID across forced disconnects, a reader that stops reading, and tokens
carried through (header, or the dashboard's cookie with its origin check)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from tests.gateway_harness import Event, EventStream, GatewayProcess, Http
from tests.harness import REPO
from tests.services import PY, Stack, lines_job, spec, stack
from tests.test_roles import TOKENS, standard_tokens


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, GatewayProcess]]:
    home = tmp_path_factory.mktemp("gateway")
    with stack(home / "home") as s:
        gateway = GatewayProcess(home, s.address, s.viewer_address)
        try:
            yield s, gateway
        finally:
            gateway.stop()


@pytest.fixture
def web(served: tuple[Stack, GatewayProcess]) -> Http:
    return Http(served[1].address)


def submit(
    web: Http, name: str, command: str, request: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    return dict(web.ok("POST", "/v1/jobs", {"specYaml": spec(name, command, **fields), **(request or {})}))


def wait_state(web: Http, job_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = web.ok("GET", f"/v1/jobs/{job_id}")
        if job["state"] in states:
            return dict(job)
        assert time.monotonic() < deadline, f"{job_id} still {job['state']}, wanted {states}"
        time.sleep(0.05)


def status_body(reply: Any) -> dict[str, Any]:
    body = reply.json()
    assert set(body) <= {"code", "message", "details"}, body
    return dict(body)


def reason(body: dict[str, Any]) -> str:
    infos = [d for d in body.get("details", []) if d["@type"].endswith("google.rpc.ErrorInfo")]
    return str(infos[0]["reason"]) if infos else ""


def fields_at_fault(body: dict[str, Any]) -> list[str]:
    bad = [d for d in body.get("details", []) if d["@type"].endswith("google.rpc.BadRequest")]
    return [v["field"] for b in bad for v in b["fieldViolations"]]


# -- the fixed routes ---------------------------------------------------------


def test_the_job_routes_submit_get_list_pause_resume_cancel_delete(web: Http) -> None:
    job = submit(web, "routes", "sleep 30", project="http")
    assert job["state"] in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING") and job["project"] == "http"
    assert web.ok("GET", f"/v1/jobs/{job['id']}")["id"] == job["id"]
    wait_state(web, job["id"], "JOB_STATE_RUNNING")

    paused = web.ok("POST", f"/v1/jobs/{job['id']}:pause", {"mode": "PAUSE_MODE_SUSPEND"})
    assert paused["state"] in ("JOB_STATE_PAUSING", "JOB_STATE_PAUSED")
    wait_state(web, job["id"], "JOB_STATE_PAUSED")
    assert web.ok("POST", f"/v1/jobs/{job['id']}:resume")["state"] in (
        "JOB_STATE_RUNNING",
        "JOB_STATE_QUEUED",
    )
    wait_state(web, job["id"], "JOB_STATE_RUNNING")
    cancelled = web.ok("POST", f"/v1/jobs/{job['id']}:cancel", {"gracePeriod": "1s", "reason": "over HTTP"})
    assert cancelled["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    wait_state(web, job["id"], "JOB_STATE_CANCELLED")

    listed = web.ok("GET", "/v1/jobs?project=http&states=JOB_STATE_CANCELLED&page_size=1")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    deleted = web.ok("DELETE", f"/v1/jobs/{job['id']}")
    assert deleted["jobId"] == job["id"] and int(deleted["revision"]) > 0
    assert web.get(f"/v1/jobs/{job['id']}").status == 404


def test_list_pages_newest_first_with_filters(web: Http) -> None:
    ids = [submit(web, f"page-{i}", "true", project="paging")["id"] for i in range(5)]
    for job_id in ids:
        wait_state(web, job_id, "JOB_STATE_SUCCEEDED")
    seen: list[str] = []
    token = ""
    while True:
        page = web.ok(
            "GET", f"/v1/jobs?project=paging&states=JOB_STATE_SUCCEEDED&page_size=2&page_token={token}"
        )
        seen += [j["id"] for j in page["jobs"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == list(reversed(ids))
    both = web.ok("GET", "/v1/jobs?project=paging&states=JOB_STATE_FAILED&states=JOB_STATE_SUCCEEDED")
    assert len(both["jobs"]) == 5


def test_steps_info_health_and_the_viewer_routes(web: Http, served: tuple[Stack, GatewayProcess]) -> None:
    job = submit(web, "viewed", "echo hello from a step", project="view", group="g")
    wait_state(web, job["id"], "JOB_STATE_SUCCEEDED")
    step = web.ok("GET", f"/v1/jobs/{job['id']}/steps/1?tail_lines=5")
    assert b"hello from a step" in base64.b64decode(step["tail"])
    info = web.ok("GET", "/v1/conductor:info")
    assert info["version"] and info["caller"] == {"role": "admin"}
    assert web.get(f"/v1/jobs/{job['id']}/health").status == 200

    deadline = time.monotonic() + 10
    while not any(j["id"] == job["id"] for j in web.ok("GET", "/v1/viewer/jobs?project=view")["jobs"]):
        assert time.monotonic() < deadline, "the viewer never listed the job"
        time.sleep(0.05)
    assert web.ok("GET", f"/v1/viewer/jobs/{job['id']}")["id"] == job["id"]
    assert web.ok("GET", f"/v1/viewer/runs/view/g/viewed/{job['runId']}")["id"] == job["id"]
    assert [j["id"] for j in web.ok("GET", "/v1/viewer/runs/view/g/viewed")["jobs"]] == [job["id"]]
    assert "view" in [p["project"] for p in web.ok("GET", "/v1/viewer/projects")["projects"]]
    stats = web.ok("GET", "/v1/viewer/stats?project=view")
    assert int(stats["totalRuns"]) == 1
    assert job["id"] in [j["id"] for j in web.ok("GET", "/v1/viewer/recent?hours=1&limit=50")["jobs"]]
    web.ok("GET", "/v1/viewer/running?include_stale=true&stale_after=60s")
    assert web.ok("GET", "/v1/viewer/checkpoints?project=view") == {}
    assert web.ok("GET", "/v1/viewer/checkpoints:stats?project=view") == {}
    read = web.ok("GET", f"/v1/viewer/jobs/{job['id']}/logs:read")
    assert base64.b64decode(read["data"]) == b"hello from a step\n"
    tail = web.ok("GET", f"/v1/viewer/jobs/{job['id']}/logs:tail?tail_lines=1")
    assert b"hello from a step" in base64.b64decode(tail["data"])


def test_openapi_describes_every_route_and_health_answers(
    web: Http, served: tuple[Stack, GatewayProcess]
) -> None:
    document = web.ok("GET", "/openapi.json")
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path, verb in [("/v1/jobs", "post"), ("/v1/jobs", "get"), ("/v1/jobs/{job_id}", "get"),
                       ("/v1/jobs/{job_id}:pause", "post"), ("/v1/jobs/{job_id}:resume", "post"),
                       ("/v1/jobs/{job_id}:cancel", "post"), ("/v1/jobs/{job_id}", "delete"),
                       ("/v1/jobs/{job_id}/steps/{step}", "get"), ("/v1/conductor:info", "get"),
                       ("/v1/viewer/jobs", "get"), ("/v1/viewer/stats", "get"),
                       ("/v1/jobs/{job_id}/logs", "get"), ("/v1/jobs:watch", "get")]:  # fmt: skip
        assert verb in paths.get(path, {}), (verb, path)
    refs = json.dumps(document)
    for name in [n for n in document["components"]["schemas"]]:
        assert f"#/components/schemas/{name}" in refs
    assert web.ok("GET", "/healthz") == {"status": "SERVING"}
    ready = web.ok("GET", "/readyz")
    assert ready == {"status": "SERVING", "conductor": "SERVING", "viewer": "SERVING"}


# -- errors -------------------------------------------------------------------


def test_errors_carry_the_mapped_http_status_and_the_status_details(web: Http) -> None:
    missing = web.get("/v1/jobs/20000101-000000-abcdef")
    body = status_body(missing)
    assert missing.status == 404 and body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert reason(body) == "JOB_NOT_FOUND"

    bad_spec = web.post("/v1/jobs", {"specYaml": "name: x\n"})
    assert bad_spec.status == 400 and reason(status_body(bad_spec)) == "INVALID_ARGUMENT"
    assert fields_at_fault(status_body(bad_spec))

    unknown_field = web.post("/v1/jobs", {"specYaml": spec("x", "true"), "colour": "red"})
    assert unknown_field.status == 400 and "colour" in status_body(unknown_field)["message"]
    not_json = web.post("/v1/jobs", b"{not json")
    assert not_json.status == 400 and fields_at_fault(status_body(not_json)) == ["body"]
    bad_query = web.get("/v1/jobs?page_size=many")
    assert bad_query.status == 400 and fields_at_fault(status_body(bad_query)) == ["page_size"]
    unknown_query = web.get("/v1/jobs?colour=red")
    assert unknown_query.status == 400 and fields_at_fault(status_body(unknown_query)) == ["colour"]
    negative = web.get("/v1/jobs?page_size=-1")
    assert negative.status == 400 and reason(status_body(negative)) == "INVALID_ARGUMENT"

    job = submit(web, "once", "true", {"requestId": "http-request-1"})
    again = web.post("/v1/jobs", {"specYaml": spec("other", "true"), "requestId": "http-request-1"})
    assert again.status == 409 and reason(status_body(again)) == "REQUEST_ID_REUSED"
    wait_state(web, job["id"], "JOB_STATE_SUCCEEDED")
    ended = web.post(f"/v1/jobs/{job['id']}:resume")
    assert ended.status == 400 and status_body(ended)["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    conflict = web.post(f"/v1/jobs/{job['id']}:cancel", {"jobId": "20000101-000000-abcdef"})
    assert conflict.status == 400 and fields_at_fault(status_body(conflict)) == ["job_id"]

    wrong_method = web.call("PUT", f"/v1/jobs/{job['id']}")
    assert wrong_method.status == 405 and wrong_method.headers["allow"] == "DELETE, GET"
    assert status_body(wrong_method)["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]
    nowhere = web.get("/v1/nowhere")
    assert nowhere.status == 404 and reason(status_body(nowhere)) == "ROUTE_NOT_FOUND"
    # The gateway is still up and answering.
    assert web.ok("GET", "/healthz")["status"] == "SERVING"


# -- server-sent events: logs -------------------------------------------------


def _log_bytes(events: list[Event]) -> bytes:
    return b"".join(base64.b64decode(e.json().get("data", "")) for e in events if e.event == "message")


def test_log_events_resume_exactly_across_forced_disconnects(
    web: Http, served: tuple[Stack, GatewayProcess]
) -> None:
    # Bytes that are not UTF-8 and lines of every length: the events must carry them exactly.
    code = (
        "import sys, time\n"
        "for i in range(120):\n"
        "    sys.stdout.buffer.write(b'line %03d ' % i + bytes([0xff, 0xfe, i]) + b'.' * (i % 17) + b'\\n')\n"
        "    sys.stdout.flush()\n"
        "    time.sleep(0.01)\n"
    )
    job = submit(web, "bytes", f"{PY} -c {shlex.quote(code)}")
    received: list[Event] = []
    last_id: str | None = None
    for _ in range(40):
        headers = {"Last-Event-ID": last_id} if last_id is not None else {}
        # The browser resends its URL: tail_lines=3 must not matter once Last-Event-ID is given.
        stream = web.events(f"/v1/jobs/{job['id']}/logs?follow=true&tail_lines=3" if last_id else
                            f"/v1/jobs/{job['id']}/logs?follow=true", headers)  # fmt: skip
        assert stream.status == 200 and stream.response.getheader("Content-Type") == "text/event-stream"
        ended = False
        for n, event in enumerate(stream):
            received.append(event)
            if event.event == "end":
                ended = True
                break
            assert event.id is not None and int(event.id) == int(event.json().get("offset", 0)) + len(
                base64.b64decode(event.json()["data"])
            )
            last_id = event.id
            if n == 4:
                break
        stream.drop()
        if ended:
            break
    assert received[-1].event == "end"
    end = received[-1].json()
    assert end["complete"] is True and end["state"] == "JOB_STATE_SUCCEEDED" and end.get("exitCode", 0) == 0
    log = served[0].home / "status"
    output = next(log.rglob(f"*{job['runId']}*/output.log"))
    assert _log_bytes(received) == output.read_bytes()
    assert len([e for e in received if e.event == "message"]) >= 10


def test_log_as_plain_text_and_ndjson(web: Http) -> None:
    job = submit(web, "text", "printf 'one\\ntwo\\n'")
    wait_state(web, job["id"], "JOB_STATE_SUCCEEDED")
    text = web.get(f"/v1/jobs/{job['id']}/logs?follow=true&format=text")
    assert text.status == 200 and text.body == b"one\ntwo\n"
    assert text.headers["content-type"].startswith("text/plain")
    lines = [json.loads(line) for line in web.get(f"/v1/jobs/{job['id']}/logs").body.splitlines()]
    assert base64.b64decode(lines[0]["data"]) == b"one\ntwo\n"
    assert web.get(f"/v1/jobs/{job['id']}/logs?format=yaml").status == 400


def test_curl_follows_a_running_job_as_lines_arrive(served: tuple[Stack, GatewayProcess], web: Http) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("needs curl")
    job = submit(web, "curl", lines_job(6, 0.4))
    wait_state(web, job["id"], "JOB_STATE_RUNNING")
    proc = subprocess.Popen(
        [curl, "-sN", "-H", "Accept: text/event-stream",
         f"http://{served[1].address}/v1/jobs/{job['id']}/logs?follow=true"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    arrivals = []
    for raw in proc.stdout:
        if raw.startswith(b"id:"):
            arrivals.append(time.monotonic())
        if raw.startswith(b"event: end"):
            break
    proc.wait(10)
    # Events came while the job ran, spread over its life, not all at its end.
    assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] > 1.0


def _open_logs(run_id: str) -> int:
    """How many descriptors the conductor (in this process) holds on the run's output.log."""
    count = 0
    for fd in Path(f"/proc/{os.getpid()}/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        count += run_id in target and target.endswith("output.log")
    return count


def test_a_reader_that_stops_reading_costs_bounded_memory_and_a_drop_ends_the_stream(
    served: tuple[Stack, GatewayProcess], web: Http
) -> None:
    gateway = served[1]
    # About 200 MB of output, as fast as the job can write it.
    firehose = "import sys\nfor _ in range(3200): sys.stdout.write('x' * 65535 + chr(10))\n"
    job = submit(web, "firehose", f"{PY} -c {shlex.quote(firehose)}")
    stream = web.events(f"/v1/jobs/{job['id']}/logs?follow=true")
    assert stream.status == 200
    before = gateway.rss_bytes()
    wait_state(web, job["id"], "JOB_STATE_SUCCEEDED", timeout=120)
    grown = gateway.rss_bytes() - before
    assert grown < 64 * 1024 * 1024, (
        f"the gateway grew by {grown / 1e6:.0f} MB for a reader that reads nothing"
    )

    assert _open_logs(job["runId"]) >= 1  # the conductor is still holding the stream open for the reader
    stream.drop()
    deadline = time.monotonic() + 15
    while _open_logs(job["runId"]):
        assert time.monotonic() < deadline, "the gateway never cancelled the stream of a reader that left"
        time.sleep(0.1)


def test_a_browser_that_leaves_a_quiet_stream_is_noticed_at_once(
    served: tuple[Stack, GatewayProcess], web: Http
) -> None:
    # Nothing is written to the reader, so only noticing the closed connection
    # (not a failed write) can end the conductor's stream before the next heartbeat (5 s).
    job = submit(web, "quiet", "sleep 60")
    wait_state(web, job["id"], "JOB_STATE_RUNNING")
    stream = web.events(f"/v1/jobs/{job['id']}/logs?follow=true")
    assert stream.status == 200
    deadline = time.monotonic() + 10
    while not _open_logs(job["runId"]):
        assert time.monotonic() < deadline, "the conductor never opened the log for the stream"
        time.sleep(0.05)
    dropped = time.monotonic()
    stream.drop()
    while _open_logs(job["runId"]):
        assert time.monotonic() - dropped < 3.0, "the gateway kept a left browser's stream open"
        time.sleep(0.05)
    web.ok("POST", f"/v1/jobs/{job['id']}:cancel", {"gracePeriod": "1s"})


# -- server-sent events: watch ------------------------------------------------


def _watch_until(stream: EventStream, stop: Any, limit: int = 10_000) -> list[Event]:
    got = []
    for event in stream:
        got.append(event)
        if stop(event) or len(got) >= limit:
            break
    return got


def test_watch_resumes_without_a_lost_or_doubled_revision(
    web: Http, served: tuple[Stack, GatewayProcess]
) -> None:
    stream = web.events("/v1/jobs:watch?since_revision=0&project=watched")
    first = _watch_until(stream, lambda e: e.json()["type"] == "JOB_EVENT_TYPE_SNAPSHOT_END")
    assert all(e.id is None for e in first[:-1]), "snapshot events must not carry a resumable id"
    last_id = first[-1].id
    assert last_id is not None
    updates: list[dict[str, Any]] = []
    jobs = []
    for round_ in range(3):
        jobs.append(submit(web, f"w{round_}", "true", project="watched"))
        wait_state(web, jobs[-1]["id"], "JOB_STATE_SUCCEEDED")
        got = _watch_until(stream, lambda e: e.json().get("job", {}).get("state") == "JOB_STATE_SUCCEEDED")
        updates += [e.json() for e in got]
        last_id = got[-1].id
        stream.drop()
        # While nobody listens, a job changes; the next connection must bring it.
        jobs.append(submit(web, f"w{round_}-away", "true", project="watched"))
        wait_state(web, jobs[-1]["id"], "JOB_STATE_SUCCEEDED")
        # The URL still says since_revision=0: Last-Event-ID wins, so no new snapshot.
        stream = web.events(
            "/v1/jobs:watch?since_revision=0&project=watched", {"Last-Event-ID": str(last_id)}
        )
        got = _watch_until(stream, lambda e: e.json().get("job", {}).get("id") == jobs[-1]["id"]
                           and e.json()["job"]["state"] == "JOB_STATE_SUCCEEDED")  # fmt: skip
        assert all(e.json()["type"] != "JOB_EVENT_TYPE_SNAPSHOT" for e in got)
        updates += [e.json() for e in got]
        last_id = got[-1].id
    stream.drop()

    revisions = [int(u["revision"]) for u in updates]
    assert revisions == sorted(set(revisions)), "a revision was lost or doubled"
    # Exactly what the conductor itself streams over gRPC for the same range.
    direct = []
    stub = served[0].conductor.stub
    call = stub.WatchJobs(
        pb.WatchJobsRequest(since_revision=int(first[-1].id or 0), project="watched"), timeout=30
    )
    for response in call:
        direct += [e for e in response.events if e.type != job_pb2.JOB_EVENT_TYPE_HEARTBEAT]
        if direct and direct[-1].revision >= revisions[-1]:
            break
    call.cancel()
    assert [(int(u["revision"]), u["job"]["id"], u["job"]["state"]) for u in updates] == [
        (e.revision, e.job.id, job_pb2.JobState.Name(e.job.state)) for e in direct
    ]
    assert {u["job"]["id"] for u in updates} == {j["id"] for j in jobs}


def test_watch_heartbeats_are_comments_and_bad_resume_ids_are_refused(web: Http) -> None:
    bad = web.events("/v1/jobs:watch", {"Last-Event-ID": "yesterday"})
    assert bad.status == 400
    ahead = web.events("/v1/jobs:watch", {"Last-Event-ID": str(10**12)})
    assert ahead.status == 400  # OUT_OF_RANGE (REVISION_AHEAD) maps to 400
    assert json.loads(ahead.response.read())["code"] == grpc.StatusCode.OUT_OF_RANGE.value[0]


# -- tokens, cookies, TLS and the loopback rule -------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, GatewayProcess]]:
    home = tmp_path_factory.mktemp("secured")
    tokens = standard_tokens(home / "tokens.yaml")
    with stack(home / "home", viewer_settings={"token_file": tokens}, token_file=tokens) as s:
        gateway = GatewayProcess(home, s.address, s.viewer_address)
        try:
            yield s, gateway
        finally:
            gateway.stop()


def test_bearer_tokens_pass_through_to_the_services(secured: tuple[Stack, GatewayProcess]) -> None:
    address = secured[1].address
    anonymous = Http(address).get("/v1/jobs")
    assert (
        anonymous.status == 401 and status_body(anonymous)["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
    )
    assert Http(address, "not a token").get("/v1/jobs").status == 401
    reader = Http(address, TOKENS["reader"])
    assert reader.ok("GET", "/v1/conductor:info")["caller"] == {"name": "reader", "role": "reader"}
    refused = reader.post("/v1/jobs", {"specYaml": spec("nope", "true", project="ml")})
    assert refused.status == 403
    operator = Http(address, TOKENS["op-ml"])
    job = operator.ok("POST", "/v1/jobs", {"specYaml": spec("mine", "true", project="ml")})
    assert job["submittedBy"] == "op-ml"
    assert Http(address, TOKENS["root"]).ok("GET", "/v1/viewer/stats") is not None
    assert Http(address).get("/v1/viewer/stats").status == 401


def test_the_dashboard_login_keeps_the_token_in_a_strict_cookie_and_refuses_other_origins(
    secured: tuple[Stack, GatewayProcess],
) -> None:
    address = secured[1].address
    web = Http(address)
    origin = {"Origin": f"http://{address}"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    wrong = web.call("POST", "/login", body=b"token=wrong", headers=origin | form)
    assert wrong.status == 401 and "set-cookie" not in wrong.headers
    login = web.call("POST", "/login", body=f"token={TOKENS['op-ml']}".encode(), headers=origin | form)
    assert login.status == 200 and login.json()["caller"]["name"] == "op-ml"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    session = {"Cookie": cookie.split(";", 1)[0]}

    submit_body = json.dumps({"specYaml": spec("c", "sleep 30", project="ml")}).encode()
    job = web.call("POST", "/v1/jobs", body=submit_body, headers=session | origin)
    assert job.status == 200, job.body
    job_id = job.json()["id"]
    assert web.get(f"/v1/jobs/{job_id}", headers=session).status == 200  # reading needs no origin
    for forged in ({}, {"Origin": "http://evil.example"}, {"Referer": "http://evil.example/page"}):
        refused = web.call("POST", f"/v1/jobs/{job_id}:cancel", body=b"{}", headers=session | forged)
        assert refused.status == 403 and reason(status_body(refused)) == "CROSS_SITE_REQUEST", forged
    assert web.get(f"/v1/jobs/{job_id}", headers=session).json()["state"] != "JOB_STATE_CANCELLED"
    cancelled = web.call("POST", f"/v1/jobs/{job_id}:cancel", body=b"{}", headers=session | origin)
    assert cancelled.status == 200
    logout = web.call("POST", "/logout", headers=session | origin)
    assert "baton_session=" in logout.headers["set-cookie"] and "Max-Age=0" in logout.headers["set-cookie"]


def test_a_gateway_off_loopback_refuses_services_that_answer_anyone(
    served: tuple[Stack, GatewayProcess], tmp_path: Path
) -> None:
    s = served[0]
    refused = subprocess.run(
        [sys.executable, "-m", "baton.client.cli", "gateway", "--listen", "0.0.0.0:0",
         "--conductor", s.address, "--viewer", s.viewer_address],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "answers callers without a token" in refused.stderr and "--insecure" in refused.stderr


def test_the_loopback_rule_accepts_services_that_require_a_token(
    secured: tuple[Stack, GatewayProcess],
) -> None:
    import asyncio

    from baton.gateway.server import Gateway, GatewayConfig, _check_backends_authenticate

    async def check() -> None:
        gateway = Gateway(GatewayConfig(listen="0.0.0.0:0", conductor=secured[0].address))
        try:
            await _check_backends_authenticate(gateway, wait=5)
        finally:
            await gateway.stop()

    asyncio.run(check())  # returns: the conductor refused an anonymous caller


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_on_the_gateways_own_listener(served: tuple[Stack, GatewayProcess], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    s = served[0]
    gateway = GatewayProcess(tmp_path, s.address, s.viewer_address, "--tls-cert-file", str(cert),
                             "--tls-key-file", str(key))  # fmt: skip
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(
            f"https://{gateway.address}/v1/conductor:info", context=context
        ) as answer:
            assert json.loads(answer.read())["version"]
        # Plain HTTP to a TLS listener gets no answer (the connection is dropped).
        with pytest.raises((OSError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://{gateway.address}/healthz", timeout=5).read()
    finally:
        gateway.stop()


def test_caller_in_conductor_info_over_grpc(served: tuple[Stack, GatewayProcess]) -> None:
    info = served[0].conductor.stub.GetConductorInfo(pb.GetConductorInfoRequest(), timeout=10)
    assert info.caller.role == "admin" and info.caller.name == ""


def test_metrics_count_routes_by_template_and_sigterm_ends_open_streams_with_a_goodbye(
    served: tuple[Stack, GatewayProcess], tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    s = served[0]
    gateway = GatewayProcess(tmp_path, s.address, s.viewer_address, "--metrics-listen", "127.0.0.1:0",
                             "--shutdown-grace", "3")  # fmt: skip
    web = Http(gateway.address)
    try:
        job = submit(web, "counted", "sleep 60")
        web.ok("GET", f"/v1/jobs/{job['id']}")
        assert web.get("/v1/jobs/20000101-000000-abcdef").status == 404
        metrics_address = json.loads(gateway.address_file.read_text())["metrics"]
        with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as answer:
            families = {f.name: f for f in text_string_to_metric_families(answer.read().decode())}
        counts = {
            (m.labels["route"], m.labels["http_method"], m.labels["http_status"]): m.value
            for m in families["baton_http_requests"].samples
            if m.name == "baton_http_requests_total"
        }
        assert counts[("/v1/jobs/{job_id}", "GET", "200")] == 1
        assert counts[("/v1/jobs/{job_id}", "GET", "404")] == 1
        assert counts[("/v1/jobs", "POST", "200")] == 1
        assert not any(job["id"] in route for route, _, _ in counts), "a job id became a label"

        streams = [web.events(f"/v1/jobs/{job['id']}/logs?follow=true") for _ in range(5)]
        streams.append(web.events("/v1/jobs:watch?since_revision=0"))
        assert all(st.status == 200 for st in streams)
        stopped = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        for stream in streams:
            last = [e for e in stream][-1]
            assert last.event == "rpc-error"
            assert last.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert "shutting down" in last.json()["message"]
        assert gateway.proc.wait(10) == 0 and time.monotonic() - stopped < 5
        # The job behind the streams runs on: the gateway owns nothing.
        assert s.conductor.get(job["id"]).state == job_pb2.JOB_STATE_RUNNING
        s.conductor.stub.CancelJob(pb.CancelJobRequest(job_id=job["id"]), timeout=10)
    finally:
        gateway.stop()
