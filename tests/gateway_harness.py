"""A real ``baton gateway`` process in front of real services, and a plain HTTP
client for tests: JSON calls, and a server-sent-events reader that can drop
its connection on purpose."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import REPO


class GatewayProcess:
    """``baton gateway`` on 127.0.0.1:0 as a subprocess; ``address`` once it serves."""

    def __init__(self, workdir: Path, conductor: str, viewer: str, *extra: str) -> None:
        self.address_file = workdir / "gateway-address.json"
        self.address_file.unlink(missing_ok=True)
        self.log = (workdir / "gateway.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "baton.client.cli", "gateway", "--listen", "127.0.0.1:0",
             "--conductor", conductor, "--viewer", viewer, "--address-file", str(self.address_file), *extra],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.address = self._wait_address()

    def _wait_address(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.address_file.exists():
                return str(json.loads(self.address_file.read_text())["gateway"])
            if self.proc.poll() is not None:
                raise AssertionError(f"baton gateway exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise AssertionError("baton gateway did not serve within 30 s")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """JSON over HTTP/1.1 to one gateway."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        self.token = token

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        found = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return found | (extra or {})

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            sent = ({"Content-Type": "application/json"} if data is not None else {}) | self.headers(headers)
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.call("POST", path, body if body is not None else {}, **kw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.call(method, path, body if body is not None or method != "POST" else {})
        assert reply.status == 200, (method, path, reply.status, reply.body[:500])
        return reply.json()

    def events(self, path: str, headers: dict[str, str] | None = None) -> EventStream:
        return EventStream(self, path, headers)


@dataclass
class Event:
    data: str = ""
    id: str | None = None
    event: str = "message"
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


class EventStream:
    """One SSE response, read event by event; ``drop`` closes the socket without a goodbye."""

    def __init__(self, http_: Http, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection(http_.host, http_.port, timeout=30)
        self.conn.request(
            "GET", path, headers=http_.headers({"Accept": "text/event-stream", **(headers or {})})
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.comments: list[str] = []

    def __iter__(self) -> Iterator[Event]:
        event = Event()
        while True:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\n")
            if line == "":
                if event.data or event.id is not None or event.event != "message":
                    yield event
                event = Event()
            elif line.startswith(":"):
                self.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    event.data = f"{event.data}\n{value}" if event.data else value
                elif name == "id":
                    event.id = value
                elif name == "event":
                    event.event = value

    def drop(self) -> None:
        """A forced disconnect: the socket goes away mid-stream."""
        sock = self.conn.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()
