"""Key derivation and key commitment (docs/FORMAT.md, "Keys").

Every sealed object (a blob, the manifest) has a random 32-byte salt. From the
model key and that salt, HKDF-SHA256 derives 64 bytes: the first 32 are the
object's AEAD key, the last 32 its key commitment, stored in the clear. AES-GCM
and AES-GCM-SIV are not key-committing; comparing the commitment first reports a
wrong key before any record is opened, and pins the one key that opens it.
"""

import hmac
from enum import Enum

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cmlfs.errors import WrongKeyError

MODEL_KEY_LEN = 32
SALT_LEN = 32
COMMITMENT_LEN = 32
KEY_ID_LEN = 16


class Purpose(Enum):
    """What a derived key seals, per format version; the value is the HKDF info label.

    Each format version has its own labels, so no key of one version opens an object of
    another.
    """

    CONTENT_V1 = b"cmlfs/v1/content"
    MANIFEST_V1 = b"cmlfs/v1/manifest"
    CONTENT_V2 = b"cmlfs/v2/content"
    MANIFEST_V2 = b"cmlfs/v2/manifest"

    @classmethod
    def content(cls, version: int) -> "Purpose":
        """The label of blob content keys in format ``version``."""
        return cls[f"CONTENT_V{version}"]

    @classmethod
    def manifest(cls, version: int) -> "Purpose":
        """The label of manifest keys in format ``version``."""
        return cls[f"MANIFEST_V{version}"]


def check_model_key(model_key: bytes) -> None:
    if len(model_key) != MODEL_KEY_LEN:
        raise WrongKeyError(f"a model key is {MODEL_KEY_LEN} bytes, not {len(model_key)}")


def derive_object_key(model_key: bytes, salt: bytes, purpose: Purpose) -> tuple[bytes, bytes]:
    """Return ``(aead_key, commitment)`` for the object sealed under ``salt``."""
    check_model_key(model_key)
    if len(salt) != SALT_LEN:
        raise ValueError(f"salt must be {SALT_LEN} bytes")
    okm = HKDF(algorithm=SHA256(), length=64, salt=salt, info=purpose.value).derive(model_key)
    return okm[:32], okm[32:]


def open_object_key(model_key: bytes, salt: bytes, commitment: bytes, purpose: Purpose) -> bytes:
    """Return the AEAD key if ``model_key`` matches ``commitment``, else raise WrongKeyError."""
    key, expected = derive_object_key(model_key, salt, purpose)
    if not hmac.compare_digest(expected, commitment):
        raise WrongKeyError("the key does not match this model (key commitment differs)")
    return key


def key_id(model_key: bytes) -> str:
    """A public, one-way identifier of a model key, recorded in the manifest envelope."""
    check_model_key(model_key)
    okm = HKDF(algorithm=SHA256(), length=KEY_ID_LEN, salt=None, info=b"cmlfs/v1/key-id")
    return okm.derive(model_key).hex()
