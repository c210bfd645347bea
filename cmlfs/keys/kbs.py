"""Trustee KBS client: release a model key after attestation (RCAR, protocol "0.4.0").

One release = one fresh ephemeral key pair (EC P-256 for ECDH-ES+A256KW by
default, or RSA-OAEP-256) + one handshake: ``POST /kbs/v0/auth`` (nonce and
session cookie), evidence over the JCS/SHA-384 digest of ``{nonce, tee-pubkey}``,
``POST /kbs/v0/attest``, then ``GET /kbs/v0/resource/<repo>/<type>/<tag>``
answered with a JWE only the ephemeral private key opens. A 401 that means the
session is gone (expired, unknown) triggers a new handshake, a bounded number
of times. Every broker error body ``{type, detail}`` becomes one line.

The publishing side is here too: ``register_resource`` stores a resource
through the admin API with an EdDSA bearer token (``role``, and ``iss``/``aud``
for deployments whose identity provider entry checks them).

Never writes the key anywhere, never logs it, never puts it in a message.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwe, jwk, jwt
from jwcrypto.common import JWException

from cmlfs.errors import KeySourceError
from cmlfs.format.strictjson import loads_strict
from cmlfs.keys.attesters import Attester, select_attester
from cmlfs.keys.base import KeySettings, ReleasedKey
from cmlfs.keys.bundle import parse_resource
from cmlfs.keys.rcar import (
    ADMIN_ROLE,
    API_PREFIX,
    DEFAULT_HASH,
    HASH_ALGORITHMS,
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    b64url_decode,
    b64url_encode,
    dumps_compact,
    error_variant,
    resource_path,
    runtime_data_digest,
)
from cmlfs.keys.transport import UnreachableError, new_session, read_capped, send

log = logging.getLogger(__name__)

MAX_JSON_RESPONSE = 1 << 20  # challenge, token: EAR tokens with TDX claims are tens of KiB
MAX_RESOURCE_RESPONSE = 64 * 1024  # a JWE of a key or a key bundle is well under 8 KiB
# Trustee refuses request bodies above payload_request_size MiB, 2 by default
# (kbs/src/config.rs DEFAULT_PAYLOAD_REQUEST_SIZE): a TDX event log can pass that.
MAX_REQUEST_BODY = 2 << 20
HANDSHAKE_ATTEMPTS = 3
RESOURCE_ATTEMPTS = 3
RETRY_DELAY = 0.5
ADMIN_TOKEN_LIFETIME = 300
CONTENT_ENCRYPTION = "A256GCM"
# 401 types after which a new handshake may help: the session or token is gone.
_SESSION_LOST = {"TokenNotFound", "TokenVerifierError", "AttestationError"}
_JWE_KEYS = {"protected", "encrypted_key", "iv", "ciphertext", "tag"}


@dataclass(frozen=True)
class KbsResource:
    """A parsed ``kbs://HOST:PORT/REPO/TYPE/TAG``."""

    base_url: str  # https://HOST:PORT (http:// only with insecure_kbs_http)
    path: str  # repo/type/tag

    @property
    def uri(self) -> str:
        return f"kbs://{urlsplit(self.base_url).netloc}/{self.path}"


def parse_kbs_uri(uri: str, settings: KeySettings) -> KbsResource:
    parts = _split_kbs_uri(uri)
    segments = parts.path.split("/")
    if parts.scheme != "kbs" or not parts.hostname or len(segments) != 4 or segments[0]:
        raise KeySourceError(f"a KBS key URI is kbs://HOST:PORT/REPO/TYPE/TAG, not {uri!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise KeySourceError(f"a KBS key URI carries no query, fragment or user: {uri!r}")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise KeySourceError(f"invalid port in {uri!r}") from None
    scheme = "http" if settings.insecure_kbs_http else "https"
    path = resource_path(*segments[1:], error=KeySourceError)
    return KbsResource(f"{scheme}://{parts.netloc}", path)


def _split_kbs_uri(uri: str):
    """``urlsplit`` with its ValueError (e.g. ``kbs://[x/...``) as a KeySourceError."""
    try:
        return urlsplit(uri)
    except ValueError:
        raise KeySourceError(f"invalid key broker URI {uri!r}") from None


class TeeKeyPair:
    """The ephemeral key pair of one release; its public JWK is bound into the evidence."""

    def __init__(self, kind: str) -> None:
        if kind == "ec":
            private = ec.generate_private_key(ec.SECP256R1())
            numbers = private.public_key().public_numbers()
            self.alg = "ECDH-ES+A256KW"
            self.public_jwk = {
                "kty": "EC",
                "crv": "P-256",
                "alg": self.alg,
                "x": b64url_encode(numbers.x.to_bytes(32, "big")),
                "y": b64url_encode(numbers.y.to_bytes(32, "big")),
            }
        elif kind == "rsa":
            private = rsa.generate_private_key(public_exponent=65537, key_size=3072)
            numbers = private.public_key().public_numbers()
            self.alg = "RSA-OAEP-256"
            self.public_jwk = {
                "kty": "RSA",
                "alg": self.alg,
                "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                "e": b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            }
        else:
            raise KeySourceError(f"unknown TEE key type {kind!r} (ec or rsa)")
        self._private = jwk.JWK.from_pyca(private)

    def decrypt(self, body: bytes) -> bytes:
        """Open the broker's flattened JWE; anything but alg/A256GCM to this key is refused."""
        fields = loads_strict(body, "the broker's resource response", KeySourceError)
        if (
            not isinstance(fields, dict)
            or not _JWE_KEYS <= set(fields) <= _JWE_KEYS | {"aad"}
            or not all(isinstance(v, str) for v in fields.values())
        ):
            raise KeySourceError("the broker's resource response is not a flattened JWE")
        header = loads_strict(
            b64url_decode(fields["protected"], "JWE protected header", KeySourceError),
            "JWE protected header",
            KeySourceError,
        )
        if not isinstance(header, dict):
            raise KeySourceError("JWE protected header is not an object")
        if header.get("alg") != self.alg or header.get("enc") != CONTENT_ENCRYPTION:
            raise KeySourceError(
                f"JWE uses alg={header.get('alg')!r} enc={header.get('enc')!r}, "
                f"expected {self.alg}/{CONTENT_ENCRYPTION}"
            )
        if "zip" in header or "crit" in header:
            raise KeySourceError("JWE protected header asks for compression or critical extensions")
        token = jwe.JWE()
        token.allowed_algs = [self.alg, CONTENT_ENCRYPTION]
        try:
            token.deserialize(body.decode("utf-8"), key=self._private)
        except (JWException, ValueError, TypeError, KeyError):
            raise KeySourceError(
                "the broker's JWE does not open with this release's key "
                "(encrypted to another key, or damaged)"
            ) from None
        return bytes(token.payload)


class BrokerError(KeySourceError):
    """The broker answered with an error body; ``variant`` is its type (e.g. PolicyDeny)."""

    def __init__(self, message: str, variant: str, status: int) -> None:
        super().__init__(message)
        self.variant = variant
        self.status = status


class KbsClient:
    """One broker connection: handshakes and resource requests."""

    def __init__(
        self,
        base_url: str,
        attester: Attester,
        settings: KeySettings,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url
        self.attester = attester
        self.settings = settings
        self._sleep = sleep
        self._http = new_session(settings)
        self._cookie: str | None = None
        self._keys: TeeKeyPair | None = None
        self.handshakes = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "KbsClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handshake(self) -> None:
        """A full RCAR handshake with a new key pair.

        Retried when the broker is unreachable or failing (5xx); a refusal or a
        malformed answer ends it at once.
        """
        for attempt in range(1, HANDSHAKE_ATTEMPTS + 1):
            try:
                self._handshake_once()
                return
            except (UnreachableError, BrokerError) as exc:
                transient = not isinstance(exc, BrokerError) or exc.status >= 500
                if not transient or attempt == HANDSHAKE_ATTEMPTS:
                    raise
            log.warning("event=kbs_handshake_retry broker=%s attempt=%d", self.base_url, attempt)
            self._sleep(RETRY_DELAY * attempt)

    def get_resource(self, path: str) -> bytes:
        """The decrypted resource at ``repo/type/tag``; handshakes first when needed."""
        for attempt in range(1, RESOURCE_ATTEMPTS + 1):
            if self._cookie is None or self._keys is None:
                self.handshake()
            assert self._keys is not None
            response = send(
                self._http,
                "GET",
                f"{self.base_url}{API_PREFIX}/resource/{path}",
                self.settings,
                headers={"Cookie": f"{SESSION_COOKIE}={self._cookie}"},
            )
            if response.status_code == 200:
                body = read_capped(
                    response, MAX_RESOURCE_RESPONSE, "the broker's resource response"
                )
                return self._keys.decrypt(body)
            error = self._error(response, f"release of {path}")
            if error.status != 401 or error.variant not in _SESSION_LOST:
                raise error
            if attempt == RESOURCE_ATTEMPTS:
                raise KeySourceError(f"{error} (still refused after {attempt} handshakes)")
            log.info("event=kbs_session_lost broker=%s type=%s", self.base_url, error.variant)
            self._cookie = None
        raise AssertionError("unreachable")

    def _handshake_once(self) -> None:
        self._cookie = None
        self._keys = TeeKeyPair(self.settings.tee_key_type)
        request = {
            "version": PROTOCOL_VERSION,
            "tee": self.attester.tee,
            "extra-params": {"supported-hash-algorithms": sorted(HASH_ALGORITHMS)},
        }
        response = self._post_json("auth", request, "handshake (auth)")
        cookie = _session_cookie(response)
        challenge = self._json_body(response, "the broker's challenge")
        nonce, hash_name = _parse_challenge(challenge)
        digest = runtime_data_digest(nonce, self._keys.public_jwk, "", hash_name)
        attestation = {
            "init-data": None,
            "runtime-data": {"nonce": nonce, "tee-pubkey": self._keys.public_jwk},
            "tee-evidence": {
                "primary_evidence": self.attester.evidence(digest),
                "additional_evidence": "",
            },
        }
        response = self._post_json("attest", attestation, "attestation", cookie)
        result = self._json_body(response, "the broker's attestation result")
        if not isinstance(result, dict) or not isinstance(result.get("token"), str):
            raise KeySourceError("the broker's attestation result carries no token")
        self._cookie = _session_cookie(response, default=cookie)
        self.handshakes += 1
        log.info("event=kbs_attested broker=%s tee=%s", self.base_url, self.attester.tee)

    def _post_json(
        self, endpoint: str, document: object, what: str, cookie: str | None = None
    ) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if cookie is not None:
            headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
        body = dumps_compact(document)
        if len(body) > MAX_REQUEST_BODY:
            raise KeySourceError(
                f"the {what} request is {len(body)} bytes, over the {MAX_REQUEST_BODY >> 20} MiB "
                "a Trustee KBS accepts by default (the TEE's event log is too large)"
            )
        response = send(
            self._http,
            "POST",
            f"{self.base_url}{API_PREFIX}/{endpoint}",
            self.settings,
            body=body,
            headers=headers,
        )
        if response.status_code != 200:
            raise self._error(response, what)
        return response

    def _json_body(self, response: requests.Response, what: str) -> object:
        return loads_strict(read_capped(response, MAX_JSON_RESPONSE, what), what, KeySourceError)

    def _error(self, response: requests.Response, what: str) -> BrokerError:
        return broker_error(response, f"{what} at {self.base_url}")


def broker_error(response: requests.Response, what: str) -> BrokerError:
    """One line from a KBS error response: ``<what> refused: <Variant>: <detail>``."""
    status = response.status_code
    try:
        body = read_capped(response, 16384, "the broker's error response")
        info = loads_strict(body, "error", KeySourceError)
    except KeySourceError:
        info = None
    if (
        isinstance(info, dict)
        and isinstance(info.get("type"), str)
        and isinstance(info.get("detail"), str)
        and (variant := error_variant(info["type"])) is not None
    ):
        detail = _one_line(info["detail"])
        hint = _HINTS.get(variant, "")
        return BrokerError(f"{what} refused: {variant}: {detail}{hint}", variant, status)
    return BrokerError(f"{what} failed: HTTP {status} {response.reason or ''}".rstrip(), "", status)


# Trustee answers a refused admin token with AdminAuthAccess on its own endpoints and,
# through its plugin path, with AdminAuthInitialization (kbs/src/api_server.rs).
_ADMIN_HINT = (
    " (the broker refused the admin request: check --admin-key, and --admin-issuer and "
    "--admin-audience when its identity provider checks them)"
)
_HINTS = {
    "AdminAuthAccess": _ADMIN_HINT,
    "AdminAuthInitialization": _ADMIN_HINT,
    "PolicyDeny": " (the broker's resource policy does not release this key to this machine)",
    "PluginInternalError": " (no such resource on the broker, or it could not be read)",
    "PluginNotFound": " (the broker's resource plugin is not enabled)",
}


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in " ".join(text.split()))[:300]


def _session_cookie(response: requests.Response, default: str | None = None) -> str:
    for header in response.raw.headers.getlist("Set-Cookie"):
        jar = SimpleCookie()
        try:
            jar.load(header)
        except CookieError:
            continue
        morsel = jar.get(SESSION_COOKIE)
        if morsel is not None and 0 < len(morsel.value) <= 256:
            return morsel.value
    if default is None:
        raise KeySourceError(f"the broker set no {SESSION_COOKIE} cookie")
    return default


def _parse_challenge(challenge: object) -> tuple[str, str]:
    if not isinstance(challenge, dict) or not isinstance(challenge.get("nonce"), str):
        raise KeySourceError("the broker's challenge has no nonce")
    nonce = challenge["nonce"]
    if not 0 < len(nonce) <= 1024:
        raise KeySourceError("the broker's challenge nonce has an invalid length")
    hash_name = DEFAULT_HASH
    extra = challenge.get("extra-params")
    if isinstance(extra, dict) and "selected-hash-algorithm" in extra:
        hash_name = extra["selected-hash-algorithm"]
        # any JSON value: a list or an object is unhashable, so check the type first
        if not isinstance(hash_name, str) or hash_name not in HASH_ALGORITHMS:
            raise KeySourceError(
                f"the broker selected an unsupported hash {_one_line(repr(hash_name))[:80]}"
            )
    return nonce, hash_name


class KbsKeySource:
    """``kbs://HOST:PORT/REPO/TYPE/TAG``: a key released by a Trustee KBS after attestation."""

    def __init__(self, resource: KbsResource, settings: KeySettings) -> None:
        self.resource = resource
        self.settings = settings
        # Over plain HTTP anyone on the path can play the broker and hand out a key of their own.
        self.authenticated = resource.base_url.startswith("https://")

    def describe(self) -> str:
        return f"key broker {self.resource.uri}"

    def fetch_release(self) -> ReleasedKey:
        return parse_resource(self.fetch_resource())

    def fetch_resource(self) -> bytes:
        attester = select_attester(self.settings)
        with KbsClient(self.resource.base_url, attester, self.settings) as client:
            return client.get_resource(self.resource.path)


@dataclass(frozen=True)
class AdminIdentity:
    """Who signs admin tokens: the Ed25519 key, and the ``iss``/``aud`` a deployment checks.

    Trustee's ``bearer_jwt`` admin authentication compares ``iss`` and looks for
    ``aud`` only when its identity-provider entry names them; then they must match.
    """

    key_pem: Path
    issuer: str | None = None
    audience: str | None = None


def admin_token(admin: AdminIdentity) -> str:
    """An EdDSA (Ed25519) bearer JWT for Trustee's admin API: iat, exp, role (iss, aud)."""
    admin_key_pem = admin.key_pem
    try:
        key = jwk.JWK.from_pem(admin_key_pem.read_bytes())
    except OSError as exc:
        raise KeySourceError(f"cannot read admin key {admin_key_pem}: {exc.strerror}") from None
    except (ValueError, TypeError, JWException):
        raise KeySourceError(f"{admin_key_pem} is not a PEM private key") from None
    if key.get("kty") != "OKP" or key.get("crv") != "Ed25519" or not key.has_private:
        raise KeySourceError(f"{admin_key_pem} is not an Ed25519 private key")
    now = int(time.time())
    claims = {"iat": now, "nbf": now, "exp": now + ADMIN_TOKEN_LIFETIME, "role": ADMIN_ROLE}
    if admin.issuer is not None:
        claims["iss"] = admin.issuer
    if admin.audience is not None:
        claims["aud"] = admin.audience
    token = jwt.JWT(header={"alg": "EdDSA", "typ": "JWT"}, claims=claims)
    token.make_signed_token(key)
    return token.serialize()


def register_resource(
    uri: str, data: bytes, settings: KeySettings, admin: AdminIdentity | None = None
) -> str:
    """Store ``data`` at a ``kbs://`` URI through the admin API; returns the URI registered."""
    resource = parse_kbs_uri(uri, settings)
    _admin_post(
        resource.base_url,
        f"resource/{resource.path}",
        data,
        "application/octet-stream",
        settings,
        admin,
    )
    return resource.uri


def set_resource_policy(
    broker_uri: str, policy: bytes, settings: KeySettings, admin: AdminIdentity | None = None
) -> None:
    """Replace the broker's resource policy (Rego for Trustee, JSON for dev-kbs)."""
    parts = _split_kbs_uri(broker_uri)
    if parts.scheme != "kbs" or not parts.hostname or parts.path not in ("", "/"):
        raise KeySourceError(f"a key broker is named kbs://HOST:PORT, not {broker_uri!r}")
    scheme = "http" if settings.insecure_kbs_http else "https"
    body = dumps_compact({"policy": b64url_encode(policy)})
    _admin_post(
        f"{scheme}://{parts.netloc}",
        "resource-policy",
        body,
        "application/json",
        settings,
        admin,
    )


def _admin_post(
    base_url: str,
    endpoint: str,
    body: bytes,
    content_type: str,
    settings: KeySettings,
    admin: AdminIdentity | None,
) -> None:
    headers = {"Content-Type": content_type}
    if admin is not None:
        headers["Authorization"] = f"Bearer {admin_token(admin)}"
    with new_session(settings) as http:
        url = f"{base_url}{API_PREFIX}/{endpoint}"
        response = send(http, "POST", url, settings, body=body, headers=headers)
        if response.status_code != 200:
            raise broker_error(response, f"{endpoint} at {base_url}")
        response.close()
