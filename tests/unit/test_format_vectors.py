"""Golden vectors (tests/vectors/v1-*.json, v2-*.json) pin the on-store format byte for byte.

Each vector is rebuilt from its stored inputs with the code and compared with
the stored bytes (a format change fails here), then opened again in the other
direction. A second, independent decoder written only from docs/FORMAT.md
(struct, hashlib, blake3, HKDF, the AEAD) opens the same bytes, so the document and
the code cannot drift apart. The negative vectors (v2-negative.json) are damaged
stores: the code and the independent decoder must both refuse each with the error
class it names. To add a format version, add ``v3-*`` files; never regenerate these.
"""

import hashlib
import json
import struct
from pathlib import Path

import pytest
import trio
from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cmlfs import errors
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.hashlist import HashListBuilder
from cmlfs.format.header import BlobHeader, BlobOpener, BlobSealer
from cmlfs.format.keys import Purpose, derive_object_key, key_id
from cmlfs.format.layout import ChunkLayout
from cmlfs.manifest import (
    MANIFEST_NAME,
    DirEntry,
    FileEntry,
    Manifest,
    manifest_digest,
    open_manifest,
    read_envelope,
    seal_manifest,
)
from cmlfs.reader import ModelReader
from cmlfs.stores import LocalStore

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
BLOBS = sorted(p.name for p in VECTORS.glob("v*-blob-*.json") if "two-pages" not in p.name)
MANIFESTS = sorted(p.name for p in VECTORS.glob("v*-manifest-*.json"))
TWO_PAGES = "v2-blob-two-pages-aes-256-gcm.json"
NEGATIVE = json.loads((VECTORS / "v2-negative.json").read_text())


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def version_of(name: str) -> int:
    return int(name[1 : name.index("-")])


def test_the_vector_set_is_complete():
    kinds = ["blob-aes-256-gcm-siv", "blob-aes-256-gcm", "blob-empty-aes-256-gcm-siv"]
    assert sorted(f"v{v}-{kind}.json" for v in (1, 2) for kind in kinds) == BLOBS
    assert [
        f"v{v}-manifest-{a}.json" for v in (1, 2) for a in ("aes-256-gcm-siv", "aes-256-gcm")
    ] == MANIFESTS
    assert {p.name for p in VECTORS.glob("*.json")} == {
        *BLOBS,
        *MANIFESTS,
        "v1-keys.json",
        "v2-keys.json",
        TWO_PAGES,
        "v2-negative.json",
    }


@pytest.mark.parametrize("version", [1, 2])
def test_key_derivations_and_key_id(version: int):
    vector = load(f"v{version}-keys.json")
    model_key = bytes.fromhex(vector["model_key"])
    assert key_id(model_key) == vector["key_id"]  # the same id in every version
    purposes = {Purpose.content(version), Purpose.manifest(version)}
    assert sorted(d["info"] for d in vector["derivations"]) == sorted(
        p.value.decode() for p in purposes
    )
    for d in vector["derivations"]:
        key, commitment = derive_object_key(
            model_key, bytes.fromhex(d["salt"]), Purpose(d["info"].encode())
        )
        assert (key.hex(), commitment.hex()) == (d["aead_key"], d["commitment"])


# --- blobs ------------------------------------------------------------------------------


def seal_vector_blob(vector: dict, version: int, plaintext: bytes, nonces) -> bytes:
    """The whole blob the code writes from ``vector``'s inputs."""
    layout = ChunkLayout(vector["chunk_size"], len(plaintext))
    sealer = BlobSealer(
        bytes.fromhex(vector["model_key"]),
        layout,
        Algorithm.from_label(vector["algorithm"]),
        salt=bytes.fromhex(vector["salt"]),
        nonces=lambda n: next(nonces),
        version=version,
    )
    hashes = HashListBuilder()
    blob = sealer.header.pack()
    for i in range(layout.n_chunks):
        record = sealer.seal_chunk(i, plaintext[layout.chunk_offset(i) :][: layout.chunk_len(i)])
        hashes.add(record)
        blob += record
    if version == 2:
        trailer, root = hashes.finish()
        assert root.hex() == vector["hash_root"]
        assert trailer.hex() == "".join(vector["leaves"] + vector["page_digests"])
        blob += trailer
    assert len(blob) == vector["blob_size"] == sealer.header.blob_size
    assert hashlib.sha256(blob).hexdigest() == vector["blob_sha256"]
    return blob


def stored_blob(vector: dict) -> bytes:
    blob = bytes.fromhex(vector["header"]) + b"".join(
        bytes.fromhex(r["record"]) for r in vector["records"]
    )
    return blob + bytes.fromhex("".join(vector.get("leaves", []) + vector.get("page_digests", [])))


@pytest.mark.parametrize("name", BLOBS)
def test_code_writes_exactly_the_stored_blob(name: str):
    vector = load(name)
    plaintext = bytes.fromhex(vector["plaintext"])
    nonces = iter(bytes.fromhex(r["nonce"]) for r in vector["records"])
    blob = seal_vector_blob(vector, version_of(name), plaintext, nonces)
    layout = ChunkLayout(vector["chunk_size"], len(plaintext))
    assert blob[:88].hex() == vector["header"]
    assert hashlib.sha256(blob[:88]).hexdigest() == vector["header_sha256"]
    assert len(vector["records"]) == layout.n_chunks
    for r in vector["records"]:
        i = r["index"]
        assert (r["last"], r["offset"]) == (layout.is_last(i), layout.record_offset(i))
        assert blob[r["offset"] :][: layout.record_len(i)].hex() == r["record"]
    assert blob == stored_blob(vector)


@pytest.mark.parametrize("name", BLOBS)
def test_code_reads_the_stored_blob(name: str):
    vector = load(name)
    header = BlobHeader.parse(bytes.fromhex(vector["header"]))
    assert header.version == version_of(name)
    assert header.algorithm.label == vector["algorithm"]
    assert header.layout.chunk_size == vector["chunk_size"]
    assert header.salt.hex() == vector["salt"]
    opener = BlobOpener(bytes.fromhex(vector["model_key"]), header)
    leaves = [bytes.fromhex(leaf) for leaf in vector["leaves"]] if header.version == 2 else None
    plaintext = b"".join(
        opener.open_chunk(r["index"], bytes.fromhex(r["record"]), leaves and leaves[r["index"]])
        for r in vector["records"]
    )
    assert plaintext.hex() == vector["plaintext"]


def test_the_two_page_vector_rebuilds_from_its_rules():
    """130 records: the leaves of records 128 and 129 are the second page."""
    vector = load(TWO_PAGES)
    size = vector["plaintext_size"]
    plaintext = bytes((7 * i + 3) % 256 for i in range(size))
    assert hashlib.sha256(plaintext).hexdigest() == vector["plaintext_sha256"]
    nonces = iter(bytes([0xB2]) + i.to_bytes(11, "big") for i in range(size // 4096 + 1))
    blob = seal_vector_blob(vector, 2, plaintext, nonces)
    assert (len(vector["leaves"]), len(vector["page_digests"])) == (130, 2)
    entry = {"header_sha256": vector["header_sha256"], "hash_root": vector["hash_root"]}
    entry |= {"size": size, "blob_size": vector["blob_size"]}
    chunks = spec_open_blob(2, entry, blob, bytes.fromhex(vector["model_key"]))
    assert b"".join(chunks) == plaintext


# --- the independent decoder (docs/FORMAT.md alone) -------------------------------------

AEADS = {1: AESGCMSIV, 2: AESGCM}
FILE_KEYS = {"path", "size", "mode", "mtime_ns", "blob", "blob_size", "header_sha256", "sha256"}


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def hash_list_hash(data: bytes) -> bytes:
    """FORMAT.md 1 and 5.5: BLAKE3, plain hash mode, 32-byte output."""
    return blake3(data).digest()


def spec_open_manifest(sealed: bytes, model_key: bytes) -> tuple[int, dict]:
    """(version, body) of a sealed manifest, following FORMAT.md 6.7."""
    if not 80 <= len(sealed) <= 67_174_508:
        raise errors.FormatError("length")
    magic, version, alg, env_len, salt, commitment = struct.unpack(">8sHHI32s32s", sealed[:80])
    if magic != b"CMLFSMAN" or version not in (1, 2) or alg not in (1, 2):
        raise errors.FormatError("prefix")
    if env_len > 65536 or 80 + env_len > len(sealed):
        raise errors.FormatError("envelope length")
    envelope = json.loads(sealed[80 : 80 + env_len])
    if envelope["format"] != version:
        raise errors.FormatError("envelope format")
    okm = HKDF(SHA256(), 16, None, b"cmlfs/v1/key-id").derive(model_key)
    if okm.hex() != envelope["key_id"]:
        raise errors.WrongKeyError("key id")
    okm = HKDF(SHA256(), 64, salt, f"cmlfs/v{version}/manifest".encode()).derive(model_key)
    if okm[32:] != commitment:
        raise errors.WrongKeyError("commitment")
    record = sealed[80 + env_len :]
    try:
        body = AEADS[alg](okm[:32]).decrypt(record[:12], record[12:], sealed[: 80 + env_len])
    except InvalidTag:
        raise errors.IntegrityError("manifest record") from None
    parsed = json.loads(body)
    keys = FILE_KEYS | ({"hash_root"} if version == 2 else set())
    blobs = [f["blob"] for f in parsed["files"]]
    if any(set(f) != keys for f in parsed["files"]) or len(set(blobs)) != len(blobs):
        raise errors.FormatError("file entries")
    return version, parsed


def spec_open_blob(version: int, entry: dict, blob: bytes, model_key: bytes) -> list:
    """Each chunk's plaintext, or the error reading it gives (FORMAT.md 5.4 and 5.5);
    raises what opening the file must."""
    header = blob[:88]
    if sha256(header) != bytes.fromhex(entry["header_sha256"]):
        raise errors.IntegrityError("header digest")
    _, hv, alg, log2, _, size, salt, commitment = struct.unpack(">8sHHB3sQ32s32s", header)
    okm = HKDF(SHA256(), 64, salt, f"cmlfs/v{version}/content".encode()).derive(model_key)
    if hv != version or okm[32:] != commitment or size != entry["size"]:
        raise errors.IntegrityError("header")
    chunk = 1 << log2
    n = -(-size // chunk)
    pages = -(-n // 128)
    records_end = 88 + 28 * n + size
    expected = records_end + (32 * n + 32 * pages if version == 2 else 0)
    if len(blob) != expected or expected != entry["blob_size"]:
        raise errors.IntegrityError("blob size")
    digests = blob[records_end + 32 * n :]
    if version == 2 and hash_list_hash(digests) != bytes.fromhex(entry["hash_root"]):
        raise errors.IntegrityError("hash root")
    aead = AEADS[alg](okm[:32])
    out: list = []
    for i in range(n):
        start = 88 + i * (chunk + 28)
        record = blob[start : start + min(chunk, size - i * chunk) + 28]
        if version == 2:
            page = blob[records_end + 32 * 128 * (i // 128) :][: 32 * min(128, n - i // 128 * 128)]
            if hash_list_hash(page) != digests[32 * (i // 128) :][:32]:
                out.append(errors.IntegrityError("page"))
                continue
            if hash_list_hash(record) != page[32 * (i % 128) :][:32]:
                out.append(errors.IntegrityError("leaf"))
                continue
        try:
            ad = sha256(header) + struct.pack(">QB", i, i == n - 1)
            out.append(aead.decrypt(record[:12], record[12:], ad))
        except InvalidTag:
            out.append(errors.IntegrityError("record"))
    return out


@pytest.mark.parametrize("name", BLOBS)
def test_independent_decoder_reads_the_stored_blob(name: str):
    vector = load(name)
    entry = {k: vector.get(k) for k in ("header_sha256", "hash_root", "blob_size")}
    entry["size"] = len(vector["plaintext"]) // 2
    chunks = spec_open_blob(version_of(name), entry, stored_blob(vector), key_of(vector))
    assert b"".join(chunks).hex() == vector["plaintext"]


def key_of(vector: dict) -> bytes:
    return bytes.fromhex(vector["model_key"])


def test_the_multi_chunk_vectors_end_with_a_short_chunk():
    for v in (1, 2):
        for name in (f"v{v}-blob-aes-256-gcm-siv.json", f"v{v}-blob-aes-256-gcm.json"):
            records = load(name)["records"]
            assert len(records) == 3
            assert [len(r["record"]) // 2 for r in records] == [4124, 4124, 128]
        assert load(f"v{v}-blob-empty-aes-256-gcm-siv.json")["records"] == []
    empty = load("v2-blob-empty-aes-256-gcm-siv.json")
    # BLAKE3 of the empty string, as the BLAKE3 specification's test vectors give it
    assert empty["hash_root"] == hash_list_hash(b"").hex()
    assert empty["hash_root"] == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


# --- manifests --------------------------------------------------------------------------


def manifest_from(vector: dict, version: int) -> Manifest:
    m = vector["manifest"]
    return Manifest(
        name=m["name"],
        version=m["version"],
        chunk_size=m["chunk_size"],
        algorithm=Algorithm.from_label(m["algorithm"]),
        files=tuple(FileEntry(**f) for f in m["files"]),
        dirs=tuple(DirEntry(**d) for d in m["dirs"]),
        format_version=version,
    )


@pytest.mark.parametrize("name", MANIFESTS)
def test_code_writes_exactly_the_stored_manifest(name: str):
    vector = load(name)
    sealed = seal_manifest(
        manifest_from(vector, version_of(name)),
        key_of(vector),
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
    assert envelope.format_version == version_of(name)
    opened = open_manifest(sealed, key_of(vector))
    assert opened == manifest_from(vector, version_of(name))
    assert opened.envelope == envelope


@pytest.mark.parametrize("name", MANIFESTS)
def test_independent_decoder_reads_the_stored_manifest(name: str):
    vector = load(name)
    sealed = bytes.fromhex(vector["sealed"])
    env_len = struct.unpack(">I", sealed[12:16])[0]
    assert json.loads(sealed[80 : 80 + env_len]) == {
        "format": version_of(name),
        "key_id": load("v1-keys.json")["key_id"],
        "key_uri": vector["key_uri"],
    }
    version, body = spec_open_manifest(sealed, key_of(vector))
    assert version == version_of(name)
    assert json.dumps(body, separators=(",", ":"), sort_keys=True) == vector["body"]
    assert body["files"] == vector["manifest"]["files"]


def test_manifest_vectors_reference_the_blob_vectors():
    by_header = {load(n)["header_sha256"]: load(n) for n in BLOBS}
    for name in MANIFESTS:
        for f in load(name)["manifest"]["files"]:
            blob = by_header[f["header_sha256"]]
            assert (f["blob"], f["blob_size"]) == (blob["blob_sha256"], blob["blob_size"])
            assert f.get("hash_root") == blob.get("hash_root")
            plaintext = bytes.fromhex(blob["plaintext"])
            assert (f["size"], f["sha256"]) == (
                len(plaintext),
                hashlib.sha256(plaintext).hexdigest(),
            )


# --- negative vectors -------------------------------------------------------------------


def damaged_store(case: dict) -> dict[str, bytes]:
    """The objects of v2-negative.json's base store with ``case``'s edit applied."""
    base = load(NEGATIVE["base"])
    blobs = {load(n)["blob_sha256"]: stored_blob(load(n)) for n in BLOBS if n.startswith("v2")}
    store = {MANIFEST_NAME: bytes.fromhex(base["sealed"])}
    paths = {}
    for f in base["manifest"]["files"]:
        store[f"blobs/{f['blob']}"] = blobs[f["blob"]]
        paths[f["path"]] = f"blobs/{f['blob']}"
    edit = case["edit"]
    name = paths.get(edit["object"], edit["object"])
    data = bytearray(store[name])
    if edit["op"] == "flip":
        data[edit["offset"]] ^= 1 << edit["bit"]
    elif edit["op"] == "replace":
        new = bytes.fromhex(edit["hex"])
        data[edit["offset"] : edit["offset"] + len(new)] = new
    elif edit["op"] == "truncate":
        del data[edit["length"] :]
    elif edit["op"] == "append":
        data += bytes.fromhex(edit["hex"])
    elif edit["op"] == "body":  # the same prefix, envelope and nonce around another body
        env_len = struct.unpack(">I", data[12:16])[0]
        associated = bytes(data[: 80 + env_len])
        aead_key, _ = derive_object_key(key_of(base), bytes(data[16:48]), Purpose.MANIFEST_V2)
        cipher = RecordCipher(Algorithm(struct.unpack(">H", data[10:12])[0]), aead_key)
        nonce = bytes(data[80 + env_len : 92 + env_len])
        data = bytearray(associated + cipher.seal(edit["body"].encode(), associated, nonce))
    store[name] = bytes(data)
    return store


def case_key(case: dict) -> bytes:
    return bytes.fromhex(case.get("key", load(NEGATIVE["base"])["model_key"]))


@pytest.mark.expect_log("event=(integrity_failed|chunk_rejected)", optional=True)  # the reader's
@pytest.mark.parametrize("case", NEGATIVE["cases"], ids=lambda c: c["name"])
def test_the_code_refuses_each_negative_vector_as_it_says(case: dict, tmp_path: Path):
    store = damaged_store(case)
    for name, data in store.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    error = getattr(errors, case["error"])
    if case["when"] == "manifest":
        with pytest.raises(error):
            open_manifest(store[MANIFEST_NAME], case_key(case))
        return
    manifest = open_manifest(store[MANIFEST_NAME], case_key(case))
    reader = ModelReader(manifest, LocalStore(tmp_path), case_key(case), inline=True)
    index = [f.path for f in manifest.files].index("weights.bin")
    plaintext = bytes.fromhex(load("v2-blob-aes-256-gcm-siv.json")["plaintext"])
    if case["when"] == "open":
        with pytest.raises(error):
            trio.run(reader.check, index)
        return
    for chunk in range(3):
        if chunk in case["chunks"]:
            with pytest.raises(error):
                trio.run(reader.read, index, chunk * 4096, 4096)
        else:
            read = trio.run(reader.read, index, chunk * 4096, 4096)
            assert bytes(read) == plaintext[chunk * 4096 :][:4096]


@pytest.mark.parametrize("case", NEGATIVE["cases"], ids=lambda c: c["name"])
def test_the_independent_decoder_refuses_each_negative_vector(case: dict):
    store = damaged_store(case)
    error = getattr(errors, case["error"])
    if case["when"] == "manifest":
        with pytest.raises(error):
            spec_open_manifest(store[MANIFEST_NAME], case_key(case))
        return
    version, body = spec_open_manifest(store[MANIFEST_NAME], case_key(case))
    entry = next(f for f in body["files"] if f["path"] == "weights.bin")
    blob = store[f"blobs/{entry['blob']}"]
    if case["when"] == "open":
        with pytest.raises(error):
            spec_open_blob(version, entry, blob, case_key(case))
        return
    chunks = spec_open_blob(version, entry, blob, case_key(case))
    assert [i for i, c in enumerate(chunks) if isinstance(c, error)] == case["chunks"]
