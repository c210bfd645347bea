"""Sealing and opening one record, ``nonce || ciphertext || tag``, per algorithm id.

The algorithm id in a header selects the AEAD; a new algorithm is a new id, so
old models stay readable (crypto agility). ``RecordCipher.open`` either returns
authenticated plaintext or raises IntegrityError: it never returns bytes that
failed authentication.
"""

import functools
from enum import Enum, IntEnum

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
_CRYPTOGRAPHY = {Algorithm.AES_256_GCM_SIV: AESGCMSIV, Algorithm.AES_256_GCM: AESGCM}
_TINK_GCM_SIV_URL = "type.googleapis.com/google.crypto.tink.AesGcmSivKey"


class Backend(Enum):
    """Which library opens records. Both give identical results (RFC 8452 / SP 800-38D)."""

    CRYPTOGRAPHY = "cryptography"  # releases the GIL: scales over worker threads
    TINK = "tink"  # BoringSSL's GCM-SIV, several times faster per core, but holds the GIL


@functools.cache
def tink_available() -> bool:
    try:
        from tink import aead

        aead.register()
    except ImportError:
        return False
    return True


def default_backend(algorithm: Algorithm) -> Backend:
    """The fastest backend installed for ``algorithm``.

    OpenSSL's GCM-SIV (through cryptography) runs its counter mode one block per
    call; tink's (PyPI ``tink``, the ``fast`` extra) is several times faster per core
    (benchmarks/RESULTS.md). For AES-256-GCM cryptography is fastest.
    """
    if algorithm is Algorithm.AES_256_GCM_SIV and tink_available():
        return Backend.TINK
    return Backend.CRYPTOGRAPHY


class RecordCipher:
    """One AEAD key of one algorithm, sealing and opening records.

    Thread-safe: neither backend keeps per-call state, so threads may share one
    instance.
    """

    def __init__(self, algorithm: Algorithm, key: bytes, backend: Backend | None = None) -> None:
        self.algorithm = algorithm
        self.backend = backend or default_backend(algorithm)
        self._aead = _CRYPTOGRAPHY[algorithm](key)
        self._open = self._open_cryptography
        if self.backend is Backend.TINK:
            if algorithm is not Algorithm.AES_256_GCM_SIV or not tink_available():
                raise ValueError(f"the tink backend does not serve {algorithm.label} here")
            from tink import TinkError  # once: an import statement per record shows in profiles

            self._tink = _tink_gcm_siv(key)
            self._tink_error = TinkError
            self._open = self._open_tink

    def seal(self, plaintext: bytes, associated_data: bytes, nonce: bytes) -> bytes:
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"nonce must be {NONCE_LEN} bytes")
        return nonce + self._aead.encrypt(nonce, plaintext, associated_data)

    def open(self, record: bytes | memoryview, associated_data: bytes) -> bytes:
        if len(record) < RECORD_OVERHEAD:
            raise IntegrityError("record shorter than nonce and tag")
        try:
            return self._open(record, associated_data)
        except InvalidTag:
            raise IntegrityError("authentication failed") from None

    def open_into(
        self, record: bytes | memoryview, associated_data: bytes, out: memoryview
    ) -> None:
        """Open ``record`` straight into ``out`` (its exact plaintext length).

        On failure ``out`` is zeroed before IntegrityError is raised: a backend may
        have written unauthenticated plaintext there.
        """
        if len(record) < RECORD_OVERHEAD or len(out) != len(record) - RECORD_OVERHEAD:
            raise IntegrityError("record length does not match its plaintext")
        try:
            if self.backend is Backend.CRYPTOGRAPHY:
                view = memoryview(record)
                self._aead.decrypt_into(view[:NONCE_LEN], view[NONCE_LEN:], associated_data, out)
            else:
                out[:] = self._open(record, associated_data)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise IntegrityError("authentication failed") from None

    def _open_cryptography(self, record: bytes | memoryview, associated_data: bytes) -> bytes:
        view = memoryview(record)
        return self._aead.decrypt(view[:NONCE_LEN], view[NONCE_LEN:], associated_data)

    def _open_tink(self, record: bytes | memoryview, associated_data: bytes) -> bytes:
        # tink's RAW GCM-SIV output is exactly our record: nonce || ciphertext || tag.
        try:
            return self._tink.decrypt(bytes(record), associated_data)
        except self._tink_error:
            raise InvalidTag from None


def _tink_gcm_siv(key: bytes):
    """A tink Aead for one raw AES-256-GCM-SIV key with RAW output (no key-id prefix)."""
    from tink import aead, proto_keyset_format, secret_key_access
    from tink.proto import aes_gcm_siv_pb2, tink_pb2

    key_data = tink_pb2.KeyData(
        type_url=_TINK_GCM_SIV_URL,
        value=aes_gcm_siv_pb2.AesGcmSivKey(version=0, key_value=key).SerializeToString(),
        key_material_type=tink_pb2.KeyData.SYMMETRIC,
    )
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=key_data,
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    handle = proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN)
    return handle.primitive(aead.Aead)
