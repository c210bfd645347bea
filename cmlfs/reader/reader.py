"""ModelReader: plaintext reads of a model's files over a store, a chunk cache and worker threads.

A read maps to chunk indices; missing chunks are fetched as aligned runs (one
store request per run), opened in a worker thread, and only then cached.
Concurrent misses on one run share a single fetch and decryption. The reader
never returns a byte that failed authentication: such reads raise
IntegrityError, which the FUSE layer turns into EIO.
"""

import hashlib
import hmac
import os
from dataclasses import dataclass

import trio

from cmlfs.errors import CmlfsError, IntegrityError, StoreError
from cmlfs.format.header import BlobHeader, BlobOpener
from cmlfs.format.layout import HEADER_LEN, ChunkLayout
from cmlfs.manifest import FileEntry, Manifest
from cmlfs.reader.cache import ChunkCache, SingleFlight
from cmlfs.stores.base import Store

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_RUN_BYTES = 1024 * 1024


@dataclass
class ReaderStats:
    """Counters for status and metrics; updated on the trio thread only."""

    bytes_read: int = 0
    chunks_decrypted: int = 0
    bytes_decrypted: int = 0
    store_requests: int = 0
    integrity_failures: int = 0
    store_errors: int = 0


class ModelReader:
    """Random-access plaintext reads of the files of one opened manifest."""

    def __init__(
        self,
        manifest: Manifest,
        store: Store,
        model_key: bytes,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        run_bytes: int = DEFAULT_RUN_BYTES,
        threads: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.store = store
        self.cache = ChunkCache(cache_bytes)
        self.stats = ReaderStats()
        self._model_key = model_key
        self._layouts = [ChunkLayout(manifest.chunk_size, f.size) for f in manifest.files]
        self._run_chunks = max(1, run_bytes // manifest.chunk_size)
        self._openers: dict[int, BlobOpener] = {}
        self._opening: SingleFlight[BlobOpener] = SingleFlight()
        self._fetching: SingleFlight[list[bytes | IntegrityError]] = SingleFlight()
        self._limiter = trio.CapacityLimiter(threads or os.cpu_count() or 2)

    async def read(self, index: int, offset: int, size: int) -> bytes:
        """Up to ``size`` plaintext bytes of file ``index`` from ``offset`` (short at EOF)."""
        layout = self._layouts[index]
        chunks = layout.chunks_for_range(offset, size)
        if not chunks:
            return b""
        found: dict[int, bytes | IntegrityError] = {}
        missing_runs: list[int] = []
        for chunk in chunks:
            data = self.cache.get((index, chunk))
            if data is not None:
                found[chunk] = data
            elif not missing_runs or missing_runs[-1] != chunk // self._run_chunks:
                missing_runs.append(chunk // self._run_chunks)
        if missing_runs:
            opener = await self._opener(index)
            if len(missing_runs) == 1:
                await self._collect_run(index, opener, missing_runs[0], found)
            else:
                try:
                    async with trio.open_nursery() as nursery:
                        for run in missing_runs:
                            nursery.start_soon(self._collect_run, index, opener, run, found)
                except ExceptionGroup as group:
                    raise _first_leaf(group) from None
        end = offset + size
        pieces = []
        for chunk in chunks:
            base = layout.chunk_offset(chunk)
            data = found[chunk]
            if isinstance(data, IntegrityError):
                self.stats.integrity_failures += 1
                raise data
            pieces.append(memoryview(data)[max(offset - base, 0) : min(end - base, len(data))])
        result = pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)
        self.stats.bytes_read += len(result)
        return result

    async def check(self, index: int) -> None:
        """Check file ``index``'s blob header and size against the manifest (no chunk read)."""
        await self._opener(index)

    async def _collect_run(
        self, index: int, opener: BlobOpener, run: int, found: dict[int, bytes | IntegrityError]
    ) -> None:
        first = run * self._run_chunks
        plaintexts = await self._fetching.run(
            (index, run), lambda: self._fetch_run(index, opener, first)
        )
        for offset, data in enumerate(plaintexts):
            found[first + offset] = data

    async def _fetch_run(
        self, index: int, opener: BlobOpener, first: int
    ) -> list[bytes | IntegrityError]:
        layout = self._layouts[index]
        last = min(first + self._run_chunks, layout.n_chunks) - 1
        entry = self.manifest.files[index]
        self.stats.store_requests += 1
        plaintexts = await self._in_thread(self._fetch_and_open, entry, opener, first, last)
        for offset, data in enumerate(plaintexts):
            if isinstance(data, bytes):
                self.cache.put((index, first + offset), data)
                self.stats.bytes_decrypted += len(data)
                self.stats.chunks_decrypted += 1
        return plaintexts

    def _fetch_and_open(
        self, entry: FileEntry, opener: BlobOpener, first: int, last: int
    ) -> list[bytes | IntegrityError]:
        """Chunk plaintexts of one run; a chunk that failed is its error, named by file."""
        offset, length = opener.layout.records_span(first, last)
        data = self.store.read_range(entry.blob_name, offset, length)
        try:
            results = opener.open_span(first, last, data)
        except IntegrityError as exc:
            raise IntegrityError(f"{entry.path}: {exc}") from None
        return [
            IntegrityError(f"{entry.path}: {r}") if isinstance(r, IntegrityError) else r
            for r in results
        ]

    async def _opener(self, index: int) -> BlobOpener:
        opener = self._openers.get(index)
        if opener is None:
            opener = await self._opening.run(index, lambda: self._open_blob(index))
            self._openers[index] = opener
        return opener

    async def _open_blob(self, index: int) -> BlobOpener:
        return await self._in_thread(self._check_blob, self.manifest.files[index])

    async def _in_thread(self, function, *args):
        """Run blocking store and crypto work in a worker thread, counting failures."""
        try:
            return await trio.to_thread.run_sync(function, *args, limiter=self._limiter)
        except IntegrityError:
            self.stats.integrity_failures += 1
            raise
        except StoreError:
            self.stats.store_errors += 1
            raise

    def _check_blob(self, entry: FileEntry) -> BlobOpener:
        """Fetch and check a blob's header against the manifest; return its opener."""
        raw = self.store.read_range(entry.blob_name, 0, HEADER_LEN)
        if not hmac.compare_digest(hashlib.sha256(raw).hexdigest(), entry.header_sha256):
            raise IntegrityError(f"{entry.path}: blob header does not match the manifest")
        try:
            header = BlobHeader.parse(raw)
            opener = BlobOpener(self._model_key, header)
        except CmlfsError as exc:
            raise IntegrityError(f"{entry.path}: invalid blob header: {exc}") from None
        layout = header.layout
        if (
            layout.plaintext_size != entry.size
            or layout.chunk_size != self.manifest.chunk_size
            or header.algorithm != self.manifest.algorithm
        ):
            raise IntegrityError(f"{entry.path}: blob header disagrees with the manifest")
        actual = self.store.size(entry.blob_name)
        if actual != layout.blob_size or actual != entry.blob_size:
            raise IntegrityError(f"{entry.path}: blob is truncated or extended")
        return opener


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first error of a nursery's group, so callers see one typed error, not a group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
