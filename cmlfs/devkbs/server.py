"""dev-kbs HTTP server: Trustee's KBS protocol "0.4.0" for development and tests only.

Endpoints (as Trustee's): ``POST /kbs/v0/auth``, ``POST /kbs/v0/attest`` (only
``sample`` evidence is verified: it recomputes the JCS/SHA-384 runtime-data
digest and compares ``report_data``), ``GET /kbs/v0/resource/<repo>/<type>/<tag>``
(a JWE to the attested tee-pubkey, after the resource policy allowed it),
admin ``POST /kbs/v0/resource/...`` and ``POST /kbs/v0/resource-policy``, and
``GET /healthz``. Errors are Trustee's ``{type, detail}`` bodies, 401 for all
but bad paths (404).

Admin requests need an EdDSA bearer JWT when an admin public key is configured;
without one they are accepted only from loopback peers, and the server then
refuses to listen on anything but loopback (fail closed).

It is not a production broker: ``sample`` evidence proves nothing, and
resources are stored in clear in the repository folder.
"""

import hmac
import ipaddress
import logging
import ssl
import threading
from dataclasses import dataclass
from email.utils import formatdate
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from jwcrypto import jwk
from jwcrypto.common import JWException

from cmlfs.devkbs.jwe import JweError, encrypt_to
from cmlfs.devkbs.policy import ALLOW_ALL, Policy, PolicyError, parse_policy
from cmlfs.devkbs.repository import MAX_RESOURCE_LEN, Repository, RepositoryError
from cmlfs.devkbs.sessions import Session, SessionStore
from cmlfs.devkbs.tokens import TokenError, TokenSigner, tee_of, verify_admin_token
from cmlfs.errors import CmlfsError
from cmlfs.keys.rcar import (
    API_PREFIX,
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    TEE_TYPES,
    b64_decode,
    b64url_decode,
    dumps_compact,
    error_type,
    loads_strict,
    resource_path,
    runtime_data_digest,
)

log = logging.getLogger("cmlfs.devkbs")

BANNER = (
    "cmlfs dev-kbs is for DEVELOPMENT AND TESTS ONLY, not a production key broker: "
    "it accepts 'sample' evidence, which proves nothing, and keeps resources in clear in {repo}"
)
MAX_REQUEST_LEN = 1 << 20
REQUEST_TIMEOUT = 30.0


class DevKbsError(CmlfsError):
    """dev-kbs cannot start as configured."""


class KbsError(Exception):
    """An error answered as Trustee does: ``{"type": .../<variant>, "detail": ...}``."""

    def __init__(self, variant: str, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.variant = variant
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class DevKbsConfig:
    repository: Path
    host: str = "127.0.0.1"
    port: int = 8080
    policy: Policy = ALLOW_ALL
    admin_public_key: Path | None = None
    session_ttl: float = 300.0
    token_ttl: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None


class DevKbs:
    """The broker's state and its HTTP server; ``start`` serves in a thread, ``serve`` here."""

    def __init__(self, config: DevKbsConfig) -> None:
        self.config = config
        self.policy = config.policy
        self.repository = Repository(config.repository)
        self.sessions = SessionStore(config.session_ttl)
        self.signer = TokenSigner(config.token_ttl)
        self.admin_key = _load_admin_key(config.admin_public_key)
        if self.admin_key is None and not _is_loopback(config.host):
            raise DevKbsError(
                f"refusing to listen on {config.host} without --admin-public-key: "
                "the open admin API is only for loopback"
            )
        if not config.repository.is_dir():
            raise DevKbsError(f"repository folder {config.repository} does not exist")
        handler = type("Handler", (_Handler,), {"kbs": self})
        try:
            self.httpd = _Server((config.host, config.port), handler)
        except OSError as exc:
            raise DevKbsError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
        self.scheme = "http"
        if config.tls_cert is not None:
            self._enable_tls(config.tls_cert, config.tls_key)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"{self.scheme}://{host}:{port}"

    def _enable_tls(self, cert: Path, key: Path | None) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise DevKbsError(f"cannot load TLS certificate {cert}: {exc}") from None
        self.httpd.socket = context.wrap_socket(
            self.httpd.socket, server_side=True, do_handshake_on_connect=False
        )
        self.scheme = "https"

    def serve(self) -> None:
        log.warning("event=dev_kbs_start %s", BANNER.format(repo=self.config.repository))
        log.info("event=listening url=%s", self.url)
        self.httpd.serve_forever()

    def start(self) -> "DevKbs":
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    # --- protocol ------------------------------------------------------------------------

    def auth(self, request: object) -> tuple[Session, dict]:
        if not isinstance(request, dict) or not {"version", "tee"} <= set(request):
            raise KbsError("SerdeError", "Serialize/Deserialize failed")
        version, tee = request["version"], request["tee"]
        if version != PROTOCOL_VERSION:
            raise _auth_failed(
                f"KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} "
                f"while the request is {version}"
            )
        if tee not in TEE_TYPES:
            raise _auth_failed(f"unknown tee {tee!r}")
        session = self.sessions.create(tee)
        if session is None:
            raise KbsError("AttestationError", "Attestation error: session storage is full")
        log.info("event=auth tee=%s session=%s", tee, session.id[:8])
        return session, {"nonce": session.nonce, "extra-params": ""}

    def attest(self, session_id: str | None, request: object) -> tuple[Session, dict]:
        if session_id is None:
            raise _attest_failed("cookie not found")
        if not isinstance(request, dict):
            raise KbsError("SerdeError", "Serialize/Deserialize failed")
        session = self.sessions.get(session_id)
        if session is None:
            raise _attest_failed("session expired or unknown")
        if session.token is not None:
            return session, {"token": session.token}
        runtime, evidence = _attestation_parts(request)
        if not hmac.compare_digest(runtime["nonce"].encode(), session.nonce.encode()):
            raise _attest_failed("nonce does not match the session's challenge")
        tee_pubkey = _tee_pubkey(runtime["tee-pubkey"])
        expected = runtime_data_digest(session.nonce, tee_pubkey, evidence["additional_evidence"])
        claims = _verify_evidence(session.tee, evidence["primary_evidence"], expected)
        runtime_claims = {
            "nonce": session.nonce,
            "tee-pubkey": tee_pubkey,
            "additional-evidence": evidence["additional_evidence"],
        }
        session.token = self.signer.issue(session.tee, claims, runtime_claims)
        log.info("event=attested tee=%s session=%s", session.tee, session.id[:8])
        return session, {"token": session.token}

    def release(self, path: str, session_id: str | None, bearer: str | None) -> dict:
        session = self.sessions.get(session_id)
        token = session.token if session is not None and session.attested else bearer
        if token is None:
            raise KbsError("TokenNotFound", "Attestation Token not found")
        try:
            tee, tee_pubkey = tee_of(self.signer.verify(token))
        except TokenError as exc:
            raise KbsError("TokenVerifierError", f"Token Verifier error: {exc}") from None
        resource = _checked_path(path)
        if not self.policy.allows(tee, resource):
            log.info("event=release_denied tee=%s resource=%s", tee, resource)
            raise KbsError("PolicyDeny", "Access denied by policy")
        try:
            data = self.repository.read(resource)
        except RepositoryError:
            log.info("event=release_missing resource=%s", resource)
            raise KbsError("PluginInternalError", "Plugin internal error") from None
        try:
            response = encrypt_to(tee_pubkey, data)
        except JweError as exc:
            raise KbsError("JweError", f"JWE failed: {exc}") from None
        log.info("event=released tee=%s resource=%s", tee, resource)
        return response

    def check_admin(self, endpoint: str, peer: str, authorization: str | None) -> None:
        if self.admin_key is None:
            if not _is_loopback(peer):
                raise _admin_denied(endpoint, "no admin key configured; loopback only")
            return
        if authorization is None or not authorization.startswith("Bearer "):
            raise _admin_denied(endpoint, "no bearer token")
        try:
            verify_admin_token(authorization.removeprefix("Bearer "), self.admin_key)
        except TokenError as exc:
            raise _admin_denied(endpoint, str(exc)) from None

    def store_resource(self, path: str, data: bytes) -> None:
        resource = _checked_path(path)
        try:
            self.repository.write(resource, data)
        except RepositoryError as exc:
            raise KbsError("PluginInternalError", f"Plugin internal error: {exc}") from None
        log.info("event=resource_stored resource=%s bytes=%d", resource, len(data))

    def set_policy(self, request: object) -> None:
        if not isinstance(request, dict) or not isinstance(request.get("policy"), str):
            raise KbsError("ParsePolicyError", 'Failed to parse policy: no "policy" string')
        try:
            raw = b64url_decode(request["policy"], "policy", PolicyError)
            self.policy = parse_policy(raw)
        except PolicyError as exc:
            raise KbsError("ParsePolicyError", f"Failed to parse policy: {exc}") from None
        log.info(
            "event=policy_set default=%s rules=%d", self.policy.default, len(self.policy.rules)
        )


def _auth_failed(reason: str) -> KbsError:
    return KbsError("AttestationError", f"Attestation error: RCAR handshake Auth failed: {reason}")


def _attest_failed(reason: str) -> KbsError:
    # Trustee hides the reason here; a development broker says it.
    log.info("event=attest_failed reason=%s", reason)
    return KbsError(
        "AttestationError", f"Attestation error: RCAR handshake Attest failed: {reason}"
    )


def _admin_denied(endpoint: str, reason: str) -> KbsError:
    return KbsError("AdminAuthAccess", f"admin access denied for endpoint {endpoint}: {reason}")


def _attestation_parts(request: dict) -> tuple[dict, dict]:
    runtime = request.get("runtime-data")
    evidence = request.get("tee-evidence")
    if request.get("init-data") is not None:
        raise _attest_failed("init-data is not supported by dev-kbs")
    if (
        not isinstance(runtime, dict)
        or not isinstance(runtime.get("nonce"), str)
        or "tee-pubkey" not in runtime
        or not isinstance(evidence, dict)
        or "primary_evidence" not in evidence
        or not isinstance(evidence.get("additional_evidence", ""), str)
    ):
        raise KbsError("SerdeError", "Serialize/Deserialize failed")
    return runtime, {**evidence, "additional_evidence": evidence.get("additional_evidence", "")}


def _tee_pubkey(raw: object) -> dict:
    """The JWK re-serialized with only its algorithm's fields, as kbs-types' TeePubKey does."""
    fields = {"EC": ("kty", "crv", "alg", "x", "y"), "RSA": ("kty", "alg", "n", "e")}
    kty = raw.get("kty") if isinstance(raw, dict) else None
    if kty not in fields or not all(isinstance(raw.get(k), str) for k in fields[kty]):
        raise _attest_failed("tee-pubkey is not an EC or RSA JWK")
    return {k: raw[k] for k in fields[kty]}


def _verify_evidence(tee: str, evidence: object, expected: bytes) -> dict:
    """The sample verifier: report_data must be base64 of exactly the expected digest."""
    if tee != "sample":
        raise _attest_failed(f"dev-kbs has no verifier for {tee} evidence (only sample)")
    if not isinstance(evidence, dict) or not isinstance(evidence.get("svn"), str):
        raise _attest_failed("sample evidence is not {svn, report_data}")
    try:
        report_data = b64_decode(evidence.get("report_data", ""), "report_data", CmlfsError)
    except CmlfsError as exc:
        raise _attest_failed(str(exc)) from None
    if not hmac.compare_digest(report_data, expected):
        raise _attest_failed("REPORT_DATA is different from that in Sample Quote")
    return {
        "svn": evidence["svn"],
        "report_data": evidence.get("report_data", ""),
        "launch_digest": "abcde",
        "platform_version": {"major": 1, "minor": 4},
        "debug": False,
    }


def _checked_path(path: str) -> str:
    segments = path.split("/")
    if len(segments) != 3:
        raise KbsError("PluginInternalError", "Plugin internal error: invalid resource path")
    try:
        return resource_path(*segments, error=ValueError)
    except ValueError:
        raise KbsError(
            "PluginInternalError", "Plugin internal error: invalid resource path"
        ) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_admin_key(path: Path | None) -> jwk.JWK | None:
    if path is None:
        return None
    try:
        key = jwk.JWK.from_pem(path.read_bytes())
    except OSError as exc:
        raise DevKbsError(f"cannot read admin public key {path}: {exc.strerror}") from None
    except (ValueError, TypeError, JWException):
        raise DevKbsError(f"{path} is not a PEM public key") from None
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519":
        raise DevKbsError(f"{path} is not an Ed25519 public key")
    return key


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: tuple) -> None:
        log.info("event=connection_failed peer=%s", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    kbs: DevKbs
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "cmlfs-dev-kbs"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        try:
            self._route(method)
        except KbsError as exc:
            body = dumps_compact({"type": error_type(exc.variant), "detail": exc.detail})
            self._reply(exc.status, body, "application/json")
        except Exception:
            log.exception("event=handler_failed path=%s", self.path)
            body = dumps_compact({"type": error_type("HTTPFailed"), "detail": "internal error"})
            self._reply(500, body, "application/json")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz" and method == "GET":
            self._reply(200, b"", "text/plain")
            return
        if not path.startswith(API_PREFIX + "/"):
            raise KbsError("InvalidRequestPath", f"Request path {path} is invalid", 404)
        plugin, _, rest = path.removeprefix(API_PREFIX + "/").partition("/")
        kbs = self.kbs
        if (plugin, method) == ("auth", "POST"):
            session, challenge = kbs.auth(self._json())
            self._reply(200, dumps_compact(challenge), "application/json", session)
        elif (plugin, method) == ("attest", "POST"):
            session, result = kbs.attest(self._cookie(), self._json())
            self._reply(200, dumps_compact(result), "application/json", session)
        elif (plugin, method) == ("resource-policy", "POST"):
            kbs.check_admin(path, self.client_address[0], self.headers.get("Authorization"))
            kbs.set_policy(self._json())
            self._reply(200, b"", "text/xml")
        elif (plugin, method) == ("resource", "GET"):
            bearer = self.headers.get("Authorization", "")
            token = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
            result = kbs.release(rest, self._cookie(), token)
            self._reply(200, dumps_compact(result), "application/json")
        elif (plugin, method) == ("resource", "POST"):
            kbs.check_admin(path, self.client_address[0], self.headers.get("Authorization"))
            kbs.store_resource(rest, self._body(MAX_RESOURCE_LEN))
            self._reply(200, b"", "text/xml")
        elif plugin in ("auth", "attest", "resource-policy", "resource"):
            raise KbsError("InvalidRequestPath", f"Request path {path} is invalid", 404)
        else:
            raise KbsError("PluginNotFound", f"Plugin {plugin} not found", 404)

    def _body(self, cap: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise KbsError("HTTPFailed", "a Content-Length is required", 411)
        if int(length) > cap:
            raise KbsError("HTTPFailed", f"request body larger than {cap} bytes", 413)
        return self.rfile.read(int(length))

    def _json(self) -> object:
        try:
            return loads_strict(self._body(MAX_REQUEST_LEN), "request", ValueError)
        except ValueError:
            raise KbsError("SerdeError", "Serialize/Deserialize failed") from None

    def _cookie(self) -> str | None:
        header = self.headers.get("Cookie")
        if header is None:
            return None
        jar = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            return None
        morsel = jar.get(SESSION_COOKIE)
        return morsel.value if morsel is not None else None

    def _reply(
        self, status: int, body: bytes, content_type: str, session: Session | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if session is not None:
            expires = formatdate(session.expires, usegmt=True)
            self.send_header("Set-Cookie", f"{SESSION_COOKIE}={session.id}; Expires={expires}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("event=http peer=%s %s", self.client_address[0], format % args)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen takes HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def load_policy_file(path: Path) -> Policy:
    try:
        return parse_policy(path.read_bytes())
    except OSError as exc:
        raise DevKbsError(f"cannot read policy {path}: {exc.strerror}") from None
    except PolicyError as exc:
        raise DevKbsError(f"policy {path}: {exc}") from None
