"""The blob header, and sealing/opening a blob's chunks (docs/FORMAT.md, "Blob").

``BlobSealer`` turns plaintext chunks into records under a fresh salt;
``BlobOpener`` checks a header against the model key (key commitment) and
opens records. Each record's associated data binds the header digest, the
chunk index and a last-chunk flag, so a record moved, duplicated, dropped or
taken from another blob fails authentication. In format 2 a record is also
checked against its leaf hash before it is opened (``hashlist``), so a record
re-sealed by someone holding the key fails too.
"""

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cmlfs.errors import FormatError, IntegrityError
from cmlfs.format import FORMAT_VERSION, FORMAT_VERSIONS
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.hashlist import HASH_LEN, HashLayout, leaf_hash
from cmlfs.format.keys import SALT_LEN, Purpose, derive_object_key, open_object_key
from cmlfs.format.layout import (
    HEADER_LEN,
    MAX_CHUNK_LOG2,
    MIN_CHUNK_LOG2,
    NONCE_LEN,
    ChunkLayout,
    chunk_size_log2,
)

BLOB_MAGIC = b"CMLFSBLB"
_HEADER = struct.Struct(">8sHHB3sQ32s32s")
assert _HEADER.size == HEADER_LEN

NonceSource = Callable[[int], bytes]
_NOT_ITS_HASH = "record does not match its hash (changed after it was sealed)"


@dataclass(frozen=True)
class BlobHeader:
    """The parsed, structurally valid header of one blob (not yet key-checked)."""

    algorithm: Algorithm
    layout: ChunkLayout
    salt: bytes
    commitment: bytes
    version: int = FORMAT_VERSION

    @property
    def blob_size(self) -> int:
        """The size of the whole blob: the records, and in format 2 the hash list after them."""
        if self.version == 1:
            return self.layout.blob_size
        return HashLayout(self.layout).blob_size

    def pack(self) -> bytes:
        return _HEADER.pack(
            BLOB_MAGIC,
            self.version,
            self.algorithm,
            chunk_size_log2(self.layout.chunk_size),
            bytes(3),
            self.layout.plaintext_size,
            self.salt,
            self.commitment,
        )

    @property
    def digest(self) -> bytes:
        """SHA-256 of the packed header: bound into every record and the manifest."""
        return hashlib.sha256(self.pack()).digest()

    @classmethod
    def parse(cls, data: bytes) -> "BlobHeader":
        if len(data) != HEADER_LEN:
            raise FormatError(f"blob header is {HEADER_LEN} bytes, got {len(data)}")
        magic, version, alg, log2, reserved, size, salt, commitment = _HEADER.unpack(data)
        if magic != BLOB_MAGIC:
            raise FormatError("not a cmlfs blob (bad magic)")
        if version not in FORMAT_VERSIONS:
            raise FormatError(f"unsupported blob format version {version}")
        if not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
            raise FormatError(f"invalid chunk size exponent {log2}")
        if reserved != bytes(3):
            raise FormatError("reserved header bytes are not zero")
        try:
            layout = ChunkLayout(1 << log2, size)
        except ValueError as exc:
            raise FormatError(str(exc)) from None
        return cls(Algorithm.from_id(alg), layout, salt, commitment, version)


_AD_TAIL = struct.Struct(">Q?")


def chunk_associated_data(header_digest: bytes, index: int, last: bool) -> bytes:
    """AD of one record: header digest || u64 chunk index || u8 last-chunk flag."""
    return header_digest + _AD_TAIL.pack(index, last)


class BlobSealer:
    """Seals one plaintext of known size into a blob (header, then records in order)."""

    def __init__(
        self,
        model_key: bytes,
        layout: ChunkLayout,
        algorithm: Algorithm = Algorithm.AES_256_GCM_SIV,
        salt: bytes | None = None,
        nonces: NonceSource = os.urandom,
        version: int = FORMAT_VERSION,
    ) -> None:
        salt = os.urandom(SALT_LEN) if salt is None else salt
        key, commitment = derive_object_key(model_key, salt, Purpose.content(version))
        self.header = BlobHeader(algorithm, layout, salt, commitment, version)
        self._header_digest = self.header.digest
        self._cipher = RecordCipher(algorithm, key)
        self._nonces = nonces

    def seal_chunk(self, index: int, plaintext: bytes) -> bytes:
        layout = self.header.layout
        if len(plaintext) != layout.chunk_len(index):
            raise ValueError(f"chunk {index} must hold {layout.chunk_len(index)} bytes")
        ad = chunk_associated_data(self._header_digest, index, layout.is_last(index))
        return self._cipher.seal(plaintext, ad, self._nonces(NONCE_LEN))


class BlobOpener:
    """Opens the records of one blob whose header matched the model key.

    A format-2 blob's records are opened only with their checked leaf hashes: a record
    whose hash differs is refused before it is decrypted.
    """

    def __init__(self, model_key: bytes, header: BlobHeader) -> None:
        purpose = Purpose.content(header.version)
        key = open_object_key(model_key, header.salt, header.commitment, purpose)
        self.header = header
        self.layout = header.layout
        self.hashed = header.version >= 2
        self._header_digest = header.digest
        self._cipher = RecordCipher(header.algorithm, key)

    def open_chunk(
        self, index: int, record: bytes | memoryview, leaf: bytes | None = None
    ) -> bytes:
        """Authenticated plaintext of chunk ``index``, or IntegrityError.

        ``leaf`` is the record's checked leaf hash, required for a format-2 blob.
        """
        if len(record) != self.layout.record_len(index):
            raise IntegrityError(f"chunk {index}: record has the wrong length")
        self._check_leaves(leaf)
        if leaf is not None and leaf_hash(record) != leaf:
            raise IntegrityError(f"chunk {index}: {_NOT_ITS_HASH}")
        ad = chunk_associated_data(self._header_digest, index, self.layout.is_last(index))
        try:
            return self._cipher.open(record, ad)
        except IntegrityError:
            raise IntegrityError(f"chunk {index}: authentication failed") from None

    def open_span(
        self,
        chunks: range,
        data: bytes | memoryview,
        leaves: bytes | None = None,
        buffer_len: int = 0,
    ) -> "OpenedSpan":
        """Open the records of ``chunks`` (consecutive) from one contiguous read of them.

        The plaintexts land in one buffer, in order, each decrypted straight into
        place. A record that fails (its hash differs from its leaf in ``leaves``, the
        checked leaf hashes of these chunks that a format-2 blob requires, or its
        authentication fails) leaves its part of the buffer zeroed and is listed in
        ``failures``, so that its intact neighbours stay usable. Each record is hashed
        right before it is decrypted, while it is in the CPU's caches: hashing a run in the
        thread that fetched it made format 2 read slower (benchmarks/RESULTS.md, "Format 2:
        hash lists"). ``buffer_len`` makes the buffer at least that long, zeros after the
        plaintext: a reader that keeps many buffers can give them few sizes, so that a
        freed one fits the next (cmlfs.reader.reader).
        """
        layout = self.layout
        _, length = layout.records_span(chunks)
        first, last = chunks.start, chunks.stop - 1
        if len(data) != length:
            raise IntegrityError(f"chunks {first}..{last}: blob is truncated or extended")
        self._check_leaves(leaves)
        # Every chunk but the file's last is full: plain strides, no per-chunk lookups.
        size, stride, final = layout.chunk_size, layout.record_stride, layout.n_chunks - 1
        span_len = layout.span_len(chunks)
        plaintext = bytearray(max(span_len, buffer_len))
        out = memoryview(plaintext)[:span_len]
        records = memoryview(data)
        open_into, digest = self._cipher.open_into, self._header_digest
        failures: dict[int, IntegrityError] = {}
        for position, index in enumerate(chunks):
            at, start = position * size, position * stride
            is_last = index == final
            record = records[start:] if is_last else records[start : start + stride]
            target = out[at:] if is_last else out[at : at + size]
            if leaves is not None:
                own = slice(position * HASH_LEN, (position + 1) * HASH_LEN)
                if leaf_hash(record) != leaves[own]:
                    failures[index] = IntegrityError(f"chunk {index}: {_NOT_ITS_HASH}")
                    continue
            try:
                open_into(record, chunk_associated_data(digest, index, is_last), target)
            except IntegrityError:
                failures[index] = IntegrityError(f"chunk {index}: authentication failed")
        return OpenedSpan(first, plaintext, failures)

    def _check_leaves(self, leaves: bytes | None) -> None:
        """A format-2 record is never opened without its leaf hash; format 1 has none."""
        if self.hashed and leaves is None:
            raise ValueError("format-2 records open only with their leaf hashes")
        if not self.hashed and leaves is not None:
            raise ValueError("format-1 blobs have no leaf hashes")


@dataclass(frozen=True)
class OpenedSpan:
    """The plaintext of consecutive chunks from ``first`` on, with the chunks that failed.

    Bytes of a failed chunk are zero and must never be served; so are the bytes past the
    chunks', where ``open_span`` was given a longer ``buffer_len``.
    """

    first: int
    plaintext: bytearray
    failures: dict[int, IntegrityError]
