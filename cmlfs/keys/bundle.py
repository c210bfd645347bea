"""What a key broker releases: the raw 32-byte model key, a JSON key bundle, or the key
as KServe's users store it (a JWK with ``kty`` ``oct``, or its base64url ``k`` value),
so a model imported from a KServe JWE folder keeps its broker resource.

A key bundle carries the key and pins the SHA-256 of the one sealed manifest
it may open (``cmlfs.manifest.manifest_digest``), so a broker resource cannot
be used to mount an older or different manifest encrypted with the same key
(rollback protection). The layout is specified in docs/KEYS.md.

Pure. Never puts key bytes in a message.
"""

import base64
import json
import re

from cmlfs.errors import FormatError, KeySourceError
from cmlfs.format.jwe import key_from_resource
from cmlfs.format.keys import MODEL_KEY_LEN
from cmlfs.format.strictjson import loads_strict
from cmlfs.keys.base import MAX_RESOURCE_LEN, ReleasedKey
from cmlfs.keys.rcar import b64_decode

BUNDLE_TYPE = "cmlfs-key-bundle"
BUNDLE_VERSION = 1
_KEYS = {"type", "version", "key", "manifest_sha256"}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NOT_A_KEY = (
    f"released resource is neither a raw {MODEL_KEY_LEN}-byte key nor a cmlfs key bundle "
    f"(nor a {MODEL_KEY_LEN}-byte JWK or base64url key)"
)


def parse_resource(data: bytes) -> ReleasedKey:
    """The key (and pin) in a released resource; KeySourceError for anything else."""
    if len(data) == MODEL_KEY_LEN:
        return ReleasedKey(bytes(data))
    if len(data) > MAX_RESOURCE_LEN:
        raise KeySourceError(f"released resource is larger than {MAX_RESOURCE_LEN} bytes")
    try:
        fields = loads_strict(data, _NOT_A_KEY, KeySourceError)
    except KeySourceError:
        fields = None
    if not isinstance(fields, dict) or fields.get("type") != BUNDLE_TYPE:
        return _jose_key(data)
    if set(fields) != _KEYS:
        raise KeySourceError(_NOT_A_KEY)
    if type(fields["version"]) is not int or fields["version"] != BUNDLE_VERSION:
        raise KeySourceError(f"unsupported key bundle version {fields['version']!r}")
    pin = fields["manifest_sha256"]
    if not isinstance(pin, str) or not _HEX64.fullmatch(pin):
        raise KeySourceError("key bundle manifest_sha256 is not 64 lowercase hex digits")
    key = b64_decode(fields["key"], "key bundle key", KeySourceError)
    if len(key) != MODEL_KEY_LEN:
        raise KeySourceError(f"key bundle key is not {MODEL_KEY_LEN} bytes")
    return ReleasedKey(key, pin)


def _jose_key(data: bytes) -> ReleasedKey:
    return ReleasedKey(jose_key(data, _NOT_A_KEY))


def jose_key(data: bytes, refusal: str) -> bytes:
    """A 32-byte key as KServe reads a resource (a JWK, or a base64url ``k`` value);
    KeySourceError(``refusal``) for anything else."""
    try:
        key = key_from_resource(data)
    except FormatError:
        raise KeySourceError(refusal) from None
    if len(key) != MODEL_KEY_LEN:
        raise KeySourceError(refusal)
    return key


def make_bundle(key: bytes, manifest_sha256: str) -> bytes:
    """The key bundle resource for ``key`` pinned to one sealed manifest's digest."""
    if len(key) != MODEL_KEY_LEN or not _HEX64.fullmatch(manifest_sha256):
        raise KeySourceError("a key bundle needs a 32-byte key and a SHA-256 hex digest")
    return json.dumps(
        {
            "type": BUNDLE_TYPE,
            "version": BUNDLE_VERSION,
            "key": base64.b64encode(key).decode("ascii"),
            "manifest_sha256": manifest_sha256,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode("ascii")
