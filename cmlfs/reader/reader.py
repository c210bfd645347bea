"""ModelReader: plaintext reads of a model's files over a store, a chunk cache and worker threads.

A read maps to chunk indices; missing chunks are fetched as aligned runs (one
store request per run) and opened straight into one plaintext buffer per run,
which is cached whole once every chunk of it authenticated; a read that lies
within one run is answered with a view of that buffer, without a copy.
Concurrent misses on one run share a single fetch and decryption. Fetching
and opening run in worker threads, or inline on the event loop for a local
store, where a thread hand-off costs more than it saves. A reader
that continues where its last read ended triggers background fetches of the
next runs (prefetch). An optional disk cache keeps ciphertext spans, committed
only after they authenticated. The reader
never returns a byte that failed authentication: such reads raise
IntegrityError, which the FUSE layer turns into EIO.
"""

import bisect
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field

import trio

from cmlfs.errors import CmlfsError, IntegrityError, StoreError
from cmlfs.format.header import BlobHeader, BlobOpener, OpenedSpan
from cmlfs.format.layout import HEADER_LEN, ChunkLayout
from cmlfs.manifest import FileEntry, Manifest
from cmlfs.reader.cache import ChunkCache, SingleFlight
from cmlfs.stores.base import Store
from cmlfs.stores.diskcache import DiskCache

log = logging.getLogger("cmlfs.reader")

DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_RUN_BYTES = 256 * 1024  # four 64 KiB chunks: random reads decrypt little extra


# Upper bounds of the read latency histogram, 100 µs to 5 s: cache hits to slow stores.
READ_SECONDS_BOUNDS = tuple(round(m * 10.0**e, 6) for e in range(-4, 1) for m in (1, 2.5, 5))


@dataclass
class LatencyHistogram:
    """Durations counted per bucket, so a status server can export quantiles cheaply."""

    bounds: tuple[float, ...] = READ_SECONDS_BOUNDS
    counts: list[int] = field(default_factory=lambda: [0] * (len(READ_SECONDS_BOUNDS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_seconds += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, reads at or under it), ending with (inf, all reads)."""
        running, result = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result


@dataclass
class ReaderStats:
    """Counters for status and metrics; updated on the trio thread only."""

    bytes_read: int = 0
    chunks_decrypted: int = 0
    bytes_decrypted: int = 0
    store_requests: int = 0
    integrity_failures: int = 0
    store_errors: int = 0
    read_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


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
        prefetch_runs: int = 0,
        disk_cache: DiskCache | None = None,
        inline: bool = False,
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
        self._fetching: SingleFlight[OpenedSpan] = SingleFlight()
        self._limiter = trio.CapacityLimiter(threads or os.cpu_count() or 2)
        self._disk_cache = disk_cache
        self._inline = inline
        # Prefetch only what the cache can hold next to the runs being read.
        room = cache_bytes // max(run_bytes, manifest.chunk_size) - 2
        self._prefetch_runs = max(0, min(prefetch_runs, room))
        self._next_offset: dict[int, int] = {}

    async def read(self, index: int, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` plaintext bytes of file ``index`` from ``offset`` (short at EOF).

        The result is bytes or a read-only view; never a byte that failed authentication.
        """
        started = time.perf_counter()
        layout = self._layouts[index]
        chunks = layout.chunks_for_range(offset, size)
        if not chunks:
            return b""
        runs = range(chunks[0] // self._run_chunks, chunks[-1] // self._run_chunks + 1)
        if self._prefetch_runs and self._next_offset.get(index) == offset:
            self._prefetch(index, runs[-1])
        self._next_offset[index] = offset + size
        found: dict[int, OpenedSpan] = {}
        missing: list[int] = []
        for run in runs:
            plaintext = self.cache.get((index, run))
            if plaintext is None:
                missing.append(run)
            else:
                found[run] = OpenedSpan(run * self._run_chunks, plaintext, {})
        if missing:
            await self._collect_runs(index, missing, found)
        end = min(offset + size, layout.plaintext_size)
        pieces = []
        for run in runs:
            span = found[run]
            for chunk, error in span.failures.items():
                if chunk in chunks:
                    self.stats.integrity_failures += 1
                    raise error
            base = layout.chunk_offset(span.first)
            view = memoryview(span.plaintext).toreadonly()
            pieces.append(view[max(offset - base, 0) : end - base])
        result = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.stats.bytes_read += len(result)
        self.stats.read_seconds.observe(time.perf_counter() - started)
        return result

    async def check(self, index: int) -> None:
        """Check file ``index``'s blob header and size against the manifest (no chunk read)."""
        await self._opener(index)

    def _prefetch(self, index: int, run: int) -> None:
        """Start background fetches of the runs after ``run`` that are neither cached nor
        in flight; they fill the cache through the same single flight as demand reads."""
        n_runs = -(-self._layouts[index].n_chunks // self._run_chunks)
        for ahead in range(run + 1, min(run + 1 + self._prefetch_runs, n_runs)):
            key = (index, ahead)
            if key not in self.cache and not self._fetching.busy(key):
                trio.lowlevel.spawn_system_task(self._prefetch_run, index, ahead)

    async def _prefetch_run(self, index: int, run: int) -> None:
        try:
            opener = await self._opener(index)
            first = run * self._run_chunks
            await self._fetching.run((index, run), lambda: self._fetch_run(index, opener, first))
        except Exception as exc:  # a system task must not fail; a demand read reports it
            log.debug("event=prefetch_failed file=%d run=%d reason=%s", index, run, exc)

    async def _collect_runs(
        self, index: int, runs: list[int], found: dict[int, OpenedSpan]
    ) -> None:
        opener = await self._opener(index)
        if len(runs) == 1:
            await self._collect_run(index, opener, runs[0], found)
            return
        try:
            async with trio.open_nursery() as nursery:
                for run in runs:
                    nursery.start_soon(self._collect_run, index, opener, run, found)
        except ExceptionGroup as group:
            raise _first_leaf(group) from None

    async def _collect_run(
        self, index: int, opener: BlobOpener, run: int, found: dict[int, OpenedSpan]
    ) -> None:
        found[run] = await self._fetching.run(
            (index, run), lambda: self._fetch_run(index, opener, run * self._run_chunks)
        )

    async def _fetch_run(self, index: int, opener: BlobOpener, first: int) -> OpenedSpan:
        layout = self._layouts[index]
        last = min(first + self._run_chunks, layout.n_chunks) - 1
        entry = self.manifest.files[index]
        self.stats.store_requests += 1
        span = await self._run_blocking(self._fetch_and_open, entry, opener, first, last)
        if not span.failures:
            self.cache.put((index, first // self._run_chunks), span.plaintext)
        opened = [c for c in range(first, last + 1) if c not in span.failures]
        self.stats.chunks_decrypted += len(opened)
        self.stats.bytes_decrypted += sum(layout.chunk_len(c) for c in opened)
        return span

    def _fetch_and_open(
        self, entry: FileEntry, opener: BlobOpener, first: int, last: int
    ) -> OpenedSpan:
        """The opened plaintext of one run; a chunk that failed is listed, named by file.

        A disk-cached span that fails to authenticate is dropped and fetched again;
        a fetched span enters the disk cache only if every chunk of it authenticated.
        """
        offset, length = opener.layout.records_span(first, last)
        cache = self._disk_cache
        cached = cache.get(entry.blob_name, offset, length) if cache else None
        span = _open_all(opener, first, last, cached) if cached is not None else None
        if cache and cached is not None and span is None:
            cache.discard(entry.blob_name, offset, length)
        if span is None:
            data = self.store.read_range(entry.blob_name, offset, length)
            try:
                span = opener.open_span(first, last, data)
            except IntegrityError as exc:
                raise IntegrityError(f"{entry.path}: {exc}") from None
            if cache and not span.failures:
                cache.put(entry.blob_name, offset, length, data)
        for chunk, error in span.failures.items():
            span.failures[chunk] = IntegrityError(f"{entry.path}: {error}")
        return span

    async def _opener(self, index: int) -> BlobOpener:
        opener = self._openers.get(index)
        if opener is None:
            opener = await self._opening.run(index, lambda: self._open_blob(index))
            self._openers[index] = opener
        return opener

    async def _open_blob(self, index: int) -> BlobOpener:
        return await self._run_blocking(self._check_blob, self.manifest.files[index])

    async def _run_blocking(self, function, *args):
        """Run store and crypto work in a worker thread (or inline), counting failures."""
        try:
            if self._inline:
                return function(*args)
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


def _open_all(opener: BlobOpener, first: int, last: int, data: bytes) -> OpenedSpan | None:
    """The opened run if every chunk of ``data`` authenticates, else None."""
    try:
        span = opener.open_span(first, last, data)
    except IntegrityError:
        return None
    return None if span.failures else span


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first error of a nursery's group, so callers see one typed error, not a group."""
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
