"""KBS protocol pieces: runtime-data digest vectors, JWE both ways, key bundles, dev-kbs policy."""

import base64
import hashlib
import json

import pytest
import rfc8785
from jwcrypto import jwe, jwk

from cmlfs.devkbs.jwe import JweError, encrypt_to
from cmlfs.devkbs.policy import Policy, PolicyError, Rule, parse_policy
from cmlfs.errors import KeySourceError
from cmlfs.keys.base import KeySettings
from cmlfs.keys.bundle import make_bundle, parse_resource
from cmlfs.keys.kbs import TeeKeyPair, parse_kbs_uri
from cmlfs.keys.rcar import b64url_decode, runtime_data_digest
from cmlfs.keys.uri import key_source_from_uri

# RFC 7517 appendix A.1 P-256 public key, with the alg the KBS expects.
RFC7517_EC = {
    "kty": "EC",
    "crv": "P-256",
    "alg": "ECDH-ES+A256KW",
    "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
    "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
}
NONCE = base64.b64encode(bytes(range(32))).decode()


def test_trustee_published_jcs_sha384_vector():
    """attestation-service/src/lib.rs test parse_runtimedata_json_binding."""
    value = {"b": 1, "a": "test", "c": {"d": "e"}}
    assert rfc8785.dumps(value) == b'{"a":"test","b":1,"c":{"d":"e"}}'
    assert hashlib.sha384(rfc8785.dumps(value)).hexdigest() == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )


def test_runtime_data_digest_independent_vector():
    """Computed independently (research notes): RFC 7517 A.1 key, nonce = base64(0..31)."""
    digest = runtime_data_digest(NONCE, RFC7517_EC)
    assert digest.hex() == (
        "8a6244441b1b1171b3a1d56a693d4ce116c1f9ca1ae558bc5f59d46dada54cf4"
        "9e92a361ab2472c434652fed5887f16d"
    )
    assert base64.b64encode(digest).decode() == (
        "imJERBsbEXGzodVqaT1M4RbB+coa5Vi8X1nUba2lTPSekqNhqyRyxDRlL+1Yh/Ft"
    )
    canonical = (
        '{"additional-evidence":"","nonce":"' + NONCE + '","tee-pubkey":{"alg":"ECDH-ES+A256KW",'
        '"crv":"P-256","kty":"EC","x":"' + RFC7517_EC["x"] + '","y":"' + RFC7517_EC["y"] + '"}}'
    )
    assert digest == hashlib.sha384(canonical.encode()).digest()


def test_runtime_data_digest_depends_on_every_field():
    base = runtime_data_digest(NONCE, RFC7517_EC)
    assert runtime_data_digest(NONCE[:-2] + "A=", RFC7517_EC) != base
    assert runtime_data_digest(NONCE, {**RFC7517_EC, "x": RFC7517_EC["y"]}) != base
    assert runtime_data_digest(NONCE, RFC7517_EC, "{}") != base


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_devkbs_jwe_opens_with_the_client_key(kind):
    keys = TeeKeyPair(kind)
    body = json.dumps(encrypt_to(keys.public_jwk, b"secret payload")).encode()
    assert keys.decrypt(body) == b"secret payload"


def test_devkbs_jwe_header_has_trustees_order():
    response = encrypt_to(TeeKeyPair("ec").public_jwk, b"x")
    assert set(response) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    header = b64url_decode(response["protected"], "header", ValueError).decode()
    assert header.startswith('{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256",')
    assert len(b64url_decode(response["encrypted_key"], "k", ValueError)) == 40


def test_jwcrypto_made_rsa_jwe_opens_too():
    """A JWE from another implementation (jwcrypto's header order) decrypts as well."""
    keys = TeeKeyPair("rsa")
    token = jwe.JWE(b"other", protected={"enc": "A256GCM", "alg": keys.alg})
    token.add_recipient(jwk.JWK(**keys.public_jwk))
    assert keys.decrypt(token.serialize(compact=False).encode()) == b"other"


def test_jwe_with_an_unprotected_header_is_refused():
    """jwcrypto puts the ECDH epk in an unprotected header; the KBS shape never has one."""
    keys = TeeKeyPair("ec")
    token = jwe.JWE(b"other", protected={"alg": keys.alg, "enc": "A256GCM"})
    token.add_recipient(jwk.JWK(**keys.public_jwk))
    with pytest.raises(KeySourceError, match="not a flattened JWE"):
        keys.decrypt(token.serialize(compact=False).encode())


def test_jwe_for_another_key_is_refused():
    body = json.dumps(encrypt_to(TeeKeyPair("ec").public_jwk, b"x")).encode()
    with pytest.raises(KeySourceError, match="does not open with this release's key"):
        TeeKeyPair("ec").decrypt(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"protected":"e30","protected":"e30"}', "not valid JSON"),
        (b"[]", "not a flattened JWE"),
        (b'{"protected":"e30"}', "not a flattened JWE"),
    ],
)
def test_malformed_jwe_is_refused(body, message):
    with pytest.raises(KeySourceError, match=message):
        TeeKeyPair("ec").decrypt(body)


def test_jwe_with_unexpected_algorithms_is_refused():
    keys = TeeKeyPair("rsa")
    response = encrypt_to(keys.public_jwk, b"x")
    header = base64.urlsafe_b64encode(b'{"alg":"RSA1_5","enc":"A256GCM"}').rstrip(b"=")
    response["protected"] = header.decode()
    with pytest.raises(KeySourceError, match="alg='RSA1_5'"):
        keys.decrypt(json.dumps(response).encode())


def test_devkbs_refuses_unusable_tee_keys():
    with pytest.raises(JweError, match="unsupported TEE key algorithm"):
        encrypt_to({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES", "x": "", "y": ""}, b"x")
    with pytest.raises(JweError, match="not on the curve"):
        encrypt_to({**RFC7517_EC, "y": RFC7517_EC["x"]}, b"x")


KEY = bytes(range(32))
DIGEST = "ab" * 32


def test_raw_key_resource():
    released = parse_resource(KEY)
    assert (released.key, released.manifest_sha256) == (KEY, None)
    assert KEY.hex() not in repr(released)


def test_key_bundle_round_trip():
    released = parse_resource(make_bundle(KEY, DIGEST))
    assert (released.key, released.manifest_sha256) == (KEY, DIGEST)


def _bundle(**changes) -> bytes:
    doc = json.loads(make_bundle(KEY, DIGEST))
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (KEY[:31], "neither a raw 32-byte key nor a cmlfs key bundle"),
        (KEY + b"\0", "neither a raw 32-byte key nor a cmlfs key bundle"),
        (b"x" * 5000, "larger than 4096"),
        (_bundle(type="other"), "neither"),
        (_bundle(extra=1), "neither"),
        (_bundle(manifest_sha256=...), "neither"),
        (_bundle(version=2), "unsupported key bundle version"),
        (_bundle(version=True), "unsupported key bundle version"),
        (_bundle(manifest_sha256="AB" * 32), "64 lowercase hex"),
        (_bundle(key=base64.b64encode(KEY[:16]).decode()), "is not 32 bytes"),
        (_bundle(key="!!"), "not base64"),
    ],
)
def test_bad_resources_are_refused(data, message):
    with pytest.raises(KeySourceError, match=message):
        parse_resource(data)


def test_bundle_errors_never_show_the_key():
    with pytest.raises(KeySourceError) as caught:
        parse_resource(_bundle(version=2))
    assert base64.b64encode(KEY).decode() not in str(caught.value)


def test_policy_first_matching_rule_decides():
    policy = parse_policy(
        json.dumps(
            {
                "default": "deny",
                "rules": [
                    {"effect": "deny", "tee": "*", "resource": "default/secret/*"},
                    {"effect": "allow", "tee": ["sample", "tdx"], "resource": "default/*"},
                ],
            }
        ).encode()
    )
    assert policy.rules[1] == Rule("allow", ("sample", "tdx"), "default/*")
    for loopback in (True, False):
        assert policy.allows("sample", "default/model/demo", loopback)
        assert policy.allows("tdx", "default/model/demo", loopback)
        assert not policy.allows("snp", "default/model/demo", loopback)
        assert not policy.allows("tdx", "default/secret/key", loopback)
        assert not policy.allows("sample", "other/model/demo", loopback)
        assert Policy("allow").allows("snp", "any/thing/here", loopback)


@pytest.mark.parametrize(
    "doc",
    [
        b"[]",
        b'{"rules":[]}',
        b'{"default":"maybe"}',
        b'{"default":"allow","rules":[{"effect":"allow"}]}',
        b'{"default":"allow","rules":[{"effect":"allow","tee":[],"resource":"*"}]}',
        b'{"default":"allow","extra":1}',
    ],
)
def test_bad_policies_are_refused(doc):
    with pytest.raises(PolicyError):
        parse_policy(doc)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("kbs://host:8080/repo/type", "kbs://HOST:PORT/REPO/TYPE/TAG"),
        ("kbs:///repo/type/tag", "kbs://HOST:PORT/REPO/TYPE/TAG"),
        ("kbs://host:8080/repo/type/tag?x=1", "no query"),
        ("kbs://host:99999/repo/type/tag", "invalid port"),
        ("kbs://host:8080/repo/../tag", "invalid resource path segment"),
    ],
)
def test_bad_kbs_uris(uri, message):
    with pytest.raises(KeySourceError, match=message):
        parse_kbs_uri(uri, KeySettings())


def test_kbs_uri_is_https_unless_plain_http_to_the_broker_is_asked():
    assert parse_kbs_uri("kbs://h:1/a/b/c", KeySettings()).base_url == "https://h:1"
    plain = KeySettings(insecure_kbs_http=True)
    assert parse_kbs_uri("kbs://h:1/a/b/c", plain).base_url == "http://h:1"


def test_only_a_verified_channel_vouches_for_the_key(tmp_path):
    """A key over plain HTTP could be anyone's: the daemon needs --key-id to use it."""
    plain = KeySettings(insecure_kbs_http=True)
    assert key_source_from_uri("kbs://h:1/a/b/c", KeySettings()).authenticated
    assert not key_source_from_uri("kbs://h:1/a/b/c", plain).authenticated
    assert key_source_from_uri("cdh:///a/b/c", KeySettings()).authenticated
    assert key_source_from_uri("cdh://127.0.0.1:8006/a/b/c", KeySettings()).authenticated
    assert not key_source_from_uri("cdh://192.0.2.1:8006/a/b/c", plain).authenticated
    assert key_source_from_uri(f"file://{tmp_path}/k", KeySettings()).authenticated
