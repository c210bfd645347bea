"""The KBS client against a real in-process dev-kbs: handshake, sessions, errors, admin API."""

import base64
import json
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cmlfs.devkbs import DevKbs, DevKbsConfig, DevKbsError
from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters import SampleAttester, TdxAttester
from cmlfs.keys.base import KeySettings
from cmlfs.keys.bundle import make_bundle
from cmlfs.keys.kbs import (
    AdminIdentity,
    BrokerError,
    KbsClient,
    TeeKeyPair,
    register_resource,
    set_resource_policy,
)
from cmlfs.keys.rcar import runtime_data_digest
from cmlfs.keys.uri import key_source_from_uri
from tests.fake_eventlog import event
from tests.kbs_helpers import ed25519_pair

SETTINGS = KeySettings(attester="sample", insecure_kbs_http=True)
KEY = bytes(range(100, 132))
PATH = "default/model/demo"
AUTH = {"version": "0.4.0", "tee": "sample", "extra-params": ""}


def kbs_uri(kbs: DevKbs, path: str = PATH) -> str:
    return f"kbs://{kbs.url.removeprefix('http://')}/{path}"


def client(kbs: DevKbs, attester=None, settings: KeySettings = SETTINGS) -> KbsClient:
    return KbsClient(kbs.url, attester or SampleAttester(), settings, sleep=lambda s: None)


class WrongDigestAttester(SampleAttester):
    """Sample evidence over a digest other than the one asked for."""

    def evidence(self, report_data: bytes) -> dict:
        return super().evidence(bytes(len(report_data)))


class TdxNamedAttester(SampleAttester):
    tee = "tdx"


@pytest.mark.expect_log("event=sample_attester")
@pytest.mark.parametrize("tee_key", ["ec", "rsa"])
def test_release_through_the_uri(devkbs, tee_key):
    register_resource(kbs_uri(devkbs), KEY, SETTINGS)
    settings = KeySettings(attester="sample", insecure_kbs_http=True, tee_key_type=tee_key)
    released = key_source_from_uri(kbs_uri(devkbs), settings).fetch_release()
    assert (released.key, released.manifest_sha256) == (KEY, None)


@pytest.mark.expect_log("event=sample_attester")
def test_release_of_a_bundle_carries_its_pin(devkbs):
    register_resource(kbs_uri(devkbs), make_bundle(KEY, "cd" * 32), SETTINGS)
    released = key_source_from_uri(kbs_uri(devkbs), SETTINGS).fetch_release()
    assert (released.key, released.manifest_sha256) == (KEY, "cd" * 32)


def test_expired_session_is_recovered_by_a_new_handshake(devkbs):
    devkbs.repository.write(PATH, KEY)
    with client(devkbs) as kbs_client:
        kbs_client.handshake()
        devkbs.sessions.expire_all()
        assert kbs_client.get_resource(PATH) == KEY
        assert kbs_client.handshakes == 2


def test_sessions_expire_on_their_own(tmp_path):
    kbs = DevKbs(DevKbsConfig(repository=tmp_path, port=0, session_ttl=0.2)).start()
    try:
        http = requests.Session()
        auth = http.post(f"{kbs.url}/kbs/v0/auth", json=AUTH)
        assert auth.status_code == 200
        cookie = {"Cookie": auth.headers["Set-Cookie"].split(";")[0]}
        time.sleep(0.3)
        attest = requests.post(
            f"{kbs.url}/kbs/v0/attest", json=_attestation(auth.json()["nonce"]), headers=cookie
        )
        assert attest.status_code == 401
        assert "session not found" in attest.json()["detail"]
    finally:
        kbs.stop()


def _attestation(nonce: str, digest_nonce: str | None = None) -> dict:
    jwk = TeeKeyPair("ec").public_jwk
    digest = runtime_data_digest(digest_nonce or nonce, jwk)
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {
            "primary_evidence": SampleAttester().evidence(digest),
            "additional_evidence": "",
        },
    }


def test_challenge_cookie_and_token_shapes(devkbs):
    http = requests.Session()
    auth = http.post(f"{devkbs.url}/kbs/v0/auth", json=AUTH)
    assert auth.status_code == 200
    challenge = auth.json()
    assert challenge["extra-params"] == ""
    assert len(base64.b64decode(challenge["nonce"])) == 32
    cookie = auth.headers["Set-Cookie"]
    assert cookie.startswith("kbs-session-id=") and "Expires=" in cookie
    attest = http.post(f"{devkbs.url}/kbs/v0/attest", json=_attestation(challenge["nonce"]))
    assert attest.status_code == 200
    token = attest.json()["token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256" and header["jwk"]["crv"] == "P-256"
    again = http.post(f"{devkbs.url}/kbs/v0/attest", json=_attestation(challenge["nonce"]))
    assert again.json()["token"] == token  # an attested session returns its token


def test_evidence_with_a_wrong_nonce_is_rejected(devkbs):
    http = requests.Session()
    nonce = http.post(f"{devkbs.url}/kbs/v0/auth", json=AUTH)
    other = base64.b64encode(bytes(32)).decode()
    attest = http.post(f"{devkbs.url}/kbs/v0/attest", json=_attestation(other))
    assert attest.status_code == 401
    assert attest.json()["type"].endswith("/AttestationError")
    assert "nonce in the handshake session is different" in attest.json()["detail"]
    # the right nonce in runtime-data but evidence over another nonce's digest
    attest = http.post(
        f"{devkbs.url}/kbs/v0/attest", json=_attestation(nonce.json()["nonce"], other)
    )
    assert "REPORT_DATA is different" in attest.json()["detail"]


def test_evidence_with_a_wrong_digest_is_rejected(devkbs):
    with client(devkbs, WrongDigestAttester()) as kbs_client, pytest.raises(BrokerError) as err:
        kbs_client.handshake()
    assert err.value.variant == "AttestationError"
    assert "REPORT_DATA is different from that in Sample Quote" in str(err.value)


def test_devkbs_verifies_only_sample_evidence(devkbs):
    with client(devkbs, TdxNamedAttester()) as kbs_client, pytest.raises(BrokerError) as err:
        kbs_client.handshake()
    assert "no verifier for tdx evidence" in str(err.value)


def test_wrong_protocol_version_is_refused_like_trustee(devkbs):
    reply = requests.post(f"{devkbs.url}/kbs/v0/auth", json={**AUTH, "version": "0.3.0"})
    assert reply.status_code == 401
    assert reply.json() == {
        "type": "https://github.com/confidential-containers/kbs/errors/AttestationError",
        "detail": "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version "
        "Mismatch: expect =0.4.0 while the request is 0.3.0",
    }


def test_bearer_token_without_cookie_releases(devkbs):
    devkbs.repository.write(PATH, KEY)
    with client(devkbs) as kbs_client:
        kbs_client.handshake()
    http = requests.Session()
    auth = http.post(f"{devkbs.url}/kbs/v0/auth", json=AUTH)
    token = http.post(
        f"{devkbs.url}/kbs/v0/attest", json=_attestation(auth.json()["nonce"])
    ).json()["token"]
    reply = requests.get(
        f"{devkbs.url}/kbs/v0/resource/{PATH}", headers={"Authorization": f"Bearer {token}"}
    )
    assert reply.status_code == 200 and set(reply.json()) >= {"protected", "ciphertext"}
    assert (
        requests.get(f"{devkbs.url}/kbs/v0/resource/{PATH}")
        .json()["type"]
        .endswith("/TokenNotFound")
    )
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    reply = requests.get(
        f"{devkbs.url}/kbs/v0/resource/{PATH}", headers={"Authorization": f"Bearer {forged}"}
    )
    assert reply.json()["type"].endswith("/TokenVerifierError")


def test_missing_resource_and_denial_are_one_line_errors(devkbs):
    with client(devkbs) as kbs_client, pytest.raises(BrokerError) as err:
        kbs_client.get_resource("default/model/absent")
    assert err.value.variant == "PluginInternalError" and err.value.status == 401
    assert "no such resource" in str(err.value)
    devkbs.repository.write(PATH, KEY)
    set_resource_policy(kbs_uri(devkbs, "").rstrip("/"), b'{"default":"deny"}', SETTINGS)
    with client(devkbs) as kbs_client, pytest.raises(BrokerError) as err:
        kbs_client.get_resource(PATH)
    assert err.value.variant == "PolicyDeny"
    assert "\n" not in str(err.value) and "Access denied by policy" in str(err.value)
    assert kbs_client.handshakes == 1  # a denial is not retried


def test_policy_must_be_unpadded_base64url(devkbs):
    doc = b'{"default":"deny","rules":[]}'  # base64 of this needs padding
    padded = base64.urlsafe_b64encode(doc).decode()
    assert padded.endswith("=")
    reply = requests.post(f"{devkbs.url}/kbs/v0/resource-policy", json={"policy": padded})
    assert reply.status_code == 401 and reply.json()["type"].endswith("/ParsePolicyError")
    reply = requests.post(
        f"{devkbs.url}/kbs/v0/resource-policy", json={"policy": padded.rstrip("=")}
    )
    assert reply.status_code == 200 and devkbs.policy.default == "deny"


def test_admin_api_with_an_ed25519_key(tmp_path):
    admin, admin_public = ed25519_pair(tmp_path, "admin")
    intruder, _ = ed25519_pair(tmp_path, "intruder")
    repository = tmp_path / "repository"
    repository.mkdir()
    kbs = DevKbs(DevKbsConfig(repository, port=0, admin_public_key=admin_public)).start()
    try:
        uri = kbs_uri(kbs)
        with pytest.raises(BrokerError, match=r"AdminAuthInitialization: .*Bearer header"):
            register_resource(uri, KEY, SETTINGS)
        with pytest.raises(BrokerError, match="Cannot verify token with any of the issuers"):
            register_resource(uri, KEY, SETTINGS, AdminIdentity(intruder))
        register_resource(uri, KEY, SETTINGS, AdminIdentity(admin))
        assert (repository / PATH).read_bytes() == KEY
        assert (repository / PATH).stat().st_mode & 0o077 == 0
    finally:
        kbs.stop()


def test_admin_token_carries_the_issuer_and_audience_a_broker_checks(admin_devkbs):
    """Trustee's bearer_jwt identity provider entry with `issuer` and `audience`."""
    kbs, admin = admin_devkbs
    uri = kbs_uri(kbs)
    for partial in (
        AdminIdentity(admin),
        AdminIdentity(admin, "idp"),
        AdminIdentity(admin, audience="kbs"),
    ):
        with pytest.raises(BrokerError, match="Cannot verify token") as refused:
            register_resource(uri, KEY, SETTINGS, partial)
        assert "--admin-issuer" in str(refused.value)
    register_resource(uri, KEY, SETTINGS, AdminIdentity(admin, "idp", "kbs"))
    assert (kbs.repository.root / PATH).read_bytes() == KEY


def test_admin_key_must_be_ed25519(tmp_path):
    with pytest.raises(KeySourceError, match="cannot read admin key"):
        register_resource("kbs://127.0.0.1:1/a/b/c", KEY, SETTINGS, AdminIdentity(tmp_path / "x"))
    (tmp_path / "x").write_text("junk")
    with pytest.raises(KeySourceError, match="not a PEM private key"):
        register_resource("kbs://127.0.0.1:1/a/b/c", KEY, SETTINGS, AdminIdentity(tmp_path / "x"))
    (tmp_path / "x").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeySourceError, match="not an Ed25519 private key"):
        register_resource("kbs://127.0.0.1:1/a/b/c", KEY, SETTINGS, AdminIdentity(tmp_path / "x"))


def test_open_admin_api_only_on_loopback(tmp_path):
    with pytest.raises(DevKbsError, match="without --admin-public-key"):
        DevKbs(DevKbsConfig(tmp_path, host="0.0.0.0", port=0, listen_anywhere=True))


@pytest.mark.expect_log("event=kbs_handshake_retry")
def test_unreachable_broker_is_retried_then_named(devkbs):
    url = devkbs.url
    devkbs.stop()
    with (
        KbsClient(url, SampleAttester(), SETTINGS, sleep=lambda s: None) as kbs_client,
        pytest.raises(KeySourceError, match=r"cannot reach http://127\.0\.0\.1:\d+"),
    ):
        kbs_client.get_resource(PATH)


@pytest.mark.fuse
def test_attestation_over_trustees_body_limit_is_refused_here(devkbs, fake_tsm, tmp_path):
    """Trustee refuses bodies above 2 MiB by default: a large TDX event log is named here."""
    aael = tmp_path / "eventlog"
    aael.write_bytes(event(4, b"x" * 4096) * 400)  # 1.6 MiB, 2.2 MB as base64
    attester = TdxAttester(fake_tsm("tdx_guest"), tmp_path / "no-ccel", aael)
    with client(devkbs, attester) as kbs_client, pytest.raises(KeySourceError) as refused:
        kbs_client.handshake()
    assert "over the 2 MiB a Trustee KBS accepts" in str(refused.value)
    assert "event log" in str(refused.value)
