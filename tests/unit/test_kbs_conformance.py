"""Conformance with Trustee's KBS protocol: reference bodies against the client AND dev-kbs.

Every fixture below is written from a reference source, named next to it:

- kbs-types 0.18 (the serde shapes Trustee deserializes: ``Request``,
  ``Challenge``, ``Attestation`` with ``RuntimeData`` and ``CompositeEvidence``,
  ``TeePubKey``, ``Response``, ``ErrorInformation``), as the crate's own tests
  (github.com/virtee/kbs-types src/lib.rs) and Trustee's use of it show;
- the protocol document (confidential-containers/trustee kbs/docs/kbs_attestation_protocol.md);
- Trustee's handlers and error types (trustee kbs/src/error.rs,
  kbs/src/attestation/backend.rs, kbs/src/attestation/mod.rs, kbs/src/api_server.rs,
  kbs/src/admin/*, kbs/src/crypto/jwt.rs).

The client (cmlfs/keys/kbs.py, rcar.py) must send exactly the request shapes and
parse the responses; dev-kbs must accept the good bodies and refuse the bad ones
with the variant, status and detail Trustee gives (dev-kbs may add a reason after
Trustee's text, never replace it).
"""

import base64
import copy
import hashlib
import json
import re
import socket
import time

import pytest
import requests
import rfc8785
from jwcrypto import jwk, jwt

from cmlfs.devkbs import DevKbs
from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters import SampleAttester
from cmlfs.keys.base import KeySettings
from cmlfs.keys.kbs import BrokerError, KbsClient, TeeKeyPair
from cmlfs.keys.rcar import TEE_TYPES
from tests.e2e.kbs_servers import ScriptedServer, kbs_error

ERRORS = "https://github.com/confidential-containers/kbs/errors/"
SETTINGS = KeySettings(attester="sample", insecure_kbs_http=True)
PATH = "default/model/demo"
KEY = bytes(range(7, 39))

# --- /auth: kbs-types Request {version: String, tee: Tee, "extra-params": Value} -----------

# trustee kbs/docs/kbs_attestation_protocol.md "Request" (its version updated to 0.4.0)
REQUEST_PROTOCOL_DOC = {"version": "0.4.0", "tee": "sample", "extra-params": {}}
# virtee/kbs-types src/lib.rs test parse_request: "extra-params" as the empty string
REQUEST_KBS_TYPES_TEST = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
# trustee kbs/src/attestation/mod.rs: the hash negotiation key inside extra-params
REQUEST_WITH_HASHES = {
    "version": "0.4.0",
    "tee": "sample",
    "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512"]},
}
# serde_json::Value takes JSON null as a present value (it is only a *missing* field that fails)
REQUEST_NULL_EXTRA = {"version": "0.4.0", "tee": "sample", "extra-params": None}

AUTH_FAILED = "Attestation error: RCAR handshake Auth failed: "
# trustee kbs/src/attestation/backend.rs __auth: serde failure -> context "deserialize Request"
DESERIALIZE_REQUEST = AUTH_FAILED + "deserialize Request"


def _without(doc: dict, *path: str) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return doc


def _with(doc: dict, value: object, *path: str) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


BAD_REQUESTS = [
    # kbs-types Request: every field is required (extra-params is a Value, not an Option)
    pytest.param(
        _without(REQUEST_KBS_TYPES_TEST, "extra-params"), DESERIALIZE_REQUEST, id="no-extra-params"
    ),
    pytest.param(_without(REQUEST_KBS_TYPES_TEST, "tee"), DESERIALIZE_REQUEST, id="no-tee"),
    pytest.param(_without(REQUEST_KBS_TYPES_TEST, "version"), DESERIALIZE_REQUEST, id="no-version"),
    # kbs-types Tee: lowercase names only
    pytest.param(_with(REQUEST_KBS_TYPES_TEST, "TDX", "tee"), DESERIALIZE_REQUEST, id="tee-case"),
    pytest.param(
        _with(REQUEST_KBS_TYPES_TEST, "gpu", "tee"), DESERIALIZE_REQUEST, id="tee-unknown"
    ),
    pytest.param(
        _with(REQUEST_KBS_TYPES_TEST, 4, "version"), DESERIALIZE_REQUEST, id="version-number"
    ),
    pytest.param(b"{not json", DESERIALIZE_REQUEST, id="not-json"),
    pytest.param([REQUEST_KBS_TYPES_TEST], DESERIALIZE_REQUEST, id="array"),
    # trustee kbs/src/attestation/backend.rs: semver parse, then VersionReq "=0.4.0"
    pytest.param(
        _with(REQUEST_KBS_TYPES_TEST, "0.4", "version"),
        AUTH_FAILED + "failed to parse KBS version",
        id="version-not-semver",
    ),
    pytest.param(
        _with(REQUEST_KBS_TYPES_TEST, "0.3.0", "version"),
        AUTH_FAILED
        + "KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.3.0",
        id="version-mismatch",
    ),
]


def _post(kbs: DevKbs, endpoint: str, body: object, **kwargs) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{kbs.url}/kbs/v0/{endpoint}", data=data, timeout=10, **kwargs)


def assert_kbs_error(reply: requests.Response, status: int, variant: str, detail: str) -> None:
    """Trustee's ErrorInformation (kbs-types): exactly {type, detail}, Trustee's text first."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"type", "detail"}
    assert body["type"] == ERRORS + variant, body
    assert body["detail"].startswith(detail), body["detail"]


@pytest.mark.parametrize(
    "request_body",
    [REQUEST_PROTOCOL_DOC, REQUEST_KBS_TYPES_TEST, REQUEST_WITH_HASHES, REQUEST_NULL_EXTRA],
    ids=["protocol-doc", "kbs-types-test", "hash-negotiation", "null-extra-params"],
)
def test_devkbs_accepts_reference_requests_with_trustees_challenge(devkbs, request_body):
    reply = _post(devkbs, "auth", request_body)
    assert reply.status_code == 200, reply.text
    # trustee kbs/src/attestation/backend.rs generic_generate_challenge + make_nonce:
    # {"nonce": base64 of 32 random bytes, "extra-params": ""} and the kbs-session-id cookie
    challenge = reply.json()
    assert set(challenge) == {"nonce", "extra-params"} and challenge["extra-params"] == ""
    assert len(base64.b64decode(challenge["nonce"], validate=True)) == 32
    assert reply.cookies.get("kbs-session-id")


@pytest.mark.parametrize(("request_body", "detail"), BAD_REQUESTS)
def test_devkbs_refuses_what_trustee_refuses_at_auth(devkbs, request_body, detail):
    # trustee kbs/src/attestation/error.rs RcarAuthFailed -> kbs/src/error.rs AttestationError, 401
    assert_kbs_error(_post(devkbs, "auth", request_body), 401, "AttestationError", detail)


# --- /attest: kbs-types Attestation {"init-data"?, "runtime-data", "tee-evidence"} ---------

# trustee kbs/docs/kbs_attestation_protocol.md "Key Format": the two TeePubKey variants
EC_KEY = TeeKeyPair("ec").public_jwk
RSA_KEY = TeeKeyPair("rsa").public_jwk


def _attestation(nonce: str, tee_pubkey: dict, additional: str = "", **changes) -> dict:
    """trustee kbs/docs/kbs_attestation_protocol.md "Attestation" with sample evidence over
    the runtime data Trustee hashes (backend.rs: tee-pubkey, nonce, additional-evidence)."""
    runtime = {"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": additional}
    digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
    doc = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
        "tee-evidence": {
            "primary_evidence": {"svn": "1", "report_data": base64.b64encode(digest).decode()},
            "additional_evidence": additional,
        },
    }
    doc.update(changes)
    return doc


def _session(kbs: DevKbs) -> tuple[dict, str]:
    reply = _post(kbs, "auth", REQUEST_KBS_TYPES_TEST)
    return {"Cookie": f"kbs-session-id={reply.cookies['kbs-session-id']}"}, reply.json()["nonce"]


@pytest.mark.parametrize(
    ("tee_pubkey", "additional", "changes"),
    [
        (EC_KEY, "", {}),
        (RSA_KEY, "", {}),
        # the protocol doc's example: additional_evidence "{}" (a map with no device)
        (EC_KEY, "{}", {}),
        # kbs-types Attestation: "init-data" is an Option, so null is absent
        (EC_KEY, "", {"init-data": None}),
        # kbs-types TeePubKey (serde tag "kty") ignores other JWK members; the digest
        # covers only the variant's fields, so the evidence still binds
        ({**EC_KEY, "kid": "ignored"}, "", {}),
    ],
    ids=["ec", "rsa", "additional-empty-map", "init-data-null", "jwk-extra-member"],
)
def test_devkbs_accepts_reference_attestations(devkbs, tee_pubkey, additional, changes):
    cookie, nonce = _session(devkbs)
    doc = _attestation(nonce, tee_pubkey, additional, **changes)
    if "kid" in tee_pubkey:  # the evidence binds the key as Trustee re-serializes it
        trimmed = {k: v for k, v in tee_pubkey.items() if k != "kid"}
        doc["tee-evidence"] = _attestation(nonce, trimmed, additional)["tee-evidence"]
    reply = _post(devkbs, "attest", doc, headers=cookie)
    assert reply.status_code == 200, reply.text
    # trustee kbs/docs/kbs_attestation_protocol.md "Attestation Results Token": {"token": JWT}
    assert set(reply.json()) == {"token"} and reply.json()["token"].count(".") == 2


ATTEST_FAILED = "Attestation error: RCAR handshake Attest failed"


def _bad(mutate, reason: str, additional: str = ""):
    """A body made from the reference attestation (evidence bound to ``additional``)."""
    return lambda nonce: mutate(_attestation(nonce, EC_KEY, additional)), reason


def _same(doc: dict) -> dict:
    return doc


BAD_ATTESTATIONS = [
    # kbs-types CompositeEvidence: additional_evidence is a required String
    pytest.param(
        *_bad(lambda d: _without(d, "tee-evidence", "additional_evidence"), "additional_evidence"),
        id="no-additional-evidence",
    ),
    pytest.param(
        *_bad(lambda d: _with(d, {}, "tee-evidence", "additional_evidence"), "additional_evidence"),
        id="additional-evidence-object",
    ),
    # trustee backend.rs: a non-empty additional_evidence is parsed as HashMap<Tee, Value>
    # (the evidence binds the string, so only its parse can fail)
    pytest.param(*_bad(_same, "additional_evidence", "not json"), id="additional-not-json"),
    pytest.param(*_bad(_same, "additional_evidence", '["snp"]'), id="additional-not-a-map"),
    pytest.param(*_bad(_same, "additional_evidence", '{"gpu0": {}}'), id="additional-unknown-tee"),
    pytest.param(
        *_bad(lambda d: _without(d, "tee-evidence", "primary_evidence"), "primary_evidence"),
        id="no-primary-evidence",
    ),
    pytest.param(
        *_bad(lambda d: _with(d, {"evidence": "x"}, "tee-evidence"), "primary_evidence"),
        id="tee-evidence-old-shape",
    ),
    pytest.param(*_bad(lambda d: _without(d, "runtime-data"), "runtime-data"), id="no-runtime"),
    pytest.param(
        *_bad(lambda d: _with(d, 42, "runtime-data", "nonce"), "nonce"), id="nonce-number"
    ),
    # kbs-types TeePubKey: kty is "RSA" or "EC", each with all its fields as strings
    pytest.param(
        *_bad(lambda d: _with(d, "OKP", "runtime-data", "tee-pubkey", "kty"), "kty"),
        id="tee-pubkey-okp",
    ),
    pytest.param(
        *_bad(lambda d: _without(d, "runtime-data", "tee-pubkey", "crv"), "crv"),
        id="tee-pubkey-no-crv",
    ),
    pytest.param(lambda nonce: [nonce], "Attestation", id="array"),
    pytest.param(lambda nonce: b"\xff\xfe", "Attestation", id="not-utf8"),
    # backend.rs: the nonce must be the session's
    pytest.param(
        *_bad(lambda d: _with(d, "AAAA", "runtime-data", "nonce"), "nonce in the handshake"),
        id="other-nonce",
    ),
    # deps/verifier/src/sample/mod.rs: report_data must equal the runtime-data digest
    pytest.param(
        *_bad(
            lambda d: _with(
                d,
                base64.b64encode(bytes(48)).decode(),
                "tee-evidence",
                "primary_evidence",
                "report_data",
            ),
            "REPORT_DATA is different",
        ),
        id="report-data-mismatch",
    ),
]


@pytest.mark.parametrize(("make_body", "reason"), BAD_ATTESTATIONS)
def test_devkbs_refuses_what_trustee_refuses_at_attest(devkbs, make_body, reason):
    cookie, nonce = _session(devkbs)
    reply = _post(devkbs, "attest", make_body(nonce), headers=cookie)
    # trustee kbs/src/attestation/error.rs RcarAttestFailed (reason hidden) -> AttestationError
    assert_kbs_error(reply, 401, "AttestationError", ATTEST_FAILED)
    assert reason in reply.json()["detail"]  # dev-kbs says why, after Trustee's text


def test_devkbs_attest_without_cookie_is_trustees_error(devkbs):
    reply = _post(devkbs, "attest", _attestation("AAAA", EC_KEY))
    assert_kbs_error(reply, 401, "AttestationError", ATTEST_FAILED)
    assert "cookie not found" in reply.json()["detail"]


# --- what the client sends -------------------------------------------------------------


class RecordingBroker(ScriptedServer):
    """A broker answering with reference bodies and keeping what the client sent."""

    def __init__(self, challenge: dict) -> None:
        super().__init__()
        self.bodies: dict[str, object] = {}
        self.routes[("POST", "/kbs/v0/auth")] = lambda body: self._keep("auth", body, challenge)
        self.routes[("POST", "/kbs/v0/attest")] = lambda body: self._keep(
            "attest", body, {"token": "header.claims.signature"}
        )

    def _keep(self, name: str, body: bytes, answer: dict) -> tuple[int, bytes]:
        self.bodies[name] = json.loads(body)
        return 200, json.dumps(answer).encode()


@pytest.fixture
def broker():
    servers = []

    def make(challenge: dict) -> RecordingBroker:
        servers.append(RecordingBroker(challenge))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


def _handshake(server: RecordingBroker, tee_key: str = "ec") -> None:
    settings = KeySettings(attester="sample", insecure_kbs_http=True, tee_key_type=tee_key)
    url = f"http://{server.address}"
    with KbsClient(url, SampleAttester(), settings, sleep=lambda s: None) as client:
        client.handshake()


@pytest.mark.parametrize("tee_key", ["ec", "rsa"])
def test_client_sends_exactly_the_reference_shapes(broker, tee_key):
    # virtee/kbs-types src/lib.rs test parse_challenge: {"nonce": "42", "extra-params": ""}
    server = broker({"nonce": "42", "extra-params": ""})
    _handshake(server, tee_key)
    auth, attest = server.bodies["auth"], server.bodies["attest"]
    # kbs-types Request; extra-params per trustee kbs/src/attestation/mod.rs
    assert set(auth) == {"version", "tee", "extra-params"}
    assert (auth["version"], auth["tee"]) == ("0.4.0", "sample") and auth["tee"] in TEE_TYPES
    assert isinstance(auth["extra-params"], dict)
    assert "sha384" in auth["extra-params"]["supported-hash-algorithms"]
    # kbs-types Attestation / RuntimeData / CompositeEvidence / TeePubKey
    assert set(attest) <= {"init-data", "runtime-data", "tee-evidence"}
    assert attest.get("init-data") is None
    assert set(attest["runtime-data"]) == {"nonce", "tee-pubkey"}
    assert attest["runtime-data"]["nonce"] == "42"
    key = attest["runtime-data"]["tee-pubkey"]
    fields = {"EC": {"kty", "crv", "alg", "x", "y"}, "RSA": {"kty", "alg", "n", "e"}}
    assert set(key) == fields[key["kty"]] and all(isinstance(v, str) for v in key.values())
    evidence = attest["tee-evidence"]
    assert set(evidence) == {"primary_evidence", "additional_evidence"}
    assert evidence["additional_evidence"] == ""
    # trustee backend.rs + deps/verifier/src/sample: report_data = SHA-384 of the JCS runtime data
    runtime = {"tee-pubkey": key, "nonce": "42", "additional-evidence": ""}
    expected = hashlib.sha384(rfc8785.dumps(runtime)).digest()
    assert base64.b64decode(evidence["primary_evidence"]["report_data"]) == expected


def test_client_follows_a_selected_hash_algorithm(broker):
    # trustee kbs/src/attestation/mod.rs generate_extra_params: {"selected-hash-algorithm": ...}
    server = broker({"nonce": "NONCE", "extra-params": {"selected-hash-algorithm": "sha512"}})
    _handshake(server)
    key = server.bodies["attest"]["runtime-data"]["tee-pubkey"]
    runtime = {"tee-pubkey": key, "nonce": "NONCE", "additional-evidence": ""}
    report_data = server.bodies["attest"]["tee-evidence"]["primary_evidence"]["report_data"]
    assert base64.b64decode(report_data) == hashlib.sha512(rfc8785.dumps(runtime)).digest()


@pytest.mark.parametrize(
    "challenge",
    [{"extra-params": ""}, {"nonce": 42, "extra-params": ""}, ["nonce"]],
    ids=["no-nonce", "nonce-number", "array"],
)
def test_client_refuses_challenges_outside_the_reference_shape(broker, challenge):
    with pytest.raises(KeySourceError, match="challenge"):
        _handshake(broker(challenge))


# trustee kbs/src/error.rs ResponseError: InvalidRequestPath and PluginNotFound are 404,
# every other variant 401; the body is kbs-types ErrorInformation {type, detail}
TRUSTEE_ERRORS = [
    (404, "InvalidRequestPath", "Request path /kbs/v0/x is invalid"),
    (404, "PluginNotFound", "Plugin x not found"),
    (401, "AttestationError", "Attestation error: RCAR handshake Auth failed: deserialize Request"),
    (401, "PolicyDeny", "Access denied by policy"),
    (401, "TokenNotFound", "Attestation Token not found"),
    (401, "TokenVerifierError", "Token Verifier error"),
    (401, "PluginInternalError", "Plugin internal error"),
    (401, "JweError", "JWE failed"),
]


@pytest.mark.parametrize(("status", "variant", "detail"), TRUSTEE_ERRORS)
def test_client_reads_every_trustee_error_body(broker, status, variant, detail):
    server = broker({})
    server.routes[("POST", "/kbs/v0/auth")] = lambda body: kbs_error(status, variant, detail)
    with pytest.raises(BrokerError) as caught:
        _handshake(server)
    assert (caught.value.variant, caught.value.status) == (variant, status)
    assert f"{variant}: {detail}" in str(caught.value) and "\n" not in str(caught.value)


def test_client_parses_the_kbs_types_response_shape():
    # virtee/kbs-types src/lib.rs test parse_response_with_aad: a flattened JWE (aad optional);
    # the client gets as far as its algorithm check, which these fake values must fail
    response = {
        "protected": "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9",
        "encrypted_key": "ZmFrZWtleQ",
        "iv": "cmFuZG9tZGF0YQ",
        "aad": "fakeaad",
        "ciphertext": "ZmFrZWVuY291dHB1dA",
        "tag": "ZmFrZXRhZw",
    }
    for body in (response, {k: v for k, v in response.items() if k != "aad"}):
        with pytest.raises(KeySourceError, match="JWE uses alg='fakealg' enc='fakeenc'"):
            TeeKeyPair("ec").decrypt(json.dumps(body).encode())


# --- resource and error answers of dev-kbs ---------------------------------------------


def test_devkbs_resource_errors_are_trustees(devkbs):
    # trustee kbs/src/api_server.rs: unknown plugin, and auth/attest only on POST
    for path in ("nosuch/x", "auth"):
        reply = requests.get(f"{devkbs.url}/kbs/v0/{path}", timeout=10)
        assert_kbs_error(reply, 404, "PluginNotFound", f"Plugin {path.split('/')[0]} not found")
    # no cookie and no bearer token
    reply = requests.get(f"{devkbs.url}/kbs/v0/resource/{PATH}", timeout=10)
    assert_kbs_error(reply, 401, "TokenNotFound", "Attestation Token not found")
    # attested, but no such resource (plugin handle fails)
    cookie, nonce = _session(devkbs)
    assert _post(devkbs, "attest", _attestation(nonce, EC_KEY), headers=cookie).ok
    reply = requests.get(f"{devkbs.url}/kbs/v0/resource/{PATH}", headers=cookie, timeout=10)
    assert_kbs_error(reply, 401, "PluginInternalError", "Plugin internal error")
    devkbs.repository.write(PATH, KEY)
    reply = requests.get(f"{devkbs.url}/kbs/v0/resource/{PATH}", headers=cookie, timeout=10)
    # kbs-types Response: the flattened JWE with no aad member
    assert reply.status_code == 200
    assert set(reply.json()) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}


def test_devkbs_answers_in_one_piece_as_trustee_does(devkbs):
    """Head and body of an answer leave in one write, as actix-http's dispatcher sends them
    (src/h1/dispatcher.rs: both encoded into one write_buf): written apart, the body waited
    behind Nagle's algorithm for the client's delayed ACK, ~40 ms an answer (on a kept-alive
    connection, once the first answers' quick ACKs are over), which timed dev-kbs rather than
    the client in benchmarks/bench_read.py's broker rows."""
    with socket.create_connection(devkbs.httpd.server_address[:2], timeout=10) as conn:
        for _ in range(6):
            conn.sendall(f"GET /kbs/v0/resource/{PATH} HTTP/1.1\r\nHost: kbs\r\n\r\n".encode())
            answer = conn.recv(1 << 16)  # everything that has arrived, blocking for the first
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
            assert length > 0 and len(body) == length, answer
            assert json.loads(body)["type"] == ERRORS + "TokenNotFound"


# trustee kbs/src/api_server.rs "resource-policy" POST: each refusal and its text
BAD_POLICY_BODIES = [
    (b"{oops", "Failed to parse policy: Illegal SetPolicy Request Json"),
    (b'{"rules": []}', "Failed to parse policy: No `policy` field inside SetPolicy Request Json"),
    (
        b'{"policy": 5}',
        "Failed to parse policy: `policy` field is not a string in SetPolicy Request Json",
    ),
    # URL_SAFE_NO_PAD: padding is refused
    (
        b'{"policy": "eyJkZWZhdWx0IjoiZGVueSJ9=="}',
        "Failed to parse policy: Failed to decode policy",
    ),
]


@pytest.mark.parametrize(("body", "detail"), BAD_POLICY_BODIES)
def test_devkbs_refuses_bad_policy_requests_like_trustee(devkbs, body, detail):
    assert_kbs_error(_post(devkbs, "resource-policy", body), 401, "ParsePolicyError", detail)


def test_devkbs_policy_text_errors_are_policy_engine_errors(devkbs):
    # where Trustee's Rego engine refuses the text: kbs/src/error.rs PolicyEngineError
    policy = base64.urlsafe_b64encode(b'{"default":"maybe"}').rstrip(b"=").decode()
    reply = _post(devkbs, "resource-policy", {"policy": policy})
    assert_kbs_error(reply, 401, "PolicyEngineError", "Policy engine error: ")


# --- admin tokens: trustee kbs/src/admin (bearer_jwt, regex_acl) ---------------------------


def _admin_token(private_pem, **claims) -> dict:
    now = int(time.time())
    base = {"iat": now, "exp": now + 300, "role": "admin", "iss": "idp", "aud": ["kbs", "x"]}
    body = {k: v for k, v in {**base, **claims}.items() if v is not None}
    token = jwt.JWT(header={"alg": "EdDSA", "typ": "JWT"}, claims=body)
    token.make_signed_token(jwk.JWK.from_pem(private_pem.read_bytes()))
    return {"Authorization": f"Bearer {token.serialize()}"}


DENIED = "Admin access denied: "
ADMIN_REFUSALS = [
    # bearer_jwt.rs claims_from_value: the role claim is required
    pytest.param({"role": None}, DENIED + "Missing required `role` claim in JWT", id="no-role"),
    pytest.param({"role": 1}, DENIED + "Missing required `role` claim in JWT", id="role-number"),
    # crypto/jwt.rs: jsonwebtoken Validation requires exp and checks it
    pytest.param({"exp": None}, DENIED + "Cannot verify token", id="no-exp"),
    pytest.param({"exp": int(time.time()) - 3600}, DENIED + "Cannot verify token", id="expired"),
    # bearer_jwt.rs: configured issuer must equal iss; audience must be in aud
    pytest.param({"iss": "other"}, DENIED + "Cannot verify token", id="other-issuer"),
    pytest.param({"iss": None}, DENIED + "Cannot verify token", id="no-issuer"),
    pytest.param({"aud": "other"}, DENIED + "Cannot verify token", id="other-audience"),
    pytest.param({"aud": None}, DENIED + "Cannot verify token", id="no-audience"),
    # regex_acl.rs: a role the ACL does not list
    pytest.param({"role": "reader"}, DENIED + "Role reader not allowed for path", id="acl"),
]


@pytest.mark.parametrize(("claims", "reason"), ADMIN_REFUSALS)
def test_devkbs_refuses_admin_tokens_trustee_refuses(admin_devkbs, claims, reason):
    # the broker checks iss "idp" and aud "kbs", as an identity provider entry naming both
    admin_kbs, private = admin_devkbs
    headers = _admin_token(private, **claims)
    policy = {"policy": base64.urlsafe_b64encode(b'{"default":"deny"}').rstrip(b"=").decode()}
    reply = _post(admin_kbs, "resource-policy", policy, headers=headers)
    # api_server.rs: the built-in endpoint wraps the admin error in AdminAuthAccess
    prefix = "admin access denied for endpoint resource-policy: "
    assert_kbs_error(reply, 401, "AdminAuthAccess", prefix + reason)
    reply = _post(admin_kbs, f"resource/{PATH}", KEY, headers=headers)
    # ... a plugin's admin check fails through `?`, i.e. From<admin::Error>
    prefix = "failed to initialize [admin] configuration: "
    assert_kbs_error(reply, 401, "AdminAuthInitialization", prefix + reason)
    assert not (admin_kbs.repository.root / PATH).exists()


def test_devkbs_admin_needs_a_bearer_header(admin_devkbs):
    admin_kbs, _ = admin_devkbs
    reply = _post(admin_kbs, f"resource/{PATH}", KEY)
    detail = "failed to initialize [admin] configuration: Failed to parse HTTP Auth Bearer header"
    assert_kbs_error(reply, 401, "AdminAuthInitialization", detail)


@pytest.mark.parametrize("aud", ["kbs", ["other", "kbs"]], ids=["string", "list"])
def test_devkbs_takes_admin_tokens_trustee_takes(admin_devkbs, aud):
    admin_kbs, private = admin_devkbs
    reply = _post(admin_kbs, f"resource/{PATH}", KEY, headers=_admin_token(private, aud=aud))
    assert reply.status_code == 200, reply.text
    assert (admin_kbs.repository.root / PATH).read_bytes() == KEY
