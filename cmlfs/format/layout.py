"""Offset arithmetic of a blob: plaintext range -> chunk indices -> record ranges.

A blob is a header followed by one record per plaintext chunk. Every chunk but
the last holds exactly ``chunk_size`` plaintext bytes; a record is
``nonce || ciphertext || tag``. ``Chunking`` is the part of that arithmetic that
knows no records, shared with KServe JWE files (cmlfs.format.jwe). Nothing here
touches bytes or keys.
"""

from dataclasses import dataclass
from functools import cached_property

HEADER_LEN = 88
NONCE_LEN = 12
TAG_LEN = 16
RECORD_OVERHEAD = NONCE_LEN + TAG_LEN

MIN_CHUNK_LOG2 = 12  # 4 KiB
MAX_CHUNK_LOG2 = 22  # 4 MiB
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_PLAINTEXT_SIZE = 1 << 48  # 256 TiB: bounds every size field before it is used


def chunk_size_log2(chunk_size: int) -> int:
    """Return log2 of a valid chunk size; raise ValueError for any other size."""
    log2 = chunk_size.bit_length() - 1
    if chunk_size <= 0 or chunk_size != 1 << log2 or not MIN_CHUNK_LOG2 <= log2 <= MAX_CHUNK_LOG2:
        raise ValueError(
            f"chunk size must be a power of two from {1 << MIN_CHUNK_LOG2} "
            f"to {1 << MAX_CHUNK_LOG2} bytes, not {chunk_size}"
        )
    return log2


@dataclass(frozen=True)
class Chunking:
    """``plaintext_size`` bytes cut into chunks of ``chunk_size`` bytes, every one full but
    the last: the range arithmetic every chunked read shares (a blob's chunks, a KServe JWE
    file's ciphertext chunks in cmlfs.format.jwe)."""

    chunk_size: int
    plaintext_size: int

    def __post_init__(self) -> None:
        if self.chunk_size <= 0:
            raise ValueError(f"chunk size must be positive, not {self.chunk_size}")
        if not 0 <= self.plaintext_size <= MAX_PLAINTEXT_SIZE:
            raise ValueError(f"plaintext size out of range: {self.plaintext_size}")

    @cached_property  # on the read path of every request: computed once
    def n_chunks(self) -> int:
        return -(-self.plaintext_size // self.chunk_size)

    def is_last(self, index: int) -> bool:
        return index == self.n_chunks - 1

    def chunk_offset(self, index: int) -> int:
        """Plaintext offset of the first byte of chunk ``index``."""
        return index * self.chunk_size

    def chunk_len(self, index: int) -> int:
        """Plaintext bytes in chunk ``index``."""
        self._check_index(index)
        return min(self.chunk_size, self.plaintext_size - index * self.chunk_size)

    def span_len(self, chunks: range) -> int:
        """Plaintext bytes in ``chunks`` (consecutive, not empty)."""
        last = chunks.stop - 1
        return self.chunk_offset(last) + self.chunk_len(last) - self.chunk_offset(chunks.start)

    def chunks_for_range(self, offset: int, length: int) -> range:
        """Chunk indices holding plaintext bytes ``[offset, offset+length)``, clipped to EOF."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self.plaintext_size)
        if offset >= end:
            return range(0)
        return range(offset // self.chunk_size, (end - 1) // self.chunk_size + 1)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} out of range (there are {self.n_chunks})")


@dataclass(frozen=True)
class ChunkLayout(Chunking):
    """Where each chunk of a plaintext of ``plaintext_size`` bytes lives in its blob
    (``chunk_size`` a power of two in the format's bounds)."""

    def __post_init__(self) -> None:
        chunk_size_log2(self.chunk_size)
        super().__post_init__()

    @cached_property
    def record_stride(self) -> int:
        return self.chunk_size + RECORD_OVERHEAD

    @property
    def blob_size(self) -> int:
        return HEADER_LEN + self.n_chunks * RECORD_OVERHEAD + self.plaintext_size

    def record_offset(self, index: int) -> int:
        """Blob offset of the record of chunk ``index``."""
        self._check_index(index)
        return HEADER_LEN + index * self.record_stride

    def record_len(self, index: int) -> int:
        return self.chunk_len(index) + RECORD_OVERHEAD

    def records_span(self, chunks: range) -> tuple[int, int]:
        """Blob (offset, length) covering the records of ``chunks`` (consecutive, not empty)."""
        if not chunks or chunks.step != 1:
            raise ValueError(f"not a run of chunks: {chunks}")
        start, last = self.record_offset(chunks.start), chunks.stop - 1
        return start, self.record_offset(last) + self.record_len(last) - start
