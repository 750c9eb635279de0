"""A tiny TCP proxy for tests: sits between a client and a real server on
loopback and can cut every connection through it, the way a flaky network or
a restarting load balancer does. Optionally terminates TLS in front of a
plaintext server.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to ``upstream`` ("host:port") until closed."""

    def __init__(self, upstream: str, tls: ssl.SSLContext | None = None) -> None:
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.accepted = 0
        self.cuts = 0
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self._tls is not None:
                client = self._tls.wrap_socket(client, server_side=True)
            server = socket.create_connection(self._upstream)
        except OSError:
            client.close()
            return
        with self._lock:
            self.accepted += 1
            self._conns += [client, server]
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection at once (new ones are still accepted)."""
        with self._lock:
            conns, self._conns = self._conns, []
            self.cuts += 1
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
