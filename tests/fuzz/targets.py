"""Fuzz targets: every parser of untrusted input, each as a function of one byte string.

A target feeds the bytes to a real cmlfs parser and returns normally whether
the parser accepted or refused them. A refusal must be a typed cmlfs error
(``CmlfsError``); any other exception (``ValueError``, ``KeyError``,
``RecursionError``, ...) is a crash: it would escape the errno boundary as a
traceback, or kill a CLI command with one. Accepted input is checked against
the parser's own bounds, so "accepted but out of range" is a crash too.

Shared by the hypothesis property tests, the regression corpus replay and the
atheris runner (``tests/fuzz/run_atheris.py``), which imports this module under
coverage instrumentation.
"""

import atexit
import contextlib
import io
import json
import re
import shutil
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import requests
from urllib3 import HTTPResponse
from urllib3._collections import HTTPHeaderDict
from urllib3.exceptions import InvalidHeader

from cmlfs.devkbs.protocol import TEE_PUBKEY_FIELDS, parse_attestation, parse_request
from cmlfs.errors import CmlfsError, StoreError
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.header import BlobHeader, BlobOpener
from cmlfs.format.layout import MAX_PLAINTEXT_SIZE
from cmlfs.format.strictjson import loads_strict
from cmlfs.keys.base import KeySettings
from cmlfs.keys.bundle import parse_resource
from cmlfs.keys.kbs import TeeKeyPair, _parse_challenge, _session_cookie, broker_error
from cmlfs.keys.rcar import PROTOCOL_VERSION, TEE_TYPES
from cmlfs.keys.uri import key_source_from_uri
from cmlfs.manifest import (
    MAX_ENTRIES,
    MAX_MANIFEST_LEN,
    PREFIX_LEN,
    open_manifest,
    read_envelope,
)
from cmlfs.signature import (
    SIGNATURE_NAME,
    PublisherKey,
    load_publisher_key,
    sign_folder,
    signed_digests,
    signer_of,
)
from cmlfs.stores import open_store
from cmlfs.stores.base import StoreSettings, parse_header
from cmlfs.stores.http import (
    MAX_OBJECT_SIZE,
    HttpTransport,
    identity_from,
    parse_content_range,
)
from cmlfs.stores.oci import (
    parse_challenge,
    parse_image_manifest,
    parse_reference,
    parse_token_answer,
)
from tests.kbs_helpers import write_key_pair

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
Target = Callable[[bytes], None]


@cache
def _vector(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def vector_key() -> bytes:
    """The golden vectors' model key (0x00..0x1f): public test data, never a real key."""
    return bytes.fromhex(_vector("v1-manifest-aes-256-gcm-siv.json")["model_key"])


def _text(data: bytes) -> str:
    """Bytes as an HTTP header value arrives from http.client: decoded as ISO-8859-1."""
    return data.decode("latin-1")


def _response(status: int, body: bytes, headers: dict[str, str] | None = None):
    """A real ``requests.Response`` over an in-memory body, as a server would have sent it.

    Headers urllib3 itself refuses (e.g. ``Content-Length: 55,5``) never reach cmlfs: the
    transport turns that refusal into a StoreError, and so does this helper.
    """
    raw_headers = HTTPHeaderDict(headers or {})
    response = requests.Response()
    response.status_code = status
    response.headers = requests.structures.CaseInsensitiveDict(raw_headers)
    try:
        response.raw = HTTPResponse(
            body=io.BytesIO(body), headers=raw_headers, status=status, preload_content=False
        )
    except InvalidHeader:
        raise StoreError("the server sent an invalid header") from None
    return response


def blob_header(data: bytes) -> None:
    header = BlobHeader.parse(data)
    layout = header.layout
    assert 0 <= layout.plaintext_size <= MAX_PLAINTEXT_SIZE
    assert layout.blob_size <= 2 * MAX_PLAINTEXT_SIZE
    assert header.pack() == data  # a parsed header packs back to the same bytes
    BlobOpener(vector_key(), header)  # commitment check: WrongKeyError or a usable opener


def manifest_envelope(data: bytes) -> None:
    envelope = read_envelope(data)
    assert len(envelope.key_id) == 32


def sealed_manifest(data: bytes) -> None:
    manifest = open_manifest(data, vector_key())
    assert len(data) <= MAX_MANIFEST_LEN
    assert len(manifest.files) <= MAX_ENTRIES and len(manifest.dirs) <= MAX_ENTRIES


def manifest_body(data: bytes) -> None:
    """The sealed body parser, reached by sealing ``data`` as a body under the vectors' key.

    Only the key holder can produce such bodies; the reader validates them anyway
    (docs/FORMAT.md 6.5), and this is the parser behind that validation.
    """
    vector = _vector("v1-manifest-aes-256-gcm-siv.json")
    associated = bytes.fromhex(vector["prefix"]) + vector["envelope"].encode()
    salt = bytes.fromhex(vector["salt"])
    from cmlfs.format.keys import Purpose, derive_object_key

    aead_key, _ = derive_object_key(vector_key(), salt, Purpose.MANIFEST_V1)
    record = RecordCipher(Algorithm.AES_256_GCM_SIV, aead_key).seal(
        data, associated, bytes.fromhex(vector["nonce"])
    )
    sealed_manifest(associated + record)


def key_bundle(data: bytes) -> None:
    release = parse_resource(data)
    assert len(release.key) == 32


def kbs_challenge(data: bytes) -> None:
    nonce, hash_name = _parse_challenge(loads_strict(data, "challenge", CmlfsError))
    assert 0 < len(nonce) <= 1024 and hash_name in ("sha256", "sha384", "sha512")


def devkbs_request(data: bytes) -> None:
    """dev-kbs's /auth body parser (hostile guests talk to it too)."""
    request = parse_request(data)
    version = loads_strict(data, "request", CmlfsError)["version"]
    assert request.tee in TEE_TYPES and version == PROTOCOL_VERSION


def devkbs_attestation(data: bytes) -> None:
    attestation = parse_attestation(data)
    key = attestation.tee_pubkey
    assert tuple(key) == TEE_PUBKEY_FIELDS[key["kty"]]
    assert isinstance(attestation.nonce, str) and isinstance(attestation.additional_evidence, str)


def kbs_error(data: bytes) -> None:
    error = broker_error(_response(401, data), "release")
    assert str(error).isprintable() and len(str(error)) < 1000


def kbs_session_cookie(data: bytes) -> None:
    cookie = _session_cookie(_response(200, b"", {"Set-Cookie": _text(data)}))
    assert 0 < len(cookie) <= 256


@cache
def _tee_key() -> TeeKeyPair:
    return TeeKeyPair("ec")


def kbs_jwe(data: bytes) -> None:
    _tee_key().decrypt(data)


def oci_image_manifest(data: bytes) -> None:
    objects = parse_image_manifest(data)
    assert "manifest.cmlfs" in objects
    assert all(0 <= d.size <= MAX_OBJECT_SIZE for d in objects.values())


def oci_challenge(data: bytes) -> None:
    parse_challenge(_text(data))


def oci_token_answer(data: bytes) -> None:
    token = parse_token_answer(data)
    assert token and token.isprintable()


def oci_reference(data: bytes) -> None:
    parse_reference("oci://" + data.decode("utf-8", "surrogateescape"))


def key_uri(data: bytes) -> None:
    key_source_from_uri(
        data.decode("utf-8", "surrogateescape"),
        KeySettings(attester="sample", tsm_report_root=Path("/nonexistent")),
    )


def content_range(data: bytes) -> None:
    """A Content-Range answer to a request for ``offset``..``offset+length-1``."""
    offset = int.from_bytes(data[:3], "big")
    length = int.from_bytes(data[3:5], "big") + 1
    total = parse_content_range(_text(data[5:]), offset, length, None)
    assert total >= offset + length


def http_identity(data: bytes) -> None:
    """Size and ETag of a HEAD answer (Content-Length, ETag)."""
    length, _, etag = _text(data).partition("\n")
    identity = identity_from(_response(200, b"", {"Content-Length": length, "ETag": etag}))
    assert 0 <= identity.size <= MAX_OBJECT_SIZE


def http_body(data: bytes) -> None:
    """A body whose Content-Length header is hostile, read with a cap."""
    announced, _, body = data.partition(b"\n")
    transport = HttpTransport(StoreSettings())
    try:
        result = transport.read_body(_response(200, body, {"Content-Length": _text(announced)}), 64)
    finally:
        transport.close()
    assert len(result) <= 64


def store_url(data: bytes) -> None:
    """A STORE argument naming a network store (the first byte picks the scheme)."""
    scheme = ("http://", "https://", "oci://")[data[0] % 3] if data else "http://"
    store = open_store(scheme + data[1:].decode("utf-8", "surrogateescape"), StoreSettings())
    try:
        assert "://" in store.describe()
    finally:
        store.close()


@cache
def _publisher() -> tuple[PublisherKey, bytes]:
    """A fixed P-256 test publisher (public test data) and its signature over a tiny store."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.derive_private_key(0x5EED, ec.SECP256R1())
    base = Path(tempfile.mkdtemp(prefix="cmlfs-fuzz-publisher-"))
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    folder = base / "store"
    (folder / "blobs").mkdir(parents=True)
    (folder / "manifest.cmlfs").write_bytes(b"manifest")
    (folder / "blobs" / ("a" * 64)).write_bytes(b"blob")
    private, public = base / "publisher.pem", base / "publisher.pub"
    write_key_pair(key, private, public)
    sign_folder(folder, private)
    return load_publisher_key(public), (folder / SIGNATURE_NAME).read_bytes()


def publisher_signature(data: bytes) -> None:
    """A store's model.sig: who signed it, and what it lists once checked with the key."""
    assert signer_of(data)
    digests = signed_digests(data, _publisher()[0])
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests.values())


def store_header(data: bytes) -> None:
    name, value = parse_header(data.decode("utf-8", "surrogateescape"))
    assert "\n" not in name + value and "\r" not in name + value


TARGETS: dict[str, Target] = {
    target.__name__: target
    for target in (
        blob_header,
        manifest_envelope,
        sealed_manifest,
        manifest_body,
        key_bundle,
        kbs_challenge,
        kbs_error,
        kbs_session_cookie,
        kbs_jwe,
        devkbs_request,
        devkbs_attestation,
        oci_image_manifest,
        oci_challenge,
        oci_token_answer,
        oci_reference,
        key_uri,
        content_range,
        http_identity,
        http_body,
        store_url,
        store_header,
        publisher_signature,
    )
}


def run(name: str, data: bytes) -> None:
    """Feed ``data`` to target ``name``; a typed refusal is a normal outcome."""
    with contextlib.suppress(CmlfsError):
        TARGETS[name](data)


def seeds() -> dict[str, list[bytes]]:
    """Valid (or nearly valid) inputs per target: where fuzzing starts."""
    manifest = _vector("v1-manifest-aes-256-gcm-siv.json")
    blob = _vector("v1-blob-aes-256-gcm-siv.json")
    sealed = bytes.fromhex(manifest["sealed"])
    image = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.cmlfs.model.v1",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:" + "4" * 64,
        },
        "layers": [
            {
                "mediaType": "application/vnd.cmlfs.manifest.v1",
                "digest": "sha256:" + "a" * 64,
                "size": 1077,
            },
            {
                "mediaType": "application/vnd.cmlfs.blob.v1",
                "digest": "sha256:" + "b" * 64,
                "size": 9,
            },
        ],
    }
    bundle = {
        "type": "cmlfs-key-bundle",
        "version": 1,
        "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "manifest_sha256": manifest["manifest_sha256"],
    }
    jwe = {"protected": "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00ifQ"}
    jwe |= {
        "encrypted_key": "AAAA",
        "iv": "AAAAAAAAAAAAAAAA",
        "ciphertext": "AAAA",
        "tag": "A" * 22,
    }
    return {
        "blob_header": [bytes.fromhex(blob["header"])],
        "manifest_envelope": [sealed[: PREFIX_LEN + 200]],
        "sealed_manifest": [sealed],
        "manifest_body": [manifest["body"].encode()],
        "key_bundle": [json.dumps(bundle).encode(), vector_key()],
        "kbs_challenge": [
            b'{"nonce":"AAECAwQ=","extra-params":{"selected-hash-algorithm":"sha256"}}'
        ],
        "kbs_error": [
            b'{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny",'
            b'"detail":"denied"}'
        ],
        "kbs_session_cookie": [b"kbs-session-id=0123456789abcdef; Path=/; HttpOnly"],
        "kbs_jwe": [json.dumps(jwe).encode()],
        "devkbs_request": [
            b'{"version":"0.4.0","tee":"sample","extra-params":""}',
            b'{"version":"0.4.0","tee":"tdx","extra-params":{"supported-hash-algorithms":["sha384"]}}',
        ],
        "devkbs_attestation": [
            json.dumps(
                {
                    "runtime-data": {"nonce": "AAEC", "tee-pubkey": TeeKeyPair("ec").public_jwk},
                    "tee-evidence": {
                        "primary_evidence": {"svn": "1", "report_data": ""},
                        "additional_evidence": "{}",
                    },
                }
            ).encode()
        ],
        "oci_image_manifest": [json.dumps(image).encode()],
        "oci_challenge": [
            b'Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"'
        ],
        "oci_token_answer": [b'{"token":"abc.def","expires_in":300}', b'{"access_token":"x"}'],
        "oci_reference": [b"registry.example:5000/models/demo:v1", b"r/m@sha256:" + b"0" * 64],
        "key_uri": [b"kbs://127.0.0.1:8080/default/model/demo", b"cdh:///a/b/c", b"file:///k"],
        "content_range": [b"\x00\x00\x10\x0f\xff" + b"bytes 16-4111/8464"],
        "http_identity": [b'8464\n"5f3a-20"', b'0\nW/"x"'],
        "http_body": [b"5\nhello", b"\nchunked"],
        "store_url": [b"\x00127.0.0.1:8080/models/demo", b"\x02r.example/m/demo:v1"],
        "store_header": [b"Authorization: Bearer token", b"X-Custom: a b c"],
        "publisher_signature": [_publisher()[1]],
    }
