"""Format 2's hash list: every record of a blob bound to the manifest (docs/FORMAT.md, 5.5).

The record AEAD authenticates a chunk against the model key only, so anyone who holds
the key can re-seal a chunk. Format 2 also binds each record's bytes to the sealed
manifest, with a two-level list of BLAKE3 hashes, as dm-verity and fs-verity do:

    leaf(i)   = BLAKE3(record i)                        over the ciphertext record
    page(j)   = leaf(128 j) || ... || leaf(128 j + 127)  (the last page may be shorter)
    digest(j) = BLAKE3(page(j))
    root      = BLAKE3(digest(0) || ... || digest(n_pages - 1))

BLAKE3 (plain hash mode, 32-byte output) rather than SHA-256: on every record read it
is about 3x faster per core (benchmarks/RESULTS.md), which is what format 2 costs
over format 1 on a cold read.

The root is in the manifest's file entry; the leaves and then the page digests follow
the last record in the blob. A reader checks the digests against the root once per
file, a page against its digest when it first needs it, and a record against its leaf
before it opens it; so it holds one digest per 128 records plus the pages it uses.
Pure: arithmetic and hashing, no I/O.
"""

import hmac
from dataclasses import dataclass
from functools import cached_property

from blake3 import blake3

from cmlfs.errors import IntegrityError
from cmlfs.format.layout import ChunkLayout

HASH_LEN = 32
LEAVES_PER_PAGE = 128
PAGE_LEN = HASH_LEN * LEAVES_PER_PAGE  # 4 KiB


def _hash(data: bytes | memoryview) -> bytes:
    """The one hash of the hash list: BLAKE3, no key, default 32-byte output."""
    return blake3(data).digest()


def leaf_hash(record: bytes | memoryview) -> bytes:
    """The leaf of one record: the hash of its bytes as stored (nonce, ciphertext, tag)."""
    return _hash(record)


@dataclass(frozen=True)
class HashLayout:
    """Where a format-2 blob keeps its leaves and page digests, after its records."""

    chunks: ChunkLayout

    @cached_property
    def n_pages(self) -> int:
        return -(-self.chunks.n_chunks // LEAVES_PER_PAGE)

    @cached_property
    def leaves_offset(self) -> int:
        """Blob offset of leaf 0: the end of the last record."""
        return self.chunks.blob_size

    @property
    def digests_offset(self) -> int:
        return self.leaves_offset + HASH_LEN * self.chunks.n_chunks

    @property
    def digests_len(self) -> int:
        return HASH_LEN * self.n_pages

    @property
    def blob_size(self) -> int:
        return self.digests_offset + self.digests_len

    def pages_for(self, chunks: range) -> range:
        """Pages holding the leaves of ``chunks`` (consecutive, not empty)."""
        return range(chunks.start // LEAVES_PER_PAGE, (chunks.stop - 1) // LEAVES_PER_PAGE + 1)

    def pages_span(self, pages: range) -> tuple[int, int]:
        """Blob (offset, length) of ``pages`` (consecutive): one contiguous range."""
        start = pages.start * LEAVES_PER_PAGE
        end = min(pages.stop * LEAVES_PER_PAGE, self.chunks.n_chunks)
        return self.leaves_offset + HASH_LEN * start, HASH_LEN * (end - start)


def digest_pages(leaves: bytes | memoryview) -> bytes:
    """The page digests of consecutive leaves starting at a page boundary."""
    view = memoryview(leaves)
    return b"".join(_hash(view[at : at + PAGE_LEN]) for at in range(0, len(view), PAGE_LEN))


def hash_root(digests: bytes | memoryview) -> bytes:
    """The root over all page digests of a blob (the hash of nothing for an empty file)."""
    return _hash(digests)


def check_digests(digests: bytes, root: bytes) -> None:
    """Raise IntegrityError unless ``digests`` are exactly the page digests ``root`` binds."""
    if not hmac.compare_digest(hash_root(digests), root):
        raise IntegrityError("hash list does not match the manifest's hash_root")


def check_pages(digests: bytes, first_page: int, pages: bytes | memoryview) -> None:
    """Raise IntegrityError naming the first page of ``pages`` (pages ``first_page`` on,
    as read) whose digest is not the one in the checked ``digests``."""
    found = digest_pages(pages)
    for position in range(0, len(found), HASH_LEN):
        page = first_page + position // HASH_LEN
        expected = digests[page * HASH_LEN : (page + 1) * HASH_LEN]
        if found[position : position + HASH_LEN] != expected:
            raise IntegrityError(f"hash page {page} does not match its digest")


class HashListBuilder:
    """Collects the leaves of a blob's records as a writer seals them, in order."""

    def __init__(self) -> None:
        self._leaves = bytearray()

    def add(self, record: bytes) -> None:
        self._leaves += leaf_hash(record)

    def finish(self) -> tuple[bytes, bytes]:
        """``(trailer, root)``: the bytes that follow the records, and the manifest's root."""
        digests = digest_pages(self._leaves)
        return bytes(self._leaves) + digests, hash_root(digests)
