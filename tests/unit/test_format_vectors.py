"""Golden vectors (tests/vectors/v1-*.json) pin the on-store format byte for byte.

Each vector is rebuilt from its stored inputs with the code and compared with
the stored bytes (a format change fails here), then opened again in the other
direction. A second, independent decoder written only from docs/FORMAT.md
(struct, hashlib, HKDF, the AEAD) opens the same bytes, so the document and
the code cannot drift apart. To add a format version, add ``v2-*`` files;
never regenerate these.
"""

import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cmlfs.format.aead import Algorithm
from cmlfs.format.header import BlobHeader, BlobOpener, BlobSealer
from cmlfs.format.keys import Purpose, derive_object_key, key_id
from cmlfs.format.layout import ChunkLayout
from cmlfs.manifest import (
    DirEntry,
    FileEntry,
    Manifest,
    manifest_digest,
    open_manifest,
    read_envelope,
    seal_manifest,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
BLOBS = sorted(p.name for p in VECTORS.glob("v1-blob-*.json"))
MANIFESTS = sorted(p.name for p in VECTORS.glob("v1-manifest-*.json"))


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_the_vector_set_is_complete():
    assert BLOBS == [
        "v1-blob-aes-256-gcm-siv.json",
        "v1-blob-aes-256-gcm.json",
        "v1-blob-empty-aes-256-gcm-siv.json",
    ]
    assert MANIFESTS == ["v1-manifest-aes-256-gcm-siv.json", "v1-manifest-aes-256-gcm.json"]
    assert (VECTORS / "v1-keys.json").is_file()


def test_key_derivations_and_key_id():
    vector = load("v1-keys.json")
    model_key = bytes.fromhex(vector["model_key"])
    assert key_id(model_key) == vector["key_id"]
    purposes = {p.value.decode(): p for p in Purpose}
    assert sorted(d["info"] for d in vector["derivations"]) == sorted(purposes)
    for d in vector["derivations"]:
        key, commitment = derive_object_key(
            model_key, bytes.fromhex(d["salt"]), purposes[d["info"]]
        )
        assert (key.hex(), commitment.hex()) == (d["aead_key"], d["commitment"])


# --- blobs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BLOBS)
def test_code_writes_exactly_the_stored_blob(name: str):
    vector = load(name)
    plaintext = bytes.fromhex(vector["plaintext"])
    layout = ChunkLayout(vector["chunk_size"], len(plaintext))
    nonces = iter(bytes.fromhex(r["nonce"]) for r in vector["records"])
    sealer = BlobSealer(
        bytes.fromhex(vector["model_key"]),
        layout,
        Algorithm.from_label(vector["algorithm"]),
        salt=bytes.fromhex(vector["salt"]),
        nonces=lambda n: next(nonces),
    )
    assert sealer.header.pack().hex() == vector["header"]
    assert sealer.header.digest.hex() == vector["header_sha256"]
    assert len(vector["records"]) == layout.n_chunks
    blob = sealer.header.pack()
    for r in vector["records"]:
        i = r["index"]
        assert (r["last"], r["offset"]) == (layout.is_last(i), layout.record_offset(i))
        chunk = plaintext[layout.chunk_offset(i) :][: layout.chunk_len(i)]
        record = sealer.seal_chunk(i, chunk)
        assert record.hex() == r["record"]
        blob += record
    assert len(blob) == vector["blob_size"] == layout.blob_size
    assert hashlib.sha256(blob).hexdigest() == vector["blob_sha256"]


@pytest.mark.parametrize("name", BLOBS)
def test_code_reads_the_stored_blob(name: str):
    vector = load(name)
    header = BlobHeader.parse(bytes.fromhex(vector["header"]))
    assert header.algorithm.label == vector["algorithm"]
    assert header.layout.chunk_size == vector["chunk_size"]
    assert header.salt.hex() == vector["salt"]
    opener = BlobOpener(bytes.fromhex(vector["model_key"]), header)
    plaintext = b"".join(
        opener.open_chunk(r["index"], bytes.fromhex(r["record"])) for r in vector["records"]
    )
    assert plaintext.hex() == vector["plaintext"]


def spec_open_blob(blob: bytes, model_key: bytes) -> bytes:
    """An independent decoder following docs/FORMAT.md alone."""
    magic, version, alg, log2, reserved, size, salt, commitment = struct.unpack(
        ">8sHHB3sQ32s32s", blob[:88]
    )
    assert (magic, version, reserved) == (b"CMLFSBLB", 1, bytes(3))
    assert 12 <= log2 <= 22 and size <= 1 << 48
    okm = HKDF(SHA256(), 64, salt, b"cmlfs/v1/content").derive(model_key)
    assert okm[32:] == commitment
    aead = {1: AESGCMSIV, 2: AESGCM}[alg](okm[:32])
    chunk = 1 << log2
    n_chunks = -(-size // chunk)
    assert len(blob) == 88 + 28 * n_chunks + size
    digest = hashlib.sha256(blob[:88]).digest()
    out = []
    for i in range(n_chunks):
        start = 88 + i * (chunk + 28)
        record = blob[start : start + min(chunk, size - i * chunk) + 28]
        ad = digest + struct.pack(">QB", i, i == n_chunks - 1)
        out.append(aead.decrypt(record[:12], record[12:], ad))
    return b"".join(out)


@pytest.mark.parametrize("name", BLOBS)
def test_independent_decoder_reads_the_stored_blob(name: str):
    vector = load(name)
    blob = bytes.fromhex(vector["header"]) + b"".join(
        bytes.fromhex(r["record"]) for r in vector["records"]
    )
    assert spec_open_blob(blob, bytes.fromhex(vector["model_key"])).hex() == vector["plaintext"]


def test_the_multi_chunk_vectors_end_with_a_short_chunk():
    for name in ("v1-blob-aes-256-gcm-siv.json", "v1-blob-aes-256-gcm.json"):
        records = load(name)["records"]
        assert len(records) == 3
        assert [len(r["record"]) // 2 for r in records] == [4124, 4124, 128]
    assert load("v1-blob-empty-aes-256-gcm-siv.json")["records"] == []


# --- manifests --------------------------------------------------------------------------


def manifest_from(vector: dict) -> Manifest:
    m = vector["manifest"]
    return Manifest(
        name=m["name"],
        version=m["version"],
        chunk_size=m["chunk_size"],
        algorithm=Algorithm.from_label(m["algorithm"]),
        files=tuple(FileEntry(**f) for f in m["files"]),
        dirs=tuple(DirEntry(**d) for d in m["dirs"]),
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_code_writes_exactly_the_stored_manifest(name: str):
    vector = load(name)
    sealed = seal_manifest(
        manifest_from(vector),
        bytes.fromhex(vector["model_key"]),
        vector["key_uri"],
        salt=bytes.fromhex(vector["salt"]),
        nonce=bytes.fromhex(vector["nonce"]),
    )
    parts = vector["prefix"] + vector["envelope"].encode().hex() + vector["record"]
    assert sealed.hex() == vector["sealed"] == parts
    assert manifest_digest(sealed) == vector["manifest_sha256"]


@pytest.mark.parametrize("name", MANIFESTS)
def test_code_reads_the_stored_manifest(name: str):
    vector = load(name)
    sealed = bytes.fromhex(vector["sealed"])
    envelope = read_envelope(sealed)
    assert envelope.key_uri == vector["key_uri"]
    assert envelope.key_id == load("v1-keys.json")["key_id"]
    opened = open_manifest(sealed, bytes.fromhex(vector["model_key"]))
    assert opened == manifest_from(vector)
    assert opened.envelope == envelope


@pytest.mark.parametrize("name", MANIFESTS)
def test_independent_decoder_reads_the_stored_manifest(name: str):
    vector = load(name)
    sealed = bytes.fromhex(vector["sealed"])
    magic, version, alg, env_len, salt, commitment = struct.unpack(">8sHHI32s32s", sealed[:80])
    assert (magic, version) == (b"CMLFSMAN", 1)
    envelope = json.loads(sealed[80 : 80 + env_len])
    assert envelope == {
        "format": 1,
        "key_id": load("v1-keys.json")["key_id"],
        "key_uri": vector["key_uri"],
    }
    okm = HKDF(SHA256(), 64, salt, b"cmlfs/v1/manifest").derive(bytes.fromhex(vector["model_key"]))
    assert okm[32:] == commitment
    record = sealed[80 + env_len :]
    aead = {1: AESGCMSIV, 2: AESGCM}[alg](okm[:32])
    body = aead.decrypt(record[:12], record[12:], sealed[: 80 + env_len])
    assert body.decode() == vector["body"]
    parsed = json.loads(body)
    assert parsed["algorithm"] == vector["manifest"]["algorithm"]
    assert parsed["files"] == vector["manifest"]["files"]


def test_manifest_vectors_reference_the_blob_vectors():
    by_header = {load(n)["header_sha256"]: load(n) for n in BLOBS}
    for name in MANIFESTS:
        for f in load(name)["manifest"]["files"]:
            blob = by_header[f["header_sha256"]]
            assert (f["blob"], f["blob_size"]) == (blob["blob_sha256"], blob["blob_size"])
            plaintext = bytes.fromhex(blob["plaintext"])
            assert (f["size"], f["sha256"]) == (
                len(plaintext),
                hashlib.sha256(plaintext).hexdigest(),
            )
