"""A registry token service for tests (Docker registry token authentication, loopback only).

Implements what distribution's ``auth: token:`` access controller expects
(docs/spec/auth/token.md and ``registry/auth/token`` at v2.8): ``GET
/token?service=S&scope=repository:NAME:ACTIONS`` with optional HTTP basic
credentials answers ``{"token": JWT, ...}``. The JWT is signed with ES256 by a
key whose self-signed certificate travels in the ``x5c`` header; the registry
trusts it through its ``rootcertbundle`` (``root_bundle`` here). Claims:
``iss``, ``sub``, ``aud`` (the service, a string), ``exp``/``nbf``/``iat``,
``jti`` and ``access``: for each requested scope, only the actions the user
may have (an anonymous client gets an empty grant, as Docker Hub gives for a
private repository). Wrong credentials get 401. Every grant is recorded.
"""

import base64
import binascii
import datetime
import hmac
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jws

TOKEN_LIFETIME = 300  # seconds, as distribution's own token servers default to


@dataclass(frozen=True)
class Grant:
    user: str  # "" for an anonymous client
    scopes: tuple[str, ...]  # as asked
    access: tuple[tuple[str, tuple[str, ...]], ...]  # (repository, actions) granted


@dataclass
class TokenServer:
    """Token service on 127.0.0.1; ``acl`` maps user -> {repository: allowed actions}."""

    folder: Path  # where the root bundle (the signing certificate) is written
    service: str
    passwords: dict[str, str]
    acl: dict[str, dict[str, frozenset[str]]]
    tls: tuple[Path, Path] | None = None  # (server certificate, key): serve HTTPS
    issuer: str = "cmlfs-test-token-issuer"
    grants: list[Grant] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._key, certificate = _signing_key()
        self._x5c = [base64.b64encode(certificate.public_bytes(serialization.Encoding.DER))]
        self.root_bundle = self.folder / "token-root.pem"
        self.root_bundle.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}/token"

    def registry_auth_config(self) -> list[str]:
        """The ``auth:`` section of a distribution config that trusts this service."""
        return [
            "auth:",
            "  token:",
            f"    realm: {self.realm}",
            f"    service: {self.service}",
            f"    issuer: {self.issuer}",
            f"    rootcertbundle: {self.root_bundle}",
        ]

    def issue(self, user: str, scopes: list[str]) -> str:
        """A signed token for ``user`` granting the part of ``scopes`` the ACL allows."""
        allowed = self.acl.get(user, {})
        access: dict[str, list[str]] = {}
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            granted = access.setdefault(name, [])
            for action in actions.split(","):
                if action in allowed.get(name, frozenset()) and action not in granted:
                    granted.append(action)
        access = {name: actions for name, actions in access.items() if actions}
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": self.service,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": [
                {"type": "repository", "name": name, "actions": actions}
                for name, actions in access.items()
            ],
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [c.decode() for c in self._x5c]}
        token = jws.JWS(json.dumps(claims).encode())
        token.add_signature(self._key, alg="ES256", protected=json.dumps(header))
        with self._lock:
            self.grants.append(
                Grant(user, tuple(scopes), tuple((n, tuple(a)) for n, a in access.items()))
            )
        return token.serialize(compact=True)

    def authenticate(self, authorization: str | None) -> str | None:
        """The user named by basic credentials ("" for none), or None if they are wrong."""
        if not authorization:
            return ""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        expected = self.passwords.get(user)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            return None
        return user

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    server_owner: TokenServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        owner = self.server_owner
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path != "/token":
            return self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
        if query.get("service") != [owner.service]:
            return self._answer(400, {"errors": [{"code": "UNSUPPORTED", "message": "service"}]})
        user = owner.authenticate(self.headers.get("Authorization"))
        if user is None:
            return self._answer(401, {"errors": [{"code": "UNAUTHORIZED"}]})
        token = owner.issue(user, query.get("scope", []))
        issued = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._answer(
            200,
            {
                "token": token,
                "access_token": token,
                "expires_in": TOKEN_LIFETIME,
                "issued_at": issued,
            },
        )

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reads ``grants`` instead of a log."""


def _signing_key() -> tuple[jwk.JWK, x509.Certificate]:
    """An ES256 key and its self-signed certificate (the registry's root bundle)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cmlfs test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return jwk.JWK.from_pyca(key), certificate
