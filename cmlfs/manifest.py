"""The model manifest: what a model is, sealed with a key derived from the model key.

The manifest lists every file (path, size, mode, mtime, blob name, blob header
digest, plaintext SHA-256) and folder of the model. Only the envelope (format
version, key id, key source URI) is readable without the key; everything else
is sealed, and the sealed body authenticates the envelope as associated data.
Binding each path to its blob's header digest and size makes swapping files
within a model, or mixing blobs of two encryptions, fail; in format 2 each entry
also holds the root of its blob's hash list, binding every record's bytes.

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
from cmlfs.format import FORMAT_VERSION, FORMAT_VERSIONS
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.keys import SALT_LEN, Purpose, derive_object_key, key_id, open_object_key
from cmlfs.format.layout import MAX_PLAINTEXT_SIZE, NONCE_LEN, chunk_size_log2

MANIFEST_NAME = "manifest.cmlfs"
MANIFEST_MAGIC = b"CMLFSMAN"
_PREFIX = struct.Struct(">8sHHI32s32s")
PREFIX_LEN = _PREFIX.size  # 80
MAX_ENVELOPE_LEN = 64 * 1024
MAX_BODY_LEN = 64 * 1024 * 1024
MAX_MANIFEST_LEN = PREFIX_LEN + MAX_ENVELOPE_LEN + MAX_BODY_LEN + NONCE_LEN + 16
MAX_ENTRIES = 1_000_000
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_TEXT_BYTES = 4096
MAX_KEY_URI_LEN = 2048
MAX_MODE = 0o7777
MTIME_RANGE = (-(1 << 63), (1 << 63) - 1)  # a signed 64-bit st_mtime_ns
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DOTTED = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18}){0,15}")
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
    hash_root: str | None = None  # format 2: root of the blob's hash list (hex)

    def __post_init__(self) -> None:
        check_path(self.path)
        if self.path == "":
            raise FormatError("a file needs a non-empty path")
        _check_int(self.size, "size", 0, MAX_PLAINTEXT_SIZE)
        _check_int(self.mode, "mode", 0, MAX_MODE)
        _check_int(self.mtime_ns, "mtime_ns", *MTIME_RANGE)
        _check_int(self.blob_size, "blob_size", 0, 2 * MAX_PLAINTEXT_SIZE)
        for what in ("blob", "header_sha256", "sha256", "hash_root"):
            value = getattr(self, what)
            if what == "hash_root" and value is None:
                continue
            if not isinstance(value, str) or not _HEX64.fullmatch(value):
                raise FormatError(f"manifest file {what} is not 64 lowercase hex digits")

    @property
    def blob_name(self) -> str:
        """The store object holding this file's blob."""
        return f"blobs/{self.blob}"


@dataclass(frozen=True)
class DirEntry:
    path: str  # "" is the model's root folder
    mode: int
    mtime_ns: int

    def __post_init__(self) -> None:
        check_path(self.path)
        _check_int(self.mode, "mode", 0, MAX_MODE)
        _check_int(self.mtime_ns, "mtime_ns", *MTIME_RANGE)


@dataclass(frozen=True)
class Envelope:
    """The part of a manifest readable without the key: enough to find the key."""

    key_id: str
    key_uri: str | None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, str) or not _KEY_ID.fullmatch(self.key_id):
            raise FormatError("manifest envelope has an invalid key_id")
        check_key_uri(self.key_uri)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    chunk_size: int
    algorithm: Algorithm
    files: tuple[FileEntry, ...]
    dirs: tuple[DirEntry, ...]
    envelope: Envelope | None = field(default=None, compare=False)  # set when opened
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version not in FORMAT_VERSIONS:
            raise FormatError(f"unsupported manifest format version {self.format_version}")
        _check_text(self.name, "model name")
        _check_text(self.version, "model version")
        _check_int(self.chunk_size, "chunk_size", 0, 1 << 30)
        try:
            chunk_size_log2(self.chunk_size)
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        hashed = self.format_version >= 2
        if any((f.hash_root is not None) != hashed for f in self.files):
            raise FormatError(f"format {self.format_version} files {_ROOT_RULE[hashed]}")
        _validate_tree(self.files, self.dirs)


_ROOT_RULE = {True: "need a hash_root", False: "have no hash_root"}


def version_order(version: str) -> tuple[int, ...]:
    """A dotted numeric model version (``7``, ``1.2``, ``2024.12.7``: 1 to 16 decimal parts
    of at most 18 digits, nothing else) as a tuple compared part by part as integers,
    trailing zero parts dropped: ``1.2 == 1.2.0 < 1.10 < 2``. FormatError otherwise: a
    version that is not a dotted number has no order to trust."""
    if not _DOTTED.fullmatch(version):
        raise FormatError(f"{version[:64]!r} is not a dotted number such as 3 or 1.2.0")
    parts = [int(part) for part in version.split(".")]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def manifest_digest(data: bytes) -> str:
    """SHA-256 (hex) of a sealed manifest's bytes, as pinned by key bundles."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SealedManifest:
    """A sealed manifest's bytes with what can be known of them without the key: its
    public envelope (format version, key id, key URI) and its digest, which key bundles
    pin and signatures cover."""

    data: bytes
    envelope: Envelope

    @classmethod
    def parse(cls, data: bytes) -> "SealedManifest":
        """Check the prefix and envelope (FormatError); nothing is authenticated yet."""
        return cls(data, read_envelope(data))

    @property
    def format_version(self) -> int:
        return self.envelope.format_version

    @property
    def sha256(self) -> str:
        return manifest_digest(self.data)

    @property
    def algorithm(self) -> Algorithm:
        """The AEAD named in the header (its id checked by ``parse``); authenticated only
        when the manifest is opened, so before that a hint, e.g. of what to import."""
        return Algorithm.from_id(_PREFIX.unpack(self.data[:PREFIX_LEN])[2])


def seal_manifest(
    manifest: Manifest,
    model_key: bytes,
    key_uri: str | None = None,
    salt: bytes | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Serialise and seal ``manifest`` with an envelope naming the key (id and source URI)."""
    check_key_uri(key_uri)
    version = manifest.format_version
    salt = os.urandom(SALT_LEN) if salt is None else salt
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    aead_key, commitment = derive_object_key(model_key, salt, Purpose.manifest(version))
    envelope = _dumps({"format": version, "key_id": key_id(model_key), "key_uri": key_uri})
    prefix = _PREFIX.pack(
        MANIFEST_MAGIC, version, manifest.algorithm, len(envelope), salt, commitment
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
    version = envelope.format_version
    aead_key = open_object_key(model_key, salt, commitment, Purpose.manifest(version))
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
    if version not in FORMAT_VERSIONS:
        raise FormatError(f"unsupported manifest format version {version}")
    Algorithm.from_id(alg)
    if env_len > MAX_ENVELOPE_LEN or PREFIX_LEN + env_len > len(data):
        raise FormatError("manifest envelope length is out of range")
    raw = _loads(data[PREFIX_LEN : PREFIX_LEN + env_len], "manifest envelope")
    fields = _exact(raw, {"format", "key_id", "key_uri"}, "manifest envelope")
    if type(fields["format"]) is not int or fields["format"] != version:
        raise FormatError("manifest envelope format differs from its header")
    envelope = Envelope(fields["key_id"], fields["key_uri"], version)
    return prefix, envelope, data[PREFIX_LEN + env_len :]


def _body_dict(m: Manifest) -> dict:
    hashed = m.format_version >= 2
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
                **({"hash_root": f.hash_root} if hashed else {}),
            }
            for f in m.files
        ],
    }


def _parse_body(body: bytes, algorithm: Algorithm, envelope: Envelope) -> Manifest:
    fields = _exact(
        _loads(body, "manifest"), {"model", "chunk_size", "algorithm", "dirs", "files"}, "manifest"
    )
    model = _exact(fields["model"], {"name", "version"}, "manifest model")
    if fields["algorithm"] != algorithm.label:
        raise FormatError("manifest algorithm differs from its header")
    for key in ("dirs", "files"):
        if not isinstance(fields[key], list) or len(fields[key]) > MAX_ENTRIES:
            raise FormatError(f"manifest {key} must be a list of at most {MAX_ENTRIES}")
    dirs = tuple(
        DirEntry(**_exact(d, {"path", "mode", "mtime_ns"}, "manifest folder"))
        for d in fields["dirs"]
    )
    keys = _FILE_KEYS | ({"hash_root"} if envelope.format_version >= 2 else set())
    files = tuple(FileEntry(**_exact(f, keys, "manifest file")) for f in fields["files"])
    return Manifest(
        name=model["name"],
        version=model["version"],
        chunk_size=fields["chunk_size"],
        algorithm=algorithm,
        files=files,
        dirs=dirs,
        envelope=envelope,
        format_version=envelope.format_version,
    )


_FILE_KEYS = {"path", "size", "mode", "mtime_ns", "blob", "blob_size", "header_sha256", "sha256"}


def check_key_uri(key_uri: object) -> None:
    """A key URI is absent, or printable ASCII of bounded length (it is shown to people)."""
    if key_uri is None:
        return
    if (
        not isinstance(key_uri, str)
        or not 0 < len(key_uri) <= MAX_KEY_URI_LEN
        or not all(" " < c < "\x7f" for c in key_uri)
    ):
        raise FormatError("invalid key URI: printable ASCII without spaces, at most 2048 chars")


def check_path(path: str) -> None:
    """Refuse a model path that could escape the mount or is not plain relative UTF-8."""
    if not isinstance(path, str):
        raise FormatError("a manifest path must be a string")
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
    blobs: set[str] = set()
    headers: set[str] = set()
    for f in files:
        check_path(f.path)
        if f.path == "" or f.path in file_paths or f.path in dir_paths:
            raise FormatError(f"file listed twice or as a folder: {f.path!r}")
        if f.blob in blobs or f.header_sha256 in headers:
            raise FormatError(f"{f.path!r} shares its blob with another file")
        file_paths.add(f.path)
        blobs.add(f.blob)
        headers.add(f.header_sha256)
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


def _check_int(value: object, what: str, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise FormatError(f"manifest {what} is not an integer in range")


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str) or len(value.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise FormatError(f"manifest {what} must be text of at most {MAX_TEXT_BYTES} bytes")
