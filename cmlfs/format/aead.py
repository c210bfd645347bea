"""Sealing and opening one record, ``nonce || ciphertext || tag``, per algorithm id.

The algorithm id in a header selects the AEAD; a new algorithm is a new id, so
old models stay readable (crypto agility). ``RecordCipher.open`` either returns
authenticated plaintext or raises IntegrityError: it never returns bytes that
failed authentication.
"""

from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV

from cmlfs.errors import FormatError, IntegrityError
from cmlfs.format.layout import NONCE_LEN, RECORD_OVERHEAD


class Algorithm(IntEnum):
    """AEAD algorithm ids as stored in headers (u16)."""

    AES_256_GCM_SIV = 1  # RFC 8452, the default: safe against nonce reuse
    AES_256_GCM = 2

    @property
    def label(self) -> str:
        return _LABELS[self]

    @classmethod
    def from_label(cls, label: str) -> "Algorithm":
        for algorithm, name in _LABELS.items():
            if name == label:
                return algorithm
        raise ValueError(f"unknown algorithm {label!r} (known: {', '.join(_LABELS.values())})")

    @classmethod
    def from_id(cls, value: int) -> "Algorithm":
        try:
            return cls(value)
        except ValueError:
            raise FormatError(f"unknown algorithm id {value}") from None


_LABELS = {Algorithm.AES_256_GCM_SIV: "aes-256-gcm-siv", Algorithm.AES_256_GCM: "aes-256-gcm"}
_BACKENDS = {Algorithm.AES_256_GCM_SIV: AESGCMSIV, Algorithm.AES_256_GCM: AESGCM}


class RecordCipher:
    """One AEAD key of one algorithm, sealing and opening records.

    Thread-safe: the underlying cryptography objects release the GIL and keep
    no per-call state, so worker threads may share one instance.
    """

    def __init__(self, algorithm: Algorithm, key: bytes) -> None:
        self.algorithm = algorithm
        self._aead = _BACKENDS[algorithm](key)

    def seal(self, plaintext: bytes, associated_data: bytes, nonce: bytes) -> bytes:
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, record: bytes | memoryview, associated_data: bytes) -> bytes:
        if len(record) < RECORD_OVERHEAD:
            raise IntegrityError("record shorter than nonce and tag")
        view = memoryview(record)
        try:
            return self._aead.decrypt(view[:NONCE_LEN], view[NONCE_LEN:], associated_data)
        except InvalidTag:
            raise IntegrityError("authentication failed") from None
