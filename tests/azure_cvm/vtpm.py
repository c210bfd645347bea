"""A software TPM (Debian's swtpm) set up like an Azure CVM's vTPM, and the fake metadata service.

``start_swtpm`` runs ``swtpm socket --tpm2`` on loopback ports (data P, control
P+1, as tpm2-tss's swtpm TCTI expects); ``provision`` creates the attestation
key the way Azure's is (RSA 2048, restricted signing, RSASSA-SHA256, under
the owner hierarchy) and makes it persistent at 0x81000003, and optionally
stores a boot-time HCL report (user-data all zero, as on a fresh Azure VM).

``MetadataService`` plays Azure's instance metadata service on loopback, as
strict as the real one on what cmlfs sends: ``Metadata: true`` is required
(400 otherwise, the real answer), a request carrying ``X-Forwarded-For`` is
refused, ``/acc/tdquote`` takes only ``{"report": base64url of a 1024-byte TD
report}`` as JSON. It answers the VCEK like THIM (``vcekCert``,
``certificateChain``, ``tcbm``) and TD quotes made by ``reports.td_quote``.
``mode`` switches it to answering garbage. The endpoints and bodies are those of
kinvolk/azure-cvm-tooling ``az-cvm-vtpm/az-snp-vtpm/src/imds.rs`` (``GET
/metadata/THIM/amd/certification`` with ``Metadata: true``, answer ``vcekCert`` and
``certificateChain``) and ``az-cvm-vtpm/az-tdx-vtpm/src/imds.rs`` (``POST
/acc/tdquote`` with ``{"report": base64url}``, answer ``{"quote": base64url}``; that
client sends no ``Metadata`` header, so requiring it there is stricter than that client
needs); the AK as ``az-cvm-vtpm/src/vtpm/mod.rs`` reads it.
"""

import base64
import json
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_PUBLIC, TPMA_OBJECT

from tests.azure_cvm import paravisor, reports
from tests.azure_cvm.chains import ChainFiles, load_key
from tests.e2e.stores_servers import wait_for_port

PARAVISOR = Path(paravisor.__file__)


@dataclass
class SoftTpm:
    process: subprocess.Popen
    port: int
    folder: Path

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def paravisor_tcti(self, kind: str, keys: Path) -> str:
        log = self.folder / "paravisor.log"
        return (
            f"cmd:{sys.executable} {PARAVISOR} --swtpm 127.0.0.1:{self.port} "
            f"--kind {kind} --keys {keys} --log {log}"
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports")


def start_swtpm(folder: Path) -> SoftTpm:
    state = folder / "state"
    state.mkdir(parents=True)
    port = _port_pair()
    log = folder / "swtpm.log"
    command = [
        "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}",
        "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
        "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
        "--flags", "not-need-init,startup-clear", "--log", f"file={log}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(port, process, log)
    return SoftTpm(process, port, folder)


AK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


def provision(tpm: SoftTpm, kind: str | None, keys: Path, ak: bool = True) -> None:
    """The AK at 0x81000003 (replacing one there) and, with ``kind``, a boot HCL report."""
    with ESAPI(tpm.tcti) as ctx:
        if ak:
            try:
                old = ctx.tr_from_tpmpublic(paravisor.AK_HANDLE)
                ctx.evict_control(ESYS_TR.OWNER, old, paravisor.AK_HANDLE)
            except Exception:
                pass
            srk, *_ = ctx.create_primary(None, "rsa2048")
            template = TPM2B_PUBLIC.parse("rsa2048:rsassa-sha256:null", AK_ATTRIBUTES)
            private, public, *_ = ctx.create(srk, None, template)
            handle = ctx.load(srk, private, public)
            ctx.flush_context(srk)
            ctx.evict_control(ESYS_TR.OWNER, handle, paravisor.AK_HANDLE)
            ctx.flush_context(handle)
        if kind is not None:
            paravisor.write_report(ctx, kind, keys, bytes(64))


@dataclass
class MetadataService:
    chains: ChainFiles
    mode: str = "ok"  # ok | garbage | error
    requests: list[tuple[str, str]] = field(default_factory=list)

    def start(self) -> "MetadataService":
        handler = type("Handler", (_MetadataHandler,), {"service": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def vcek_answer(self) -> dict:
        chain = self.chains.amd_chain.read_text()
        return {
            "vcekCert": self.chains.vcek.read_text(),
            "tcbm": "D500000000000704",
            "certificateChain": chain,
            "cacheControl": "86400",
        }

    def td_quote(self, report: bytes) -> bytes:
        return reports.td_quote(
            report, load_key(self.chains.pck_key), self.chains.pck_chain.read_bytes()
        )


class _MetadataHandler(BaseHTTPRequestHandler):
    service: MetadataService
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refused(self) -> bool:
        self.service.requests.append((self.command, self.path))
        if self.headers.get("Metadata") != "true" or "X-Forwarded-For" in self.headers:
            self._answer(400, b'{"error":"Bad request. Required metadata header not specified"}')
            return True
        if self.service.mode == "garbage":
            self._answer(200, b"<html>not the metadata service</html>", "text/html")
            return True
        if self.service.mode == "error":
            self._answer(500, b'{"error":"Internal server error"}')
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path != "/metadata/THIM/amd/certification":
            self._answer(404, b'{"error":"Not found"}')
            return
        self._answer(200, json.dumps(self.service.vcek_answer()).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if 0 < length < 65536 else b""
        if self._refused():
            return
        if self.path != "/acc/tdquote" or self.headers.get("Content-Type") != "application/json":
            self._answer(404, b'{"error":"Not found"}')
            return
        try:
            request = json.loads(body)
            text = request["report"]
            assert set(request) == {"report"} and isinstance(text, str)
            report = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            assert len(report) == 1024 and report[0] == 0x81
        except (ValueError, KeyError, AssertionError, TypeError):
            self._answer(400, b'{"error":"Invalid TD report"}')
            return
        quote = self.service.td_quote(report)
        self._answer(200, json.dumps({"quote": base64.b64encode(quote).decode()}).encode())
