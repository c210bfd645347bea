"""A small fault-injecting HTTP reverse proxy for store tests (loopback only).

It forwards GET and HEAD requests to an upstream server (nginx) and, when told
to, misbehaves instead: resets the connection, answers 500 or 503, sends a
body shorter than its Content-Length, or stalls without answering. Faults are
matched by a path substring and consumed in order; a fault with ``times=None``
never runs out. Every request is recorded so tests can count what reached the
network.
"""

import http.client
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("reset", "500", "503", "short", "stall")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "proxy-connection"}


@dataclass
class Fault:
    kind: str
    path: str
    times: int | None  # None: forever
    method: str = "GET"


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    range: str | None
    fault: str | None


@dataclass
class FaultProxy:
    upstream_port: int
    stall_seconds: float = 5.0
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def inject(self, kind: str, path: str = "", times: int | None = 1, method: str = "GET") -> None:
        assert kind in KINDS, kind
        with self._lock:
            self.faults.append(Fault(kind, path, times, method))

    def pending(self) -> list[Fault]:
        """Faults not yet used up."""
        with self._lock:
            return [f for f in self.faults if f.times != 0]

    def reset(self) -> None:
        """Forget faults and recorded requests."""
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def requests(self, path: str = "", method: str = "GET") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if path in s.path and s.method == method]

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self.faults:
                if fault.path in path and fault.method == method and fault.times != 0:
                    if fault.times is not None:
                        fault.times -= 1
                    return fault.kind
        return None

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)


class _QuietServer(ThreadingHTTPServer):
    """Clients dropping connections is what this proxy provokes: not worth a traceback."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fault = self.owner._take_fault(self.command, self.path)
        self.owner._record(Seen(self.command, self.path, self.headers.get("Range"), fault))
        if fault == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        if fault in ("500", "503"):
            self._send(int(fault), {"Content-Type": "text/plain"}, b"injected fault\n")
            return
        if fault == "stall":
            self.owner._stop.wait(self.owner.stall_seconds)
            self.close_connection = True
            return
        status, headers, body, length = self._forward()
        if fault == "short" and len(body) > 1:
            length, body = len(body), body[: len(body) // 2]
        self._send(status, headers, body, announce=length)
        if length != len(body):
            self.close_connection = True

    def _forward(self) -> tuple[int, dict[str, str], bytes, int]:
        """The upstream's answer and the body length it announced; a body the upstream cut
        short is passed on as it came."""
        upstream = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            upstream.request(self.command, self.path, headers=headers)
            response = upstream.getresponse()
            announced = response.getheader("Content-Length")
            try:
                body = response.read()
            except http.client.IncompleteRead as exc:
                body = exc.partial
            kept = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
            length = int(announced) if announced and self.command == "GET" else len(body)
            return response.status, kept, body, length
        finally:
            upstream.close()

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, announce: int | None = None
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        length = announce if announce is not None else len(body)
        if self.command == "HEAD" and "Content-Length" in headers:
            length = int(headers["Content-Length"])
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
