"""The sealed manifest (cmlfs.manifest): round trips, tampering, and hostile content.

Hostile bodies are sealed here with the right key by ``seal_raw``, an encoder
written from docs/FORMAT.md, so each test reaches the validation it means to
exercise instead of stopping at authentication.
"""

import copy
import hashlib
import json
import struct
from collections.abc import Callable

import pytest

from cmlfs.errors import FormatError, IntegrityError, WrongKeyError
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.keys import Purpose, derive_object_key, key_id
from cmlfs.manifest import (
    MAX_ENVELOPE_LEN,
    MAX_MANIFEST_LEN,
    PREFIX_LEN,
    DirEntry,
    FileEntry,
    Manifest,
    check_path,
    manifest_digest,
    open_manifest,
    read_envelope,
    seal_manifest,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
REJECTED = (FormatError, IntegrityError, WrongKeyError)
HEX = "0123456789abcdef" * 4


def file_entry(path: str, size: int = 10) -> FileEntry:
    unique = hashlib.sha256(path.encode()).hexdigest()  # one blob per file
    return FileEntry(path, size, 0o644, 1, unique, size + 116, unique, HEX)


def sample(algorithm: Algorithm = Algorithm.AES_256_GCM_SIV) -> Manifest:
    return Manifest(
        name="demo",
        version="2024-01",
        chunk_size=65536,
        algorithm=algorithm,
        files=(
            file_entry("config.json"),
            file_entry("sub/ünï 日本.bin", 70000),
            file_entry("e", 0),
        ),
        dirs=(DirEntry("", 0o755, 5), DirEntry("sub", 0o700, 6), DirEntry("empty", 0o755, 7)),
        format_version=1,
    )


def canonical(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def envelope(**fields) -> bytes:
    return canonical({"format": 1, "key_id": key_id(KEY), "key_uri": None, **fields})


def seal_raw(
    body: bytes,
    env: bytes | None = None,
    algorithm: int = 1,
    key: bytes = KEY,
    salt: bytes = bytes(32),
    nonce: bytes = bytes(12),
) -> bytes:
    """Seal arbitrary body bytes exactly as FORMAT.md lays a manifest out."""
    env = envelope() if env is None else env
    aead_key, commitment = derive_object_key(key, salt, Purpose.MANIFEST_V1)
    prefix = struct.pack(">8sHHI32s32s", b"CMLFSMAN", 1, algorithm, len(env), salt, commitment)
    return (
        prefix + env + RecordCipher(Algorithm(algorithm), aead_key).seal(body, prefix + env, nonce)
    )


def prefix_with(**fields) -> bytes:
    values = {"magic": b"CMLFSMAN", "version": 1, "algorithm": 1, "env_len": 0}
    values.update(fields)
    return struct.pack(">8sHHI", *values.values()) + bytes(64)


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("key_uri", [None, "file:///etc/cmlfs/model.key"])
def test_round_trip(algorithm: Algorithm, key_uri: str | None):
    manifest = sample(algorithm)
    sealed = seal_manifest(manifest, KEY, key_uri)
    opened = open_manifest(sealed, KEY)
    assert opened == manifest
    assert opened.envelope == read_envelope(sealed)
    assert read_envelope(sealed).key_uri == key_uri
    assert read_envelope(sealed).key_id == key_id(KEY)
    assert read_envelope(sealed).format_version == 1


def test_layout_matches_the_specification():
    manifest = sample()
    salt, nonce = bytes(range(32)), bytes(range(12))
    sealed = seal_manifest(manifest, KEY, "file:///k", salt=salt, nonce=nonce)
    body = canonical(
        {
            "algorithm": "aes-256-gcm-siv",
            "chunk_size": 65536,
            "dirs": [vars(d) for d in manifest.dirs],
            "files": [
                {k: v for k, v in vars(f).items() if k != "hash_root"} for f in manifest.files
            ],
            "model": {"name": "demo", "version": "2024-01"},
        }
    )
    expected = seal_raw(body, envelope(key_uri="file:///k"), salt=salt, nonce=nonce)
    assert sealed == expected
    assert PREFIX_LEN == 80


def test_each_seal_uses_a_fresh_salt_and_nonce():
    a, b = seal_manifest(sample(), KEY), seal_manifest(sample(), KEY)
    assert a[16:48] != b[16:48]
    assert manifest_digest(a) != manifest_digest(b)
    assert open_manifest(a, KEY) == open_manifest(b, KEY)


def test_digest_is_sha256_of_the_whole_file():
    sealed = seal_manifest(sample(), KEY)
    assert manifest_digest(sealed) == hashlib.sha256(sealed).hexdigest()


# --- tampering --------------------------------------------------------------------------


def test_every_single_bit_flip_is_rejected():
    manifest = Manifest("m", "1", 4096, Algorithm.AES_256_GCM_SIV, (), (DirEntry("", 0o755, 0),))
    sealed = bytearray(seal_manifest(manifest, KEY, "file:///k"))
    for bit in range(len(sealed) * 8):
        sealed[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(REJECTED):
            open_manifest(bytes(sealed), KEY)
        sealed[bit // 8] ^= 1 << (bit % 8)
    assert open_manifest(bytes(sealed), KEY) == manifest


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_wrong_key_is_reported_as_such(algorithm: Algorithm):
    with pytest.raises(WrongKeyError):
        open_manifest(seal_manifest(sample(algorithm), KEY), OTHER_KEY)


def test_a_key_with_the_right_id_but_another_commitment_is_wrong():
    sealed = bytearray(seal_manifest(sample(), KEY))
    sealed[48:80] = bytes(32)  # the commitment
    with pytest.raises(WrongKeyError):
        open_manifest(bytes(sealed), KEY)


@pytest.mark.parametrize(
    "edit",
    [
        {"key_uri": "file:///attacker.key"},
        {"key_uri": None},
    ],
)
def test_an_edited_envelope_fails_authentication(edit: dict):
    sealed = seal_manifest(sample(), KEY, "file:///owner.key")
    env_len = struct.unpack(">I", sealed[12:16])[0]
    new_env = envelope(**edit)
    forged = (
        sealed[:12]
        + struct.pack(">I", len(new_env))
        + sealed[16:PREFIX_LEN]
        + new_env
        + sealed[PREFIX_LEN + env_len :]
    )
    assert read_envelope(forged).key_uri == edit["key_uri"]
    with pytest.raises(IntegrityError):
        open_manifest(forged, KEY)


def test_a_reformatted_envelope_fails_authentication():
    sealed = seal_manifest(sample(), KEY)
    env_len = struct.unpack(">I", sealed[12:16])[0]
    spaced = json.dumps(json.loads(sealed[PREFIX_LEN : PREFIX_LEN + env_len])).encode()
    assert spaced != sealed[PREFIX_LEN : PREFIX_LEN + env_len]
    forged = sealed[:12] + struct.pack(">I", len(spaced)) + sealed[16:80] + spaced
    with pytest.raises(IntegrityError):
        open_manifest(forged + sealed[PREFIX_LEN + env_len :], KEY)


def test_switching_the_algorithm_id_fails_authentication():
    sealed = bytearray(seal_manifest(sample(Algorithm.AES_256_GCM_SIV), KEY))
    sealed[10:12] = struct.pack(">H", Algorithm.AES_256_GCM)
    with pytest.raises(IntegrityError):
        open_manifest(bytes(sealed), KEY)


def test_truncated_or_extended_manifests_are_rejected():
    sealed = seal_manifest(sample(), KEY)
    for data in (sealed[:-1], sealed[:-16], sealed[: PREFIX_LEN + 30], sealed + b"\0"):
        with pytest.raises(REJECTED):
            open_manifest(data, KEY)
    for length in (0, 8, PREFIX_LEN - 1, PREFIX_LEN + 5):
        with pytest.raises(FormatError):
            read_envelope(sealed[:length])


# --- the prefix and the envelope (read without the key) ---------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"magic": b"CMLFSBLB"},
        {"version": 0},
        {"version": 2},
        {"algorithm": 0},
        {"algorithm": 3},
        {"env_len": MAX_ENVELOPE_LEN + 1},
        {"env_len": 0xFFFFFFFF},
        {"env_len": 1000},  # longer than the file
    ],
)
def test_prefix_is_validated(fields: dict):
    env = envelope()
    data = prefix_with(**{"env_len": len(env), **fields}) + env + bytes(40)
    assert read_envelope(prefix_with(env_len=len(env)) + env + bytes(40)).key_id == key_id(KEY)
    with pytest.raises(FormatError):
        read_envelope(data)


def test_oversize_manifest_is_refused_before_parsing():
    with pytest.raises(FormatError):
        read_envelope(bytes(MAX_MANIFEST_LEN + 1))


def test_an_envelope_at_the_size_limit_is_read():
    env = envelope(key_uri="file:///k")
    env = b" " * (MAX_ENVELOPE_LEN - len(env)) + env
    assert read_envelope(prefix_with(env_len=len(env)) + env).key_uri == "file:///k"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'"format"',
        b"\xff\xfe",
        envelope()[:-1],
        envelope().replace(b"}", b',"extra":1}'),
        canonical({"format": 1, "key_id": key_id(KEY)}),
        canonical({"format": 2, "key_id": key_id(KEY), "key_uri": None}),
        canonical({"format": "1", "key_id": key_id(KEY), "key_uri": None}),
        envelope().replace(b"{", b'{"format":1,', 1),  # duplicate key
        envelope(key_id=key_id(KEY).upper()),
        envelope(key_id=key_id(KEY)[:-1]),
        envelope(key_id=key_id(KEY) + "0"),
        envelope(key_id=None),
        envelope(key_id=12),
        envelope(key_uri=""),
        envelope(key_uri="x" * 2049),
        envelope(key_uri=5),
        envelope(key_uri=["file:///k"]),
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_hostile_envelopes_are_refused(raw: bytes):
    with pytest.raises(FormatError):
        read_envelope(prefix_with(env_len=len(raw)) + raw)


# --- the body (read with the key) -------------------------------------------------------


def base_body() -> dict:
    return {
        "model": {"name": "m", "version": "1"},
        "chunk_size": 4096,
        "algorithm": "aes-256-gcm-siv",
        "dirs": [
            {"path": "", "mode": 0o755, "mtime_ns": 0},
            {"path": "d", "mode": 0o755, "mtime_ns": 0},
        ],
        "files": [
            {
                "path": "d/f",
                "size": 10,
                "mode": 0o644,
                "mtime_ns": 0,
                "blob": HEX,
                "blob_size": 126,
                "header_sha256": HEX,
                "sha256": HEX,
            }
        ],
    }


def with_file(**fields) -> Callable[[dict], None]:
    return lambda body: body["files"][0].update(fields)


def with_dir(**fields) -> Callable[[dict], None]:
    return lambda body: body["dirs"][1].update(fields)


def add_file(path: str) -> Callable[[dict], None]:
    """Another file at ``path``, with a blob of its own (sharing one is refused too)."""
    unique = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()
    blob = {"blob": unique, "header_sha256": unique}
    return lambda body: body["files"].append({**body["files"][0], "path": path, **blob})


def add_dir(path: str) -> Callable[[dict], None]:
    return lambda body: body["dirs"].append({**body["dirs"][1], "path": path})


HOSTILE_BODIES = {
    # paths
    "dotdot": with_file(path="d/../../etc/passwd"),
    "dotdot-only": add_file(".."),
    "dot": add_file("d/./f2"),
    "absolute": add_file("/etc/passwd"),
    "empty-component": add_file("d//g"),
    "trailing-slash": add_file("d/g/"),
    "nul": add_file("d/g\0h"),
    "name-too-long": add_file("d/" + "n" * 256),
    "path-too-long": add_file("d/" + "/".join(["p"] * 2100)),
    "file-named-root": add_file(""),
    # tree
    "duplicate-file": add_file("d/f"),
    "duplicate-dir": add_dir("d"),
    "missing-parent": add_file("x/f"),
    "missing-parent-dir": add_dir("x/y"),
    "file-and-dir": add_dir("d/f"),
    "file-as-parent": add_file("d/f/g"),
    "no-root": lambda body: body["dirs"].pop(0),
    "root-twice": add_dir(""),
    # numbers
    "size-string": with_file(size="10"),
    "size-float": with_file(size=10.0),
    "size-bool": with_file(size=True),
    "size-null": with_file(size=None),
    "size-negative": with_file(size=-1),
    "size-huge": with_file(size=(1 << 48) + 1),
    "size-enormous": with_file(size=10**40),
    "mode-bool": with_file(mode=False),
    "mode-type-bits": with_file(mode=0o100644),
    "mtime-float": with_file(mtime_ns=1.5),
    "mtime-huge": with_file(mtime_ns=1 << 64),
    "blob-size-huge": with_file(blob_size=1 << 50),
    "dir-mode-huge": with_dir(mode=0o17777),
    "chunk-size-odd": lambda body: body.update(chunk_size=5000),
    "chunk-size-small": lambda body: body.update(chunk_size=2048),
    "chunk-size-big": lambda body: body.update(chunk_size=1 << 23),
    "chunk-size-bool": lambda body: body.update(chunk_size=True),
    # strings
    "blob-upper-hex": with_file(blob=HEX.upper()),
    "blob-short": with_file(blob=HEX[:-1]),
    "blob-traversal": with_file(blob="../" + HEX[3:]),
    "sha-int": with_file(sha256=1),
    "header-sha-null": with_file(header_sha256=None),
    "path-int": with_file(path=7),
    "name-int": lambda body: body["model"].update(name=1),
    "version-too-long": lambda body: body["model"].update(version="v" * 5000),
    # algorithm
    "algorithm-other": lambda body: body.update(algorithm="aes-256-gcm"),
    "algorithm-unknown": lambda body: body.update(algorithm="rot13"),
    # shape
    "extra-top-key": lambda body: body.update(extra=1),
    "missing-top-key": lambda body: body.pop("dirs"),
    "extra-file-key": with_file(owner="root"),
    "missing-file-key": lambda body: body["files"][0].pop("sha256"),
    "extra-model-key": lambda body: body["model"].update(license="x"),
    "missing-dir-key": lambda body: body["dirs"][1].pop("mode"),
    "files-object": lambda body: body.update(files={}),
    "dirs-null": lambda body: body.update(dirs=None),
    "file-list": lambda body: body["files"].append([]),
    "model-string": lambda body: body.update(model="m"),
}


def test_the_base_body_is_valid():
    opened = open_manifest(seal_raw(canonical(base_body())), KEY)
    assert [f.path for f in opened.files] == ["d/f"]


@pytest.mark.parametrize("mutate", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_bodies_are_refused(mutate: Callable[[dict], None]):
    body = copy.deepcopy(base_body())
    mutate(body)
    with pytest.raises(FormatError):
        open_manifest(seal_raw(canonical(body)), KEY)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"\xc3\x28",
        canonical(base_body())[:-1],
        canonical(base_body()).replace(
            b'"chunk_size":4096', b'"chunk_size":4096,"chunk_size":8192'
        ),
        canonical(base_body()).replace(b'"size":10', b'"size":10,"size":10'),
        canonical(base_body()).replace(b'"size":10', b'"size":NaN'),
        canonical(base_body()).replace(b'"size":10', b'"size":' + b"9" * 5000),
        canonical(base_body()).replace(b'"d/f"', b'"d/\\ud800"'),
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "empty",
        "list",
        "bad-utf8",
        "truncated-json",
        "duplicate-top-key",
        "duplicate-file-key",
        "nan",
        "5000-digit-number",
        "lone-surrogate-path",
        "deep-nesting",
    ],
)
def test_hostile_body_bytes_are_refused(raw: bytes):
    with pytest.raises(FormatError):
        open_manifest(seal_raw(raw), KEY)


def test_an_algorithm_label_must_match_the_prefix_id():
    body = canonical({**base_body(), "algorithm": "aes-256-gcm"})
    assert open_manifest(seal_raw(body, algorithm=2), KEY).algorithm is Algorithm.AES_256_GCM
    with pytest.raises(FormatError):
        open_manifest(seal_raw(body, algorithm=1), KEY)


@pytest.mark.parametrize(
    "path",
    ["..", "a/..", "../a", "/a", "a//b", "a/", ".", "./a", "a\0", "x" * 256, "é" * 128],
)
def test_check_path_refuses(path: str):
    with pytest.raises(FormatError):
        check_path(path)


@pytest.mark.parametrize("path", ["", "a", "a/b", "...", ".hidden", "x" * 255, "é" * 127, "a b"])
def test_check_path_accepts(path: str):
    check_path(path)


@pytest.mark.parametrize(
    ("paths", "dirs"),
    [
        (("a",), ()),  # no root
        (("a", "a"), ("",)),
        (("a/b",), ("",)),
        (("a",), ("", "a")),
        (("../a",), ("",)),
        ((), ("", "")),
    ],
)
def test_manifest_constructor_validates_the_tree(paths: tuple, dirs: tuple):
    with pytest.raises(FormatError):
        files = tuple(file_entry(p) for p in paths)
        Manifest(
            "m",
            "1",
            4096,
            Algorithm.AES_256_GCM_SIV,
            files,
            tuple(DirEntry(d, 0o755, 0) for d in dirs),
            format_version=1,
        )


# --- writer and reader agree: whatever can be sealed can be opened ---------------------


def test_pre_1970_mtimes_round_trip():
    manifest = Manifest(
        "m",
        "1",
        4096,
        Algorithm.AES_256_GCM_SIV,
        (FileEntry("f", 1, 0o644, -(1 << 63), HEX, 117, HEX, HEX),),
        (DirEntry("", 0o755, -1),),
        format_version=1,
    )
    assert open_manifest(seal_manifest(manifest, KEY), KEY) == manifest


@pytest.mark.parametrize(
    "build",
    [
        lambda: Manifest(
            "m" * 5000, "1", 4096, Algorithm.AES_256_GCM_SIV, (), (DirEntry("", 0o755, 0),)
        ),
        lambda: FileEntry("f", 1, 0o644, 0, "NOT-HEX", 117, HEX, HEX),
        lambda: FileEntry("f", 1, 0o644, 1 << 63, HEX, 117, HEX, HEX),
        lambda: DirEntry("", 0o10000, 0),
        lambda: Manifest("m", "1", 3000, Algorithm.AES_256_GCM_SIV, (), (DirEntry("", 0o755, 0),)),
    ],
    ids=["long-name", "non-hex-blob", "mtime-overflow", "mode-overflow", "chunk-size"],
)
def test_what_the_reader_refuses_cannot_be_built(build):
    with pytest.raises(FormatError):
        build()


@pytest.mark.parametrize("value", [True, 1.0])
def test_envelope_format_must_be_the_integer_1(value: object):
    raw = canonical({"format": value, "key_id": key_id(KEY), "key_uri": None})
    with pytest.raises(FormatError):
        read_envelope(prefix_with(env_len=len(raw)) + raw)


@pytest.mark.parametrize("uri", ["file:///k\x1b[2J", "file:///k\0", "file:///k\nforged line"])
def test_key_uri_with_control_characters_is_refused(uri: str):
    raw = envelope(key_uri=uri)
    with pytest.raises(FormatError):
        read_envelope(prefix_with(env_len=len(raw)) + raw)
    with pytest.raises(FormatError):
        seal_manifest(
            Manifest("m", "1", 4096, Algorithm.AES_256_GCM_SIV, (), (DirEntry("", 0o755, 0),)),
            KEY,
            uri,
        )


def test_mtime_must_fit_a_signed_64_bit_integer():
    body = base_body()
    body["files"][0]["mtime_ns"] = 1 << 63
    with pytest.raises(FormatError):
        open_manifest(seal_raw(canonical(body)), KEY)
