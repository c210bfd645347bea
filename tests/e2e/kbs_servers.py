"""Key-release servers for the e2e tier, on free loopback ports.

``cmlfs dev-kbs`` runs as a real subprocess (plain HTTP, or HTTPS with a
private CA made by ``make_tls``). Two small in-process servers stand for
parties that misbehave or that cannot run here: a hostile broker that answers
the protocol with scripted bad responses, and a stand-in for the CoCo data hub
that serves ``/cdh/resource/<repo>/<type>/<tag>`` as the real one does (200 and
the bytes, 500 and a text reason).
"""

import ipaddress
import json
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cmlfs.devkbs.jwe import encrypt_to
from cmlfs.keys.kbs import TeeKeyPair
from tests.conftest import run_cli
from tests.e2e.stores_servers import Server, free_port, make_tls, start

ERRORS = "https://github.com/confidential-containers/kbs/errors/"


@dataclass
class DevKbsProcess:
    server: Server
    url: str
    repository: Path
    ca: Path | None = None

    @property
    def address(self) -> str:
        return self.url.split("://", 1)[1]

    def uri(self, path: str = "default/model/demo") -> str:
        return f"kbs://{self.address}/{path}"

    def client_args(self) -> list[str]:
        """The CLI options a client needs for this broker (sample attester, transport)."""
        transport = ["--kbs-ca", str(self.ca)] if self.ca else ["--insecure-kbs-http"]
        return ["--attester", "sample", *transport]

    def set_policy(self, policy: dict, folder: Path) -> None:
        path = folder / "policy.json"
        path.write_text(json.dumps(policy))
        transport = ["--kbs-ca", str(self.ca)] if self.ca else ["--insecure-kbs-http"]
        run_cli("key", "policy", f"kbs://{self.address}", "--policy-file", path, *transport)


def start_dev_kbs(
    folder: Path, *extra: str, tls: bool = False, host: str = "127.0.0.1"
) -> DevKbsProcess:
    folder.mkdir(parents=True, exist_ok=True)
    repository = folder / "repository"
    repository.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "cmlfs", "dev-kbs", "--repository", str(repository)]
    command += ["--listen", f"{host}:{port}", *extra]
    ca = None
    if tls:
        ca, cert, key = make_tls(folder)
        command += ["--tls-cert", str(cert), "--tls-key", str(key)]
    server = start(command, port, folder / "dev-kbs.log")
    scheme = "https" if tls else "http"
    return DevKbsProcess(server, f"{scheme}://127.0.0.1:{port}", repository, ca)


@pytest.fixture
def dev_kbs(tmp_path: Path) -> Iterator[DevKbsProcess]:
    """``cmlfs dev-kbs`` over plain HTTP on a free loopback port."""
    kbs = start_dev_kbs(tmp_path / "dev-kbs")
    yield kbs
    kbs.server.stop()


@pytest.fixture
def dev_kbs_tls(tmp_path: Path) -> Iterator[DevKbsProcess]:
    """``cmlfs dev-kbs`` over HTTPS with a certificate from a private CA made for the test."""
    kbs = start_dev_kbs(tmp_path / "dev-kbs-tls", tls=True)
    yield kbs
    kbs.server.stop()


# --- in-process stand-ins ------------------------------------------------------------------

Reply = tuple[int, bytes]


@dataclass
class ScriptedServer:
    """An HTTP server whose answers come from ``routes``: (method, path) -> body -> reply."""

    routes: dict[tuple[str, str], Callable[[bytes], Reply]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    host: str = "127.0.0.1"
    # The data hub's REST server (guest-components api-server-rest/src/router.rs): 403 to
    # any peer that is not loopback, 405 to methods other than GET.
    data_hub: bool = False

    def __post_init__(self) -> None:
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                script.requests.append((self.command, self.path))
                route = script.routes.get((self.command, self.path))
                status, payload = route(body) if route else (404, b"URL NOT FOUND")
                if script.data_hub and not ipaddress.ip_address(self.client_address[0]).is_loopback:
                    status, payload = 403, b"Forbidden"
                elif script.data_hub and self.command != "GET":
                    status, payload = 405, b"Method Not Allowed"
                self.send_response(status)
                if self.path.endswith("/auth"):
                    self.send_header("Set-Cookie", "kbs-session-id=0123456789abcdef")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HostileKbs(ScriptedServer):
    """A broker that completes the handshake without checking anything, then misbehaves."""

    def __init__(self) -> None:
        super().__init__()
        self.tee_pubkey: dict | None = None
        self.routes[("POST", "/kbs/v0/auth")] = lambda body: (
            200,
            b'{"nonce":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","extra-params":""}',
        )
        self.routes[("POST", "/kbs/v0/attest")] = self._attest

    def _attest(self, body: bytes) -> Reply:
        self.tee_pubkey = json.loads(body)["runtime-data"]["tee-pubkey"]
        return 200, b'{"token":"not.checked.here"}'

    def answer_resource(self, path: str, reply: Callable[["HostileKbs"], Reply]) -> str:
        """Serve ``path`` with ``reply(self)``; returns its kbs:// URI."""
        self.routes[("GET", f"/kbs/v0/resource/{path}")] = lambda body: reply(self)
        return f"kbs://{self.address}/{path}"

    def jwe_to_client(self, payload: bytes) -> Reply:
        return 200, json.dumps(encrypt_to(self.tee_pubkey, payload)).encode()

    def jwe_to_another_key(self, payload: bytes) -> Reply:
        return 200, json.dumps(encrypt_to(TeeKeyPair("ec").public_jwk, payload)).encode()


def kbs_error(status: int, variant: str, detail: str) -> Reply:
    return status, json.dumps({"type": ERRORS + variant, "detail": detail}).encode()


@pytest.fixture
def hostile_kbs() -> Iterator[HostileKbs]:
    server = HostileKbs()
    yield server
    server.stop()


@pytest.fixture
def cdh() -> Iterator[ScriptedServer]:
    """Stand-in for the CoCo data hub's REST API (guest-components api-server-rest) on a free
    port of every address, answering only loopback peers as the real one does."""
    server = ScriptedServer(host="0.0.0.0", data_hub=True)
    yield server
    server.stop()
