"""The Ray executor (``executor: ray``): each step is one Ray job submission.

It speaks the Ray Jobs REST API of a head (``--ray-address
http://HOST:8265``) over plain HTTP, so the conductor needs no ``ray``
package. The entrypoint is Baton's node wrapper (``nodes.py``): the run's
``output.log`` then holds exactly the job's output, where Ray's own log mixes
in lines of its own, and the exit status is recorded where Ray reports none
for a stopped job.

- Resources map to the entrypoint's ``entrypoint_num_cpus``,
  ``entrypoint_num_gpus`` and ``entrypoint_memory``.
- Requests go to the wrapper, which signals the job with Baton's grace; Ray's
  stop (SIGTERM, then SIGKILL 3 s later, whatever the job's grace) is only the
  final kill. Pause mode: checkpoint only, as Ray cannot freeze a job.
- The ``submission_id`` is the launch's name, chosen before submitting: Ray
  refuses a second submission under it, so a restarted conductor that is not
  sure whether it submitted finds the job instead of running it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from typing import Any

from baton.conductor.executors.base import ExitStatus, Handle, LaunchError, LaunchSpec
from baton.conductor.executors.nodes import EngineState, EngineView, NodeExecutor
from baton.v1 import job_pb2

HTTP_TIMEOUT = 30.0
_ENDED = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayApiError(Exception):
    """The Ray Jobs API answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[-300:]}")
        self.status = status
        self.body = body


class RayExecutor(NodeExecutor):
    name = "ray"
    pause_modes = frozenset({job_pb2.PAUSE_MODE_CHECKPOINT})
    health_fields = frozenset({"pid", "alive", "uptime"})
    queues = True

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address.rstrip("/")

    def _call_blocking(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.address + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                text = response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            raise RayApiError(exc.code, exc.read().decode(errors="replace")) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LaunchError(f"cannot reach the Ray Jobs API at {self.address}: {reason}") from None
        try:
            return json.loads(text)
        except ValueError:
            return text

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self._call_blocking, method, path, body)

    # ------------------------------------------------------------ engine side

    def submission(self, handle: Handle, spec: LaunchSpec, command: list[str]) -> dict[str, Any]:
        """The Jobs API request body for one launch."""
        body: dict[str, Any] = {
            # Ray runs the entrypoint with /bin/sh -c; exec makes the wrapper the
            # process Ray watches, and the one that reaps the job.
            "entrypoint": "exec " + " ".join(_quote(part) for part in command),
            "submission_id": self.engine_name(handle),
            "metadata": {"baton_job_id": spec.job_id, "baton_launch": handle.launch_id},
        }
        res = spec.resources
        if res.cpus > 0:
            body["entrypoint_num_cpus"] = res.cpus
        if res.gpus > 0:
            body["entrypoint_num_gpus"] = res.gpus
        if res.memory_bytes > 0:
            body["entrypoint_memory"] = res.memory_bytes
        return body

    async def submit(self, handle: Handle, spec: LaunchSpec, command: list[str]) -> str:
        name = self.engine_name(handle)
        try:
            answer = await self._call("POST", "/api/jobs/", self.submission(handle, spec, command))
        except RayApiError as exc:
            if "already exists" in exc.body:
                # Submitted before (a retry of this very launch): the same job, not a second.
                return name
            raise LaunchError(f"the Ray Jobs API refused the job: {exc}") from None
        if isinstance(answer, dict):
            return str(answer.get("submission_id") or name)
        return name

    async def find(self, handle: Handle) -> str | None:
        name = self.engine_name(handle)
        try:
            await self._call("GET", f"/api/jobs/{name}")
        except RayApiError as exc:
            if exc.status == 404:
                return None
            raise LaunchError(f"the Ray Jobs API: {exc}") from None
        return name

    async def view(self, handle: Handle) -> EngineView:
        try:
            info = await self._call("GET", f"/api/jobs/{handle.external_id}")
        except RayApiError as exc:
            if exc.status == 404:
                return EngineView(EngineState.UNKNOWN, detail=f"Ray no longer knows {handle.external_id}")
            raise LaunchError(f"the Ray Jobs API: {exc}") from None
        except LaunchError as exc:
            # The head is unreachable: say nothing has changed, and ask again later.
            return EngineView(EngineState.RUNNING, detail=str(exc))
        status = str(info.get("status", "")) if isinstance(info, dict) else ""
        message = str(info.get("message") or "") if isinstance(info, dict) else ""
        if status == "PENDING":
            return EngineView(EngineState.QUEUED, detail=message)
        if status in _ENDED:
            code = info.get("driver_exit_code") if isinstance(info, dict) else None
            exit_status = (
                ExitStatus(exit_code=int(code), detail=f"Ray: {status} without Baton's exit record")
                if isinstance(code, int)
                else None
            )
            return EngineView(EngineState.ENDED, status=exit_status, detail=f"{status}: {message}"[:300])
        return EngineView(EngineState.RUNNING)

    async def cancel(self, handle: Handle) -> None:
        if not handle.external_id:
            return
        # Best effort: the wrapper's KILL came first, and wait() reads the outcome.
        with contextlib.suppress(RayApiError, LaunchError):
            await self._call("POST", f"/api/jobs/{handle.external_id}/stop")


    async def kill_all(self, job_id: str) -> None:
        try:
            jobs = await self._call("GET", "/api/jobs/")
        except (RayApiError, LaunchError):
            return
        prefix = f"baton-{job_id}-"
        for info in jobs if isinstance(jobs, list) else []:
            sid = str(info.get("submission_id") or "")
            if sid.startswith(prefix) and info.get("status") not in _ENDED:
                await self.cancel(Handle(self.name, "", external_id=sid))


def _quote(part: str) -> str:
    return "'" + part.replace("'", "'\\''") + "'"

