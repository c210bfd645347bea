"""ModelReader: plaintext reads of a model's files over a store, a chunk cache and worker threads.

A read maps to chunk indices. The chunks it finds in the cache are served from
there; the missing ones are claimed and fetched as one contiguous span (one
store request), so a random read costs exactly its chunks and a sequential
1 MiB read one span, never a chunk twice. Remote stores round a fetch out to an
aligned run (``run_bytes``) to amortize latency. A reader that wants a chunk
already in flight waits for that fetch (single flight per chunk). Records are
opened straight into one plaintext buffer per span, and a read that lies within
one span is answered with a read-only view of it, without a copy. Inline (a
local store, where a thread hand-off costs a read more than it saves) a fetch is
fetched and opened on the event loop; only prefetch, if threaded, runs in
threads. With worker threads and no disk cache,
threads only fetch: the records wait in the cache and are opened on the event
loop 1 MiB at a time as reads reach them, so their plaintext is still in the
CPU's caches when it is served. Sequential reads start background fetches of
what follows, further ahead and in larger requests while the reader stays
sequential (prefetch). An optional disk cache keeps ciphertext spans,
committed only after they authenticated. In format 2 every record is checked
against its leaf hash before it is opened: a file's page digests are fetched
and checked against the manifest's root when the file is first read, and the
pages of leaves as reads need them (held within the cache budget). The reader
never returns a byte that failed authentication: such reads raise
IntegrityError, which the FUSE layer turns into EIO; each failed chunk, header
or page of hashes is logged once.
"""

import bisect
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from cmlfs.errors import CmlfsError, IntegrityError, StoreError
from cmlfs.format.hashlist import (
    HASH_LEN,
    LEAVES_PER_PAGE,
    PAGE_LEN,
    HashLayout,
    check_digests,
    check_pages,
)
from cmlfs.format.header import BlobHeader, BlobOpener, OpenedSpan
from cmlfs.format.layout import HEADER_LEN, ChunkLayout
from cmlfs.logfmt import quote
from cmlfs.manifest import FileEntry, Manifest
from cmlfs.reader import DEFAULT_CACHE_BYTES
from cmlfs.reader.cache import ChunkCache, PlainSpan, SealedSpan, SingleFlight, Span
from cmlfs.stores.base import Store, StoreStats
from cmlfs.stores.diskcache import DiskCache

log = logging.getLogger(__name__)

T = TypeVar("T")

PREFETCH_UNIT_BYTES = 1024 * 1024  # one background fetch reads ahead at least this much
PREFETCH_SPLIT = 4  # a full prefetch window is fetched in this many requests at once
OPEN_PIECE_BYTES = 1024 * 1024  # fetched records are opened this much at a time (a FUSE read)
SLOT_MIN_CHUNKS = 16  # read-sized spans share one buffer size only if a read holds this many chunks
DEFAULT_RUN_BYTES = 0  # a fetch holds just the chunks a read misses: random reads open one
HASH_PAGES_SHARE = 8  # checked pages of leaf hashes fill at most this part of the cache
MAX_REPORTED_CHUNKS = 100_000  # failures remembered so each is logged once


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
    bytes_warmed: int = 0  # pushed into the page cache ahead of readers (cmlfs.fs.warmup)
    chunks_decrypted: int = 0
    bytes_decrypted: int = 0
    store_requests: int = 0
    integrity_failures: int = 0
    store_errors: int = 0
    read_seconds: LatencyHistogram = field(default_factory=LatencyHistogram)


class _Flight:
    """One fetch of chunks ``first`` up to ``end`` (exclusive) of a file in progress.

    Readers of any of its chunks wait for it instead of fetching again (single
    flight per chunk). When it is done, ``spans`` cover its chunks, with their opened
    plaintext (failed chunks zeroed and listed in ``failures``) or their records
    to open, or ``error`` says why the fetch failed; neither means the leader was
    cancelled.
    """

    def __init__(self, file_index: int, first: int, end: int) -> None:
        self.file_index, self.first, self.end = file_index, first, end
        self.leaves: bytes | None = None  # format 2: the checked leaf hashes of its chunks
        self.background = False  # a prefetch: no read waits for it yet
        self.done = trio.Event()
        self.spans: list[Span] = []
        self.failures: dict[int, IntegrityError] = {}
        self.error: Exception | None = None


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
        prefetch_bytes: int = 0,
        disk_cache: DiskCache | None = None,
        inline: bool = False,
        log_failures: bool = True,
        threaded_prefetch: bool = False,
    ) -> None:
        self.manifest = manifest
        self.store = store
        self.cache = ChunkCache(cache_bytes)
        self.stats = ReaderStats()
        self._model_key = model_key
        self._layouts = [ChunkLayout(manifest.chunk_size, f.size) for f in manifest.files]
        self._run_chunks = max(1, run_bytes // manifest.chunk_size)
        small = manifest.chunk_size * SLOT_MIN_CHUNKS <= OPEN_PIECE_BYTES
        self._span_slot = OPEN_PIECE_BYTES + manifest.chunk_size if small else 0
        self._openers: dict[int, BlobOpener] = {}
        self._opening: SingleFlight[tuple[BlobOpener, bytes | None]] = SingleFlight()
        self._digests: dict[int, bytes] = {}  # format 2: each opened file's checked page digests
        self._pages: OrderedDict[tuple[int, int], bytes] = OrderedDict()  # checked leaf pages
        self._pages_budget = cache_bytes // HASH_PAGES_SHARE
        self._pages_bytes = 0
        self._reported: set[tuple[int, int] | str] = set()  # failed chunks, other failures
        self._log_failures = log_failures  # off where the caller reports them (cmlfs verify)
        self._flights: dict[tuple[int, int], _Flight] = {}
        self._limiter = trio.CapacityLimiter(threads or os.cpu_count() or 2)
        self._disk_cache = disk_cache
        self._inline = inline
        # Records fetched by worker threads are opened on the event loop as reads reach
        # them, right before their plaintext is copied to the kernel, instead of in the
        # thread a whole run ahead: the kernel then copies plaintext that is still in the
        # CPU's caches (benchmarks/RESULTS.md, "Figures behind code choices"). The disk
        # cache keeps a run only once all of it authenticated, so with one runs are opened
        # whole.
        self._open_on_read = not inline and disk_cache is None
        # An inline reader may still prefetch in worker threads (``threaded_prefetch``): its
        # reads stay on the event loop, and the threads only fetch records, which reads open.
        self._threaded_prefetch = threaded_prefetch and inline and disk_cache is None
        # Called after every read with the counters up to date: a worker process publishes
        # them there, since an idle worker's event loop may sit blocked in a FUSE read.
        self.after_read: Callable[[], object] | None = None
        # Prefetch overlaps store latency with reading, which inline work cannot; it fills
        # at most half the cache, so the spans being read stay.
        prefetching = not inline or self._threaded_prefetch
        self._max_ahead = min(prefetch_bytes, cache_bytes // 2) if prefetching else 0
        self._ahead: dict[int, int] = {}
        self._next_offset: dict[int, int] = {}
        self._frontier: dict[int, int] = {}  # per file: the chunk prefetching goes on from

    @property
    def store_stats(self) -> StoreStats:
        """The store's own counters, so metrics read a reader and a WorkerBoard alike."""
        return self.store.stats

    async def read(self, file_index: int, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` plaintext bytes of file ``file_index`` from ``offset`` (short at EOF).

        The result is bytes or a read-only view; never a byte that failed authentication.
        ``after_read``, when set, runs after every read, failed ones included.
        """
        started = time.perf_counter()
        try:
            result = await self._read(file_index, offset, size)
            if result:
                self.stats.bytes_read += len(result)
                self.stats.read_seconds.observe(time.perf_counter() - started)
            return result
        finally:
            if self.after_read is not None:
                self.after_read()

    async def plaintext(self, file_index: int, offset: int, size: int) -> bytes | memoryview:
        """``read`` for the daemon's own use (the page-cache warm-up): the same bytes, not
        counted as read by a reader."""
        return await self._read(file_index, offset, size)

    async def _read(self, file_index: int, offset: int, size: int) -> bytes | memoryview:
        layout = self._layouts[file_index]
        chunks = layout.chunks_for_range(offset, size)
        if not chunks:
            return b""
        end = min(offset + size, layout.plaintext_size)
        if self._max_ahead:
            self._prefetch(file_index, offset, end, chunks.stop)
        pieces = []
        chunk = chunks.start
        while chunk < chunks.stop:
            span = self.cache.find(file_index, chunk) or await self._fetched(
                file_index, chunk, chunks.stop
            )
            if isinstance(span, SealedSpan):
                span = self._opened(span, chunk, chunks.stop)
            # From ``chunk`` on: a span fetched after an eviction may start before it. Up to
            # the span's last chunk: its buffer may be longer (``_buffer_len``).
            start = max(offset, layout.chunk_offset(chunk))
            stop = min(end, layout.chunk_offset(span.end))
            pieces.append(memoryview(span.plaintext)[start - span.offset : stop - span.offset])
            chunk = span.end
        return pieces[0].toreadonly() if len(pieces) == 1 else b"".join(pieces)

    async def check(self, file_index: int) -> None:
        """Check file ``file_index``'s blob header and size against the manifest (no chunk
        read)."""
        await self._opener(file_index)

    async def _fetched(self, file_index: int, chunk: int, end: int) -> Span:
        """The span holding ``chunk``, fetched (with the missing chunks after it, up to
        ``end`` or the end of its run) or awaited from the fetch already in flight."""
        while True:
            flight = self._flights.get((file_index, chunk))
            if flight is None:
                flight = self._launch(file_index, chunk, end)
                await self._fly(flight)
            else:
                await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.spans:
                self._raise_failed(flight.failures, chunk, end)
                return next(span for span in flight.spans if chunk < span.end)
            # The leader was cancelled: nothing to share, so this reader fetches.

    def _report(self, file_index: int, failures: dict[int, IntegrityError]) -> None:
        """Log each failed chunk once, however often it is read (at most the first
        ``MAX_REPORTED_CHUNKS``): the store keeps serving a damaged record."""
        for chunk, error in failures.items():
            self._log_failure((file_index, chunk), "event=chunk_rejected reason=%s", error)

    def _log_failure(self, key: tuple[int, int] | str, message: str, error: Exception) -> None:
        """Log a failure the first time ``key`` fails (a chunk, or the message of a failure
        of hash material or a header, which names its file and page)."""
        if key in self._reported or len(self._reported) >= MAX_REPORTED_CHUNKS:
            return
        self._reported.add(key)
        if self._log_failures:
            log.error(message, quote(error))

    def _raise_failed(self, failures: dict[int, IntegrityError], chunk: int, end: int) -> None:
        """Raise the error of the first failed chunk from ``chunk`` up to ``end``, if any."""
        for failed in sorted(failures):
            if chunk <= failed < end:
                self.stats.integrity_failures += 1
                raise failures[failed]

    def _opened(self, span: SealedSpan, chunk: int, end: int) -> PlainSpan:
        """The plaintext span of fetched records ``span``, opened here on the event loop
        if no read has yet; it replaces them in the cache if every chunk authenticated,
        else they are dropped (a later read fetches them again)."""
        if span.opened is not None:
            return span.opened
        entry = self.manifest.files[span.file_index]
        opener = self._openers[span.file_index]
        chunks = range(span.first, span.end)
        buffer_len = self._buffer_len(opener.layout, chunks)
        opened = _open_records(entry, opener, chunks, span.records, span.leaves, buffer_len)
        plain = self._plaintext_span(span.file_index, chunks, opened)
        if opened.failures:
            self.cache.discard(span)
            self._report(span.file_index, opened.failures)
            self._raise_failed(opened.failures, chunk, end)
        else:
            span.opened = plain
            self.cache.put(plain)
        return plain

    def _plaintext_span(self, file_index: int, chunks: range, opened: OpenedSpan) -> PlainSpan:
        """The span of ``opened``'s plaintext, counted as decrypted but for failed chunks."""
        layout = self._layouts[file_index]
        first, end = chunks.start, chunks.stop
        span = PlainSpan(file_index, first, end, layout.chunk_offset(first), opened.plaintext)
        self.stats.chunks_decrypted += len(chunks) - len(opened.failures)
        self.stats.bytes_decrypted += layout.span_len(chunks) - sum(
            layout.chunk_len(c) for c in opened.failures
        )
        return span

    def _buffer_len(self, layout: ChunkLayout, chunks: range) -> int:
        """How long the plaintext buffer of ``chunks`` is made: one size for every span of
        more than half a FUSE read up to a read and a chunk (``OPEN_PIECE_BYTES``), else just
        the span's.

        A read not aligned to chunks spans one chunk more than an aligned one, so spans came
        in two sizes, and buffers freed in LRU order left holes of one size that the other
        could not reuse: a --workers process's heap grew with a stream's length
        (benchmarks/RESULTS.md, "Serve-ready (issue 20)"). With chunks of more than a
        ``SLOT_MIN_CHUNKS``th of a read the padding would cost more than 1/16 of every
        buffer, so their spans keep their own sizes (``_span_slot`` 0).
        """
        span_len = layout.span_len(chunks)
        return self._span_slot if self._span_slot // 2 < span_len <= self._span_slot else span_len

    def _launch(self, file_index: int, chunk: int, end: int) -> _Flight:
        """Claim the chunks around ``chunk`` that are neither cached nor in flight: back to
        the start of its run, forward up to ``end`` or the end of its run, whichever is
        further; with one-chunk runs exactly the missing chunks of the request."""
        run = self._run_chunks
        free = self._free
        first = chunk
        run_start = chunk - chunk % run
        while first > run_start and free(file_index, first - 1):
            first -= 1
        stop = min(max(end, run_start + run), self._layouts[file_index].n_chunks)
        claimed_end = chunk + 1
        while claimed_end < stop and free(file_index, claimed_end):
            claimed_end += 1
        flight = _Flight(file_index, first, claimed_end)
        for claimed in range(first, claimed_end):
            self._flights[(file_index, claimed)] = flight
        return flight

    def _free(self, file_index: int, chunk: int) -> bool:
        key = (file_index, chunk)
        return key not in self.cache and key not in self._flights

    async def _fly(self, flight: _Flight) -> None:
        """Fetch ``flight``'s chunks, and open them unless reads will; the outcome is left
        on the flight for all its readers. Only cancellation propagates."""
        try:
            opener = await self._opener(flight.file_index)
            entry = self.manifest.files[flight.file_index]
            chunks = range(flight.first, flight.end)
            flight.leaves = await self._leaves(flight.file_index, opener, chunks)
            if self._open_on_read or (flight.background and self._threaded_prefetch):
                offset, length = opener.layout.records_span(chunks)
                args = (entry, opener, chunks)
                fetch = self._fetch_records
                records = await self._run_blocking(fetch, *args, threaded=True)
                # In pieces only if the cache can hold them: a reader reads on from the
                # cache, and a piece it cannot find there would be fetched again.
                piece = OPEN_PIECE_BYTES if length <= self.cache.budget else length
                spans = _record_spans(flight, opener.layout, offset, records, piece)
            else:
                args = (entry, opener, chunks, flight.leaves)
                opened = await self._run_blocking(self._fetch_and_open, *args)
                spans = [self._plaintext_span(flight.file_index, chunks, opened)]
                flight.failures = opened.failures
                self._report(flight.file_index, opened.failures)
            self.stats.store_requests += 1
            if not flight.failures:
                for span in spans:
                    self.cache.put(span)
            flight.spans = spans
        except Exception as exc:
            flight.error = exc
        finally:
            for claimed in range(flight.first, flight.end):
                del self._flights[(flight.file_index, claimed)]
            flight.done.set()

    def _prefetch(self, file_index: int, offset: int, end: int, chunks_end: int) -> None:
        """Fetch the chunks after a sequential read (of bytes ``offset`` up to ``end``, in
        chunks up to ``chunks_end``) into the cache in the background.

        How far ahead doubles with each sequential read up to the maximum, and each
        background request grows with it, to a ``PREFETCH_SPLIT``th of that window: a long
        stream is fetched in few large requests, several still in flight. Each request
        costs the daemon milliseconds of interpreter time besides its bytes, so fewer,
        larger requests read faster with less CPU (benchmarks/RESULTS.md). A read elsewhere
        stops prefetching for the file until reads are sequential again.
        """
        sequential = self._next_offset.get(file_index) == offset
        self._next_offset[file_index] = end
        if not sequential:
            self._ahead[file_index] = 0
            self._frontier.pop(file_index, None)
            return
        layout = self._layouts[file_index]
        size = layout.chunk_size
        least = max(self._run_chunks, PREFETCH_UNIT_BYTES // size)
        ahead = self._ahead[file_index] = min(
            max(least * size, 2 * self._ahead[file_index]), self._max_ahead
        )
        # Never more than the window: a window smaller than a run still fetches.
        unit = min(max(least, ahead // PREFETCH_SPLIT // size), max(1, ahead // size))
        stop = min(chunks_end + ahead // size, layout.n_chunks)
        chunk = max(self._frontier.get(file_index, 0), chunks_end)
        # Whole requests only, but for the file's tail: the window moves on with every read.
        while chunk + unit <= stop or (stop == layout.n_chunks and chunk < stop):
            if self._free(file_index, chunk):  # else cached or on its way
                flight = self._launch(file_index, chunk, min(chunk + unit, stop))
                flight.background = True
                trio.lowlevel.spawn_system_task(self._fly, flight)
                chunk = flight.end
            else:
                chunk += 1
        self._frontier[file_index] = chunk

    def _fetch_records(self, entry: FileEntry, opener: BlobOpener, chunks: range) -> memoryview:
        """The records of ``chunks``, not hashed here: format 2's leaf check hashes each
        record when it is opened, cache-hot for its decryption (``BlobOpener.open_span``)."""
        offset, length = opener.layout.records_span(chunks)
        return memoryview(self.store.read_range(entry.blob_name, offset, length))

    def _fetch_and_open(
        self, entry: FileEntry, opener: BlobOpener, chunks: range, leaves: bytes | None
    ) -> OpenedSpan:
        """The opened plaintext of ``chunks``; failed chunks are listed.

        A disk-cached span that fails to authenticate (or to match ``leaves``) is dropped
        and fetched again; a fetched span enters the disk cache only if every chunk of it
        authenticated.
        """
        offset, length = opener.layout.records_span(chunks)
        buffer_len = self._buffer_len(opener.layout, chunks)
        cache = self._disk_cache
        if cache:
            cached = cache.get(entry.blob_name, offset, length)
            span = None if cached is None else _open_all(opener, chunks, cached, leaves, buffer_len)
            if span is not None:
                return span
            if cached is not None:
                cache.discard(entry.blob_name, offset, length)
        data = self.store.read_range(entry.blob_name, offset, length)
        span = _open_records(entry, opener, chunks, data, leaves, buffer_len=buffer_len)
        if cache and not span.failures:
            cache.put(entry.blob_name, offset, length, data)
        return span

    async def _opener(self, file_index: int) -> BlobOpener:
        opener = self._openers.get(file_index)
        if opener is None:
            opener, digests = await self._opening.run(
                file_index, lambda: self._open_blob(file_index)
            )
            if file_index not in self._openers:  # the first of the callers the flight served
                self._openers[file_index] = opener
                if digests is not None:
                    self._digests[file_index] = digests
                    self.cache.hold(len(digests))
        return opener

    async def _open_blob(self, file_index: int) -> tuple[BlobOpener, bytes | None]:
        return await self._run_blocking(self._check_blob, self.manifest.files[file_index])

    async def _leaves(self, file_index: int, opener: BlobOpener, chunks: range) -> bytes | None:
        """The checked leaf hashes of ``chunks`` of a format-2 file (None in
        format 1): from the pages held, the missing ones read in one request and checked
        against the file's page digests. A page that does not match fails every read that
        needs it; it is never held."""
        if not opener.hashed:
            return None
        pages = HashLayout(opener.layout).pages_for(chunks)
        found = [self._pages.get((file_index, page)) for page in pages]
        missing = [page for page, data in zip(pages, found, strict=True) if data is None]
        if missing:
            entry = self.manifest.files[file_index]
            fetched = range(missing[0], missing[-1] + 1)
            offset, length = HashLayout(opener.layout).pages_span(fetched)
            digests = self._digests[file_index]
            check = functools.partial(check_pages, digests, missing[0])
            data = await self._run_blocking(self._fetch_hashes, entry, offset, length, check)
            for page in fetched:
                at = (page - missing[0]) * PAGE_LEN
                found[page - pages.start] = held = data[at : at + PAGE_LEN]
                self._hold_page((file_index, page), held)
        for page in pages:
            if (file_index, page) in self._pages:
                self._pages.move_to_end((file_index, page))
        start = (chunks.start - pages.start * LEAVES_PER_PAGE) * HASH_LEN
        return b"".join(found)[start : start + len(chunks) * HASH_LEN]

    def _hold_page(self, key: tuple[int, int], page: bytes) -> None:
        """Keep a checked page, dropping the least recently used beyond the pages' share."""
        if key in self._pages or len(page) > self._pages_budget:
            return
        self._pages[key] = page
        self._pages_bytes += len(page)
        self.cache.hold(len(page))
        while self._pages_bytes > self._pages_budget:
            _, dropped = self._pages.popitem(last=False)
            self._pages_bytes -= len(dropped)
            self.cache.hold(-len(dropped))

    async def _run_blocking(self, function, *args, threaded: bool | None = None):
        """Run store and crypto work in a worker thread (or inline: by default as the reader
        was made), counting failures."""
        if threaded is None:
            threaded = not self._inline
        try:
            if not threaded:
                return function(*args)
            return await run_in_thread(functools.partial(function, *args), self._limiter)
        except IntegrityError as exc:
            self.stats.integrity_failures += 1
            self._log_failure(str(exc), "event=integrity_failed reason=%s", exc)
            raise
        except StoreError:
            self.stats.store_errors += 1
            raise

    def _check_blob(self, entry: FileEntry) -> tuple[BlobOpener, bytes | None]:
        """Fetch and check a blob's header against the manifest; return its opener and, in
        format 2, its page digests checked against the manifest's root."""
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
            or header.version != self.manifest.format_version
        ):
            raise IntegrityError(f"{entry.path}: blob header disagrees with the manifest")
        actual = self.store.size(entry.blob_name)
        if actual != header.blob_size or actual != entry.blob_size:
            raise IntegrityError(f"{entry.path}: blob is truncated or extended")
        if entry.hash_root is None:
            return opener, None
        hashes = HashLayout(layout)
        check = functools.partial(check_digests, root=bytes.fromhex(entry.hash_root))
        return opener, self._fetch_hashes(entry, hashes.digests_offset, hashes.digests_len, check)

    def _fetch_hashes(
        self, entry: FileEntry, offset: int, length: int, check: Callable[[bytes], None]
    ) -> bytes:
        """Hash material of ``entry``'s blob that passed ``check``: from the disk cache if it
        is there and passes, else from the store (then kept in the disk cache, so a mount
        reading from a warm disk cache needs no store request past the headers)."""
        cache, name = self._disk_cache, entry.blob_name
        if cache and length:
            cached = cache.get(name, offset, length)
            if cached is not None:
                try:
                    check(cached)
                    return cached
                except IntegrityError:
                    cache.discard(name, offset, length)
        # An empty file has no pages: its root is that of nothing.
        data = self.store.read_range(name, offset, length) if length else b""
        try:
            check(data)
        except IntegrityError as exc:
            raise IntegrityError(f"{entry.path}: {exc}") from None
        if cache and length:
            cache.put(name, offset, length, data)
        return data


@trio.lowlevel.enable_ki_protection
async def run_in_thread(function: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
    """``function()`` in one of trio's cached worker threads, at most ``limiter`` at once.

    Like ``trio.to_thread.run_sync`` (uncancellable while the thread runs, the limiter
    held until it ends, its exception raised here, Ctrl-C kept out of the hand-off),
    minus the OS thread naming that one does twice per call through ctypes: each call
    releases and retakes the GIL, which tink holds while it decrypts (a measurable part
    of the daemon's CPU on a network store: benchmarks/RESULTS.md).
    """
    async with limiter:
        done = trio.Event()
        outcomes = []
        token = trio.lowlevel.current_trio_token()

        def deliver(outcome) -> None:
            outcomes.append(outcome)
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        trio.lowlevel.start_thread_soon(function, deliver)
        with trio.CancelScope(shield=True):
            await done.wait()
    return outcomes[0].unwrap()


def _open_records(
    entry: FileEntry,
    opener: BlobOpener,
    chunks: range,
    data: bytes | memoryview,
    leaves: bytes | None,
    buffer_len: int = 0,
) -> OpenedSpan:
    """``chunks`` opened from their records into a buffer of at least ``buffer_len``; errors
    name the file."""
    try:
        span = opener.open_span(chunks, data, leaves, buffer_len)
    except IntegrityError as exc:
        raise IntegrityError(f"{entry.path}: {exc}") from None
    for chunk, error in span.failures.items():
        span.failures[chunk] = IntegrityError(f"{entry.path}: {error}")
    return span


def _record_spans(
    flight: _Flight,
    layout: ChunkLayout,
    base: int,
    records: memoryview,
    piece: int,
) -> list[SealedSpan]:
    """Spans of ``flight``'s records, fetched from blob offset ``base``, each of the
    chunks of ``piece`` bytes, with their leaves in format 2."""
    step = max(1, piece // layout.chunk_size)
    spans = []
    leaves = flight.leaves
    for first in range(flight.first, flight.end, step):
        chunks = range(first, min(first + step, flight.end))
        start, length = layout.records_span(chunks)
        piece = records[start - base : start - base + length]
        span = SealedSpan(flight.file_index, first, chunks.stop, layout.chunk_offset(first), piece)
        if leaves is not None:
            at = (first - flight.first) * HASH_LEN
            span.leaves = leaves[at : at + len(chunks) * HASH_LEN]
        spans.append(span)
    return spans


def _open_all(
    opener: BlobOpener, chunks: range, data: bytes, leaves: bytes | None, buffer_len: int
) -> OpenedSpan | None:
    """The opened run if every chunk of ``data`` matches and authenticates, else None."""
    try:
        span = opener.open_span(chunks, data, leaves, buffer_len=buffer_len)
    except IntegrityError:
        return None
    return None if span.failures else span
