"""The model manifest: what a model is, sealed with a key derived from the model key.

The manifest lists every file (path, size, mode, mtime, blob name, blob header
digest, plaintext SHA-256) and folder of the model. Only the envelope (format
version, key id, key source URI) is readable without the key; everything else
is sealed, and the sealed body authenticates the envelope as associated data.
Binding each path to its blob's header digest and size makes swapping files
within a model, or mixing blobs of two encryptions, fail.

Pure: parses and produces bytes, does no I/O. Every field from the store is
treated as hostile: bounded sizes, exact key sets, exact types.
"""

import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from cmlfs.errors import FormatError, IntegrityError, WrongKeyError
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.keys import SALT_LEN, Purpose, derive_object_key, key_id, open_object_key
from cmlfs.format.layout import MAX_PLAINTEXT_SIZE, NONCE_LEN, chunk_size_log2

MANIFEST_NAME = "manifest.cmlfs"
MANIFEST_MAGIC = b"CMLFSMAN"
MANIFEST_VERSION = 1
_PREFIX = struct.Struct(">8sHHI32s32s")
PREFIX_LEN = _PREFIX.size  # 80
MAX_ENVELOPE_LEN = 64 * 1024
MAX_BODY_LEN = 64 * 1024 * 1024
MAX_MANIFEST_LEN = PREFIX_LEN + MAX_ENVELOPE_LEN + MAX_BODY_LEN + NONCE_LEN + 16
MAX_ENTRIES = 1_000_000
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
_HEX64 = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    mode: int
    mtime_ns: int
    blob: str
    blob_size: int
    header_sha256: str
    sha256: str

    @property
    def blob_name(self) -> str:
        """The store object holding this file's blob."""
        return f"blobs/{self.blob}"


@dataclass(frozen=True)
class DirEntry:
    path: str  # "" is the model's root folder
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class Envelope:
    """The part of a manifest readable without the key: enough to find the key."""

    key_id: str
    key_uri: str | None
    format_version: int = MANIFEST_VERSION


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    chunk_size: int
    algorithm: Algorithm
    files: tuple[FileEntry, ...]
    dirs: tuple[DirEntry, ...]
    envelope: Envelope | None = field(default=None, compare=False)  # set when opened

    def __post_init__(self) -> None:
        _validate_tree(self.files, self.dirs)


def manifest_digest(data: bytes) -> str:
    """SHA-256 (hex) of a sealed manifest's bytes, as pinned by key bundles."""
    return hashlib.sha256(data).hexdigest()


def seal_manifest(
    manifest: Manifest,
    model_key: bytes,
    key_uri: str | None = None,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Serialise and seal ``manifest`` with an envelope naming the key (id and source URI)."""
    salt = os.urandom(SALT_LEN) if salt is None else salt
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    aead_key, commitment = derive_object_key(model_key, salt, Purpose.MANIFEST)
    envelope = _dumps({"format": MANIFEST_VERSION, "key_id": key_id(model_key), "key_uri": key_uri})
    prefix = _PREFIX.pack(
        MANIFEST_MAGIC, MANIFEST_VERSION, manifest.algorithm, len(envelope), salt, commitment
    )
    associated = prefix + envelope
    body = _dumps(_body_dict(manifest))
    if len(body) > MAX_BODY_LEN:
        raise FormatError(f"manifest body exceeds {MAX_BODY_LEN} bytes")
    return associated + RecordCipher(manifest.algorithm, aead_key).seal(body, associated, nonce)


def read_envelope(data: bytes) -> Envelope:
    """The public envelope of a sealed manifest, without the key."""
    return _split(data)[1]


def open_manifest(data: bytes, model_key: bytes) -> Manifest:
    """Authenticate and parse a sealed manifest; WrongKeyError before anything is opened."""
    prefix, envelope, record = _split(data)
    _, _, alg, env_len, salt, commitment = _PREFIX.unpack(prefix)
    model_key_id = key_id(model_key)
    if model_key_id != envelope.key_id:
        raise WrongKeyError(
            f"wrong key: its key id is {model_key_id}, the model needs {envelope.key_id}"
        )
    aead_key = open_object_key(model_key, salt, commitment, Purpose.MANIFEST)
    algorithm = Algorithm.from_id(alg)
    try:
        body = RecordCipher(algorithm, aead_key).open(record, data[: PREFIX_LEN + env_len])
    except IntegrityError:
        raise IntegrityError("manifest failed authentication (modified or damaged)") from None
    return _parse_body(body, algorithm, envelope)


def _split(data: bytes) -> tuple[bytes, Envelope, bytes]:
    if len(data) > MAX_MANIFEST_LEN:
        raise FormatError(f"manifest larger than {MAX_MANIFEST_LEN} bytes")
    if len(data) < PREFIX_LEN:
        raise FormatError("manifest is truncated")
    prefix = data[:PREFIX_LEN]
    magic, version, alg, env_len, _, _ = _PREFIX.unpack(prefix)
    if magic != MANIFEST_MAGIC:
        raise FormatError("not a cmlfs manifest (bad magic)")
    if version != MANIFEST_VERSION:
        raise FormatError(f"unsupported manifest format version {version}")
    Algorithm.from_id(alg)
    if env_len > MAX_ENVELOPE_LEN or PREFIX_LEN + env_len > len(data):
        raise FormatError("manifest envelope length is out of range")
    raw = _loads(data[PREFIX_LEN : PREFIX_LEN + env_len], "manifest envelope")
    fields = _exact(raw, {"format", "key_id", "key_uri"}, "manifest envelope")
    if fields["format"] != MANIFEST_VERSION:
        raise FormatError("manifest envelope format differs from its header")
    if not isinstance(fields["key_id"], str) or not _KEY_ID.fullmatch(fields["key_id"]):
        raise FormatError("manifest envelope has an invalid key_id")
    key_uri = fields["key_uri"]
    if key_uri is not None and (not isinstance(key_uri, str) or not 0 < len(key_uri) <= 2048):
        raise FormatError("manifest envelope has an invalid key_uri")
    return prefix, Envelope(fields["key_id"], key_uri), data[PREFIX_LEN + env_len :]


def _body_dict(m: Manifest) -> dict:
    return {
        "model": {"name": m.name, "version": m.version},
        "chunk_size": m.chunk_size,
        "algorithm": m.algorithm.label,
        "dirs": [{"path": d.path, "mode": d.mode, "mtime_ns": d.mtime_ns} for d in m.dirs],
        "files": [
            {
                "path": f.path,
                "size": f.size,
                "mode": f.mode,
                "mtime_ns": f.mtime_ns,
                "blob": f.blob,
                "blob_size": f.blob_size,
                "header_sha256": f.header_sha256,
                "sha256": f.sha256,
            }
            for f in m.files
        ],
    }


def _parse_body(body: bytes, algorithm: Algorithm, envelope: Envelope) -> Manifest:
    fields = _exact(
        _loads(body, "manifest"), {"model", "chunk_size", "algorithm", "dirs", "files"}, "manifest"
    )
    model = _exact(fields["model"], {"name", "version"}, "manifest model")
    chunk_size = _int(fields["chunk_size"], "chunk_size", 1 << 30)
    try:
        chunk_size_log2(chunk_size)
    except ValueError as exc:
        raise FormatError(str(exc)) from None
    if fields["algorithm"] != algorithm.label:
        raise FormatError("manifest algorithm differs from its header")
    for key in ("dirs", "files"):
        if not isinstance(fields[key], list) or len(fields[key]) > MAX_ENTRIES:
            raise FormatError(f"manifest {key} must be a list of at most {MAX_ENTRIES}")
    dirs = tuple(_parse_dir(d) for d in fields["dirs"])
    files = tuple(_parse_file(f) for f in fields["files"])
    return Manifest(
        name=_str(model["name"], "model name"),
        version=_str(model["version"], "model version"),
        chunk_size=chunk_size,
        algorithm=algorithm,
        files=files,
        dirs=dirs,
        envelope=envelope,
    )


def _parse_dir(raw: object) -> DirEntry:
    d = _exact(raw, {"path", "mode", "mtime_ns"}, "manifest folder")
    return DirEntry(
        _str(d["path"], "path"), _mode(d["mode"]), _int(d["mtime_ns"], "mtime", 1 << 63)
    )


def _parse_file(raw: object) -> FileEntry:
    f = _exact(
        raw,
        {"path", "size", "mode", "mtime_ns", "blob", "blob_size", "header_sha256", "sha256"},
        "manifest file",
    )
    for key in ("blob", "header_sha256", "sha256"):
        if not isinstance(f[key], str) or not _HEX64.fullmatch(f[key]):
            raise FormatError(f"manifest file {key} is not 64 lowercase hex digits")
    return FileEntry(
        path=_str(f["path"], "path"),
        size=_int(f["size"], "size", MAX_PLAINTEXT_SIZE),
        mode=_mode(f["mode"]),
        mtime_ns=_int(f["mtime_ns"], "mtime", 1 << 63),
        blob=f["blob"],
        blob_size=_int(f["blob_size"], "blob_size", 2 * MAX_PLAINTEXT_SIZE),
        header_sha256=f["header_sha256"],
        sha256=f["sha256"],
    )


def check_path(path: str) -> None:
    """Refuse a model path that could escape the mount or is not plain relative UTF-8."""
    if path == "":
        return
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"path is not valid UTF-8: {path!r}") from None
    if len(encoded) > MAX_PATH_BYTES or "\0" in path or path.startswith("/"):
        raise FormatError(f"invalid path {path!r}")
    for part in path.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise FormatError(f"invalid path {path!r}")


def _validate_tree(files: Iterable[FileEntry], dirs: Iterable[DirEntry]) -> None:
    dir_paths: set[str] = set()
    for d in dirs:
        check_path(d.path)
        if d.path in dir_paths:
            raise FormatError(f"folder listed twice: {d.path!r}")
        dir_paths.add(d.path)
    if "" not in dir_paths:
        raise FormatError("manifest has no root folder")
    file_paths: set[str] = set()
    for f in files:
        check_path(f.path)
        if f.path == "" or f.path in file_paths or f.path in dir_paths:
            raise FormatError(f"file listed twice or as a folder: {f.path!r}")
        file_paths.add(f.path)
    for path in dir_paths | file_paths:
        if path and path.rpartition("/")[0] not in dir_paths:
            raise FormatError(f"parent folder of {path!r} is missing")


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def _loads(data: bytes, what: str) -> object:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise FormatError(f"{what} has a duplicate key")
        return result

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise FormatError(f"{what} is not valid UTF-8 JSON") from None


def _exact(raw: object, keys: set[str], what: str) -> dict:
    if not isinstance(raw, dict) or set(raw) != keys:
        raise FormatError(f"{what} must be an object with exactly the keys {sorted(keys)}")
    return raw


def _int(value: object, what: str, limit: int) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise FormatError(f"manifest {what} is not an integer in range")
    return value


def _mode(value: object) -> int:
    return _int(value, "mode", 0o7777)


def _str(value: object, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_PATH_BYTES:
        raise FormatError(f"manifest {what} is not a string")
    return value
