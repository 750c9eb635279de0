"""Issue 16's live figures, through the gateway of a real ``baton up``:

- a line written by a job to that line's server-sent event received by an
  HTTP client (aiohttp reading ``GET /v1/jobs/{id}/logs?follow=true`` as
  ``text/event-stream``), beside a gRPC StreamLogs follower of the same job at
  the same time, so the gateway's own share shows;
- a state change (PauseJob or ResumeJob called over gRPC) to the dashboard's
  runs table showing the new state in headless Chromium (bench/webstack.py).

Lines carry the job's ``time.time_ns()`` stamp; the page's MutationObserver
records ``performance.timeOrigin + performance.now()`` when the row's state
changes, set against this process's clock taken just before the call (the
offset between the two clocks is measured over several round trips first;
half the shortest round trip bounds its error and is reported).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp

from baton.v1 import conductor_pb2 as pb
from baton.v1 import job_pb2
from bench.feeds import follow_lines, stamper
from bench.jobs import spec_yaml
from bench.report import Json, Target, distribution, figure, log, section
from bench.webstack import BatonUp, browser_missing, launch_chromium

S = job_pb2
# The job waits this long before its first line, so both followers are there first.
HEAD_START = "sleep 1"


async def _sse_lines(url: str, job_id: str, latencies: list[float]) -> int:
    """Follow a job's log as SSE; append each stamped line's latency (ms). Returns bytes read."""
    received = 0
    pending = b""
    headers = {"Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{url}/v1/jobs/{job_id}/logs", params={"follow": "true"}, headers=headers) as response,
    ):
        response.raise_for_status()
        event, data = "message", b""
        async for raw in response.content:
            line = raw.rstrip(b"\r\n")
            if line.startswith(b":"):
                continue  # a heartbeat comment
            if line:
                field, _, value = line.partition(b":")
                value = value.removeprefix(b" ")
                if field == b"event":
                    event = value.decode()
                elif field == b"data":
                    data += value
                continue
            # A blank line dispatches the event.
            now = time.time_ns()
            if event == "rpc-error":
                raise RuntimeError(f"log stream failed: {data.decode(errors='replace')}")
            chunk = json.loads(data) if data else {}
            if chunk.get("data"):
                payload = base64.b64decode(chunk["data"])
                received += len(payload)
                pending += payload
                *lines, pending = pending.split(b"\n")
                for text in lines:
                    stamp = text.split(b" ", 1)[0]
                    if stamp.isdigit():
                        latencies.append((now - int(stamp)) / 1e6)
            if event == "end":
                break
            event, data = "message", b""
    return received


def _sse_latency(up: BatonUp, lines: int) -> tuple[list[float], list[float]]:
    command = f"{HEAD_START}; {stamper(lines, 0.01)}"
    job = up.stub.SubmitJob(pb.SubmitJobRequest(spec_yaml=spec_yaml("web-stamper", command)), timeout=30)
    sse: list[float] = []
    grpc_side: list[float] = []

    async def both() -> None:
        await asyncio.gather(
            _sse_lines(up.url, job.id, sse), follow_lines(up.addresses["conductor"], job.id, grpc_side)
        )

    asyncio.run(both())
    return sse, grpc_side


# Resolves (in the page) once the row of job `id` shows state `want`: the time, on the page's clock.
_OBSERVE = """([id, want]) => {
  window.batonSeen = new Promise((resolve) => {
    const body = document.getElementById("runs-body");
    const shows = () => {
      const badge = body.querySelector(`tr[data-job-id="${id}"] [data-state]`);
      return badge !== null && badge.dataset.state === want;
    };
    const observer = new MutationObserver(() => {
      if (shows()) {
        observer.disconnect();
        resolve(performance.timeOrigin + performance.now());
      }
    });
    observer.observe(body, {childList: true, subtree: true, characterData: true, attributes: true});
  });
}"""


def _clock_offset(page: Any, rounds: int = 15) -> tuple[float, float]:
    """(page clock minus ours, in ms; half the shortest round trip, its error bound)."""
    best = (0.0, float("inf"))
    for _ in range(rounds):
        t0 = time.time() * 1000
        theirs = page.evaluate("() => performance.timeOrigin + performance.now()")
        t1 = time.time() * 1000
        if t1 - t0 < best[1]:
            best = (theirs - (t0 + t1) / 2, t1 - t0)
    return best[0], best[1] / 2


def _dom_latency(up: BatonUp, changes: int) -> tuple[list[float], float]:
    from playwright.sync_api import sync_playwright

    request = pb.SubmitJobRequest(spec_yaml=spec_yaml("web-sleeper", "exec sleep 600"))
    job = up.stub.SubmitJob(request, timeout=30)
    latencies: list[float] = []
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(up.url + "/")
            row = f"#runs-body tr[data-job-id='{job.id}'] [data-state='RUNNING']"
            page.wait_for_selector(row, timeout=30_000)
            offset, error = _clock_offset(page)
            for i in range(changes):
                pausing = i % 2 == 0
                page.evaluate(_OBSERVE, [job.id, "PAUSED" if pausing else "RUNNING"])
                t0 = time.time() * 1000
                if pausing:
                    up.stub.PauseJob(pb.PauseJobRequest(job_id=job.id, mode=S.PAUSE_MODE_SUSPEND), timeout=30)
                else:
                    up.stub.ResumeJob(pb.ResumeJobRequest(job_id=job.id), timeout=30)
                seen = page.evaluate("() => window.batonSeen")
                latencies.append(seen - offset - t0)
                time.sleep(0.05)
        finally:
            browser.close()
    return latencies, error


def web(lines: int, changes: int) -> Json:
    """Both figures against one ``baton up``."""
    with BatonUp() as up:
        sse, grpc_side = _sse_latency(up, lines)
        log(f"web: {len(sse)} lines over SSE, {len(grpc_side)} over gRPC")
        missing = browser_missing()
        dom: list[float] = []
        clock_error = float("nan")
        if not missing:
            dom, clock_error = _dom_latency(up, changes)
            log(f"web: {len(dom)} state changes seen in the page")
        else:
            log(f"web: no browser ({missing}); the DOM figures are left out")
    figures = distribution(
        "sse_line_",
        sse,
        "a job's log line to its SSE event received by an aiohttp client through the gateway",
        p50_target=Target("<=", 10.0, "ms", "issue 16"),
        p95_target=Target("<=", 30.0, "ms", "issue 16"),
    )
    figures |= distribution(
        "grpc_line_", grpc_side, "the same lines to a gRPC StreamLogs follower at the same time", brief=True
    )
    figures["sse_lines_received"] = figure(len(sse), "lines", lines, "stamped lines the SSE client got")
    details: Json = {"line_interval_ms": 10, "grpc_lines": len(grpc_side)}
    if dom:
        figures |= distribution(
            "state_to_dom_",
            dom,
            "PauseJob/ResumeJob (gRPC, suspend) called to the runs table's row showing the new state in "
            "headless Chromium",
            p50_target=Target("<=", 200.0, "ms", "issue 16"),
            p95_target=Target("<=", 200.0, "ms", "issue 16"),
        )
        figures["clock_offset_error"] = figure(
            clock_error, "ms", 1, "bound on the error of the page-to-process clock offset (half a round trip)"
        )
    else:
        details["browser"] = f"skipped: {missing}"
    return section(
        "Through `baton gateway` (HTTP/1.1 on loopback, started by `baton up`): a stamped log line every "
        "10 ms to its server-sent event, beside a gRPC follower; and a job's state change to the "
        "dashboard's DOM (WatchJobs over SSE, a MutationObserver on the runs table).",
        figures,
        details,
    )
