"""dev-kbs HTTP server: Trustee's KBS protocol "0.4.0" for development and tests only.

Endpoints (as Trustee's): ``POST /kbs/v0/auth``, ``POST /kbs/v0/attest``
(bodies parsed as kbs-types' serde shapes, see ``protocol``; the evidence
checked by the verifier of its TEE type against the JCS/SHA-384 runtime-data
digest dev-kbs computes itself: ``sample.py``, or Azure vTPM evidence with
``vtpm.py`` against the vendor roots given by ``--amd-chain``/``--intel-root``),
``GET /kbs/v0/resource/<repo>/<type>/<tag>`` (a JWE to the attested
tee-pubkey, after the resource policy allowed it), admin
``POST /kbs/v0/resource/...`` and ``POST /kbs/v0/resource-policy``, and
``GET /healthz``. Errors are Trustee's ``{type, detail}`` bodies with the
variant Trustee answers in the same case (trustee kbs/src/error.rs,
kbs/src/api_server.rs, kbs/src/attestation/backend.rs), 401 for all but
unknown paths and plugins (404); where Trustee hides the reason, dev-kbs adds it.

Admin requests need an EdDSA bearer JWT with a ``role`` claim when an admin
public key is configured; without one they are accepted only from loopback
peers, and the server then refuses to listen on anything but loopback.

It is not a production broker: ``sample`` evidence proves nothing, vendor
roots are whatever its options say, and resources are stored in clear in the
repository folder. It listens on
loopback unless told ``listen_anywhere`` (``--insecure-dev-listen-anywhere``),
and its default policy releases to ``sample`` evidence only on loopback.
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
from cmlfs.devkbs.policy import DEFAULT_POLICY, Policy, PolicyError, parse_policy
from cmlfs.devkbs.protocol import BodyError, VersionError, parse_attestation, parse_request
from cmlfs.devkbs.repository import MAX_RESOURCE_LEN, Repository, RepositoryError
from cmlfs.devkbs.sample import verify_sample
from cmlfs.devkbs.sessions import Session, SessionStore
from cmlfs.devkbs.tokens import TokenError, TokenSigner, tee_of, verify_admin_token
from cmlfs.devkbs.verify import VerifyError
from cmlfs.devkbs.vtpm import TEES as VTPM_TEES
from cmlfs.devkbs.vtpm import TrustRoots, verify_vtpm
from cmlfs.errors import CmlfsError
from cmlfs.format.strictjson import loads_strict
from cmlfs.keys.rcar import (
    ADMIN_ROLE,
    API_PREFIX,
    SESSION_COOKIE,
    b64url_decode,
    dumps_compact,
    error_type,
    resource_path,
    runtime_data_digest,
)
from cmlfs.logfmt import quote

log = logging.getLogger(__name__)

BANNER = (
    "cmlfs dev-kbs is for DEVELOPMENT AND TESTS ONLY, not a production key broker: "
    "it accepts 'sample' evidence, which proves nothing, and keeps resources in clear in {repo}"
)
LISTEN_ANYWHERE_OPTION = "--insecure-dev-listen-anywhere"
MAX_REQUEST_LEN = 2 << 20  # Trustee's default payload_request_size (2 MiB)
REQUEST_TIMEOUT = 30.0
WRITE_BUFFER_LEN = 64 * 1024  # an answer up to this long (head and body) leaves in one write


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
    policy: Policy = DEFAULT_POLICY
    admin_public_key: Path | None = None
    admin_issuer: str | None = None  # required `iss` of admin tokens (None: not checked)
    admin_audience: str | None = None  # required `aud` of admin tokens (None: not checked)
    listen_anywhere: bool = False  # serve a non-loopback address (never by default)
    amd_chain: Path | None = None  # ASK+ARK PEM the az-snp-vtpm VCEK must chain to
    intel_root: Path | None = None  # root certificate the az-tdx-vtpm TD quote must chain to
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
        try:
            self.roots = TrustRoots.load(config.amd_chain, config.intel_root)
        except (OSError, ValueError) as exc:
            raise DevKbsError(
                f"cannot load a vendor root (--amd-chain/--intel-root): {exc}"
            ) from None
        if not config.listen_anywhere and not _is_loopback(config.host):
            raise DevKbsError(
                f"refusing to listen on {config.host}: dev-kbs is a development broker that "
                f"releases keys to unverifiable evidence; pass {LISTEN_ANYWHERE_OPTION} to "
                "serve other machines anyway"
            )
        if self.admin_key is None and (config.admin_issuer or config.admin_audience):
            raise DevKbsError("--admin-issuer and --admin-audience need --admin-public-key")
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
        log.warning(
            "event=dev_kbs_start reason=%s", quote(BANNER.format(repo=self.config.repository))
        )
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

    def auth(self, body: bytes) -> tuple[Session, dict]:
        try:
            request = parse_request(body)
        except VersionError as exc:
            raise _auth_failed(str(exc)) from None
        except BodyError as exc:
            raise _auth_failed(f"deserialize Request: {exc}") from None
        session = self.sessions.create(request.tee)
        if session is None:
            raise KbsError("AttestationError", "Attestation error: session storage is full")
        log.info("event=auth tee=%s session=%s", request.tee, session.id[:8])
        return session, {"nonce": session.nonce, "extra-params": ""}

    def attest(self, session_id: str | None, body: bytes) -> tuple[Session, dict]:
        # Trustee's order (attestation/backend.rs): cookie, body, session, nonce, evidence.
        if session_id is None:
            raise _attest_failed("cookie not found")
        try:
            attestation = parse_attestation(body)
        except BodyError as exc:
            raise _attest_failed(f"deserialize Attestation: {exc}") from None
        session = self.sessions.get(session_id)
        if session is None:
            raise _attest_failed("session not found (unknown, or expired)")
        if session.token is not None:
            return session, {"token": session.token}
        if not hmac.compare_digest(attestation.nonce.encode(), session.nonce.encode()):
            raise _attest_failed(
                "the nonce in the handshake session is different from the client side "
                "in KBS protocol's Attestation message"
            )
        expected = runtime_data_digest(
            session.nonce, attestation.tee_pubkey, attestation.additional_evidence
        )
        claims = self.verify_evidence(session.tee, attestation.primary_evidence, expected)
        runtime_claims = {
            "nonce": session.nonce,
            "tee-pubkey": attestation.tee_pubkey,
            "additional-evidence": attestation.additional_evidence,
        }
        session.token = self.signer.issue(session.tee, claims, runtime_claims)
        log.info("event=attested tee=%s session=%s", session.tee, session.id[:8])
        return session, {"token": session.token}

    def verify_evidence(self, tee: str, evidence: object, expected: bytes) -> dict:
        """The claims of ``evidence`` by the verifier of ``tee``, or Trustee's AttestationError."""
        try:
            if tee == "sample":
                return verify_sample(evidence, expected)
            if tee in VTPM_TEES:
                return verify_vtpm(tee, evidence, expected, self.roots)
        except VerifyError as exc:
            raise _attest_failed(f"verify TEE evidence failed: {tee} evidence: {exc}") from None
        raise _attest_failed(
            f"dev-kbs has no verifier for {tee} evidence (sample, {', '.join(sorted(VTPM_TEES))})"
        )

    def release(self, path: str, session_id: str | None, bearer: str | None, peer: str) -> dict:
        session = self.sessions.get(session_id)
        token = session.token if session is not None and session.attested else bearer
        if token is None:
            raise KbsError("TokenNotFound", "Attestation Token not found")
        try:
            tee, tee_pubkey = tee_of(self.signer.verify(token))
        except TokenError as exc:
            raise KbsError("TokenVerifierError", f"Token Verifier error: {exc}") from None
        resource = _checked_path(path)
        if not self.policy.allows(tee, resource, loopback=_is_loopback(peer)):
            log.info("event=release_denied tee=%s resource=%s peer=%s", tee, quote(resource), peer)
            raise KbsError("PolicyDeny", "Access denied by policy")
        try:
            data = self.repository.read(resource)
        except RepositoryError:
            log.info("event=release_missing resource=%s", quote(resource))
            raise KbsError("PluginInternalError", "Plugin internal error") from None
        try:
            response = encrypt_to(tee_pubkey, data)
        except JweError as exc:
            raise KbsError("JweError", f"JWE failed: {exc}") from None
        log.info("event=released tee=%s resource=%s", tee, quote(resource))
        return response

    def check_admin(self, uri: str, peer: str, authorization: str | None) -> None:
        """Trustee's admin check (admin/mod.rs); AdminDenied carries its error's text."""
        if self.admin_key is None:
            if not _is_loopback(peer):
                raise AdminDenied("Admin access denied: no admin key configured; loopback only")
            return
        if authorization is None or not authorization.startswith("Bearer "):
            raise AdminDenied("Failed to parse HTTP Auth Bearer header")
        try:
            role = verify_admin_token(
                authorization.removeprefix("Bearer "),
                self.admin_key,
                self.config.admin_issuer,
                self.config.admin_audience,
            )
        except TokenError as exc:
            raise AdminDenied(f"Admin access denied: {exc}") from None
        # dev-kbs's ACL (Trustee's regex_acl, fixed): this role may use every admin endpoint
        if role != ADMIN_ROLE:
            raise AdminDenied(f"Admin access denied: Role {role[:64]} not allowed for path {uri}")

    def store_resource(self, path: str, data: bytes) -> None:
        resource = _checked_path(path)
        try:
            self.repository.write(resource, data)
        except RepositoryError as exc:
            raise KbsError("PluginInternalError", f"Plugin internal error: {exc}") from None
        log.info("event=resource_stored resource=%s bytes=%d", quote(resource), len(data))

    def set_policy(self, body: bytes) -> None:
        """Trustee's checks and texts (api_server.rs, resource-policy POST)."""
        try:
            request = loads_strict(body, "SetPolicy request", ValueError)
        except ValueError:
            raise _policy_error("Illegal SetPolicy Request Json") from None
        if not isinstance(request, dict) or "policy" not in request:
            raise _policy_error("No `policy` field inside SetPolicy Request Json")
        if not isinstance(request["policy"], str):
            raise _policy_error("`policy` field is not a string in SetPolicy Request Json")
        try:
            raw = b64url_decode(request["policy"], "policy", PolicyError)
        except PolicyError as exc:
            raise _policy_error(f"Failed to decode policy: {exc}") from None
        try:
            self.policy = parse_policy(raw)
        except PolicyError as exc:
            # where Trustee's Rego engine would refuse the policy text
            raise KbsError("PolicyEngineError", f"Policy engine error: {exc}") from None
        log.info(
            "event=policy_set default=%s rules=%d", self.policy.default, len(self.policy.rules)
        )


class AdminDenied(Exception):
    """An admin request refused; ``str`` is the text of Trustee's admin error."""


def _auth_failed(reason: str) -> KbsError:
    return KbsError("AttestationError", f"Attestation error: RCAR handshake Auth failed: {reason}")


def _attest_failed(reason: str) -> KbsError:
    # Trustee hides the reason here; a development broker says it.
    log.info("event=attest_failed reason=%s", quote(reason))
    return KbsError(
        "AttestationError", f"Attestation error: RCAR handshake Attest failed: {reason}"
    )


def _policy_error(reason: str) -> KbsError:
    return KbsError("ParsePolicyError", f"Failed to parse policy: {reason}")


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
    # Each reply leaves in one write, head and body together, as Trustee's server sends it
    # (actix-http src/h1/dispatcher.rs encodes both into one write_buf). Written apart, the
    # body waited behind Nagle's algorithm for the client's delayed ACK: ~40 ms per answer.
    wbufsize = WRITE_BUFFER_LEN

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
            log.exception("event=handler_failed path=%s", quote(self.path))
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
        peer = self.client_address[0]
        if (plugin, method) == ("auth", "POST"):
            session, challenge = kbs.auth(self._body(MAX_REQUEST_LEN))
            self._reply(200, dumps_compact(challenge), "application/json", session)
        elif (plugin, method) == ("attest", "POST"):
            session, result = kbs.attest(self._cookie(), self._body(MAX_REQUEST_LEN))
            self._reply(200, dumps_compact(result), "application/json", session)
        elif (plugin, method) == ("resource-policy", "POST"):
            self._admin(plugin)
            kbs.set_policy(self._body(MAX_REQUEST_LEN))
            self._reply(200, b"", "text/xml")
        elif (plugin, method) == ("resource", "GET"):
            bearer = self.headers.get("Authorization", "")
            token = bearer.removeprefix("Bearer ") if bearer.startswith("Bearer ") else None
            result = kbs.release(rest, self._cookie(), token, peer)
            self._reply(200, dumps_compact(result), "application/json")
        elif (plugin, method) == ("resource", "POST"):
            self._admin(plugin)
            kbs.store_resource(rest, self._body(MAX_RESOURCE_LEN))
            self._reply(200, b"", "text/xml")
        elif plugin == "resource":
            raise KbsError("InvalidRequestPath", f"Request path {path} is invalid", 404)
        else:  # Trustee's auth, attest and resource-policy serve POST only
            raise KbsError("PluginNotFound", f"Plugin {plugin} not found", 404)

    def _admin(self, plugin: str) -> None:
        """The admin check, refused with the variant Trustee's api_server.rs gives."""
        try:
            self.kbs.check_admin(
                self.path, self.client_address[0], self.headers.get("Authorization")
            )
        except AdminDenied as exc:
            if plugin == "resource":
                # a plugin's admin check fails through `?`, i.e. From<admin::Error>
                raise KbsError(
                    "AdminAuthInitialization", f"failed to initialize [admin] configuration: {exc}"
                ) from None
            raise KbsError(
                "AdminAuthAccess", f"admin access denied for endpoint {plugin}: {exc}"
            ) from None

    def _body(self, cap: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise KbsError("HTTPFailed", "a Content-Length is required", 411)
        if int(length) > cap:
            raise KbsError("HTTPFailed", f"request body larger than {cap} bytes", 413)
        return self.rfile.read(int(length))

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
        log.debug("event=http peer=%s request=%s", self.client_address[0], quote(format % args))


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
