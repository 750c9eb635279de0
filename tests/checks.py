"""Small helpers the conductor tests share: rich error details, process groups, files."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from baton.v1 import job_pb2


def bad_request_fields(err: grpc.RpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest detail of ``err`` (empty if none)."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, f"no google.rpc.Status in the trailers of {err!r}"
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail of ``err`` (an empty one if it has none)."""
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
    return info


def error_info_reason(err: grpc.RpcError) -> str | None:
    """The reason of the google.rpc.ErrorInfo detail of ``err``, if it has one."""
    return error_info(err).reason or None


def live_group_members(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes whose process group is ``pgid``."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        proc_state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and proc_state not in (b"Z", b"X"):
            found.append(int(entry.name))
    return found


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_for_text(path: Path, text: str, timeout: float = 10.0) -> str:
    """Wait until the file at ``path`` contains ``text``; return its content."""
    content = ""

    def has_text() -> bool:
        nonlocal content
        try:
            content = path.read_text(errors="replace")
        except OSError:
            return False
        return text in content

    wait_until(has_text, f"{text!r} in {path} (last seen: {content!r})", timeout)
    return content


def wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no live process of group ``pgid`` remains."""
    wait_until(
        lambda: not live_group_members(pgid),
        f"process group {pgid} to be gone (left: {live_group_members(pgid)})",
        timeout,
    )


def log_path(job: job_pb2.Job) -> Path:
    return Path(job.run_dir) / "output.log"


def files_under(root: Path) -> list[Path]:
    """Everything below ``root`` (an absent root counts as empty)."""
    return sorted(root.rglob("*")) if root.exists() else []
