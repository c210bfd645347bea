"""JweReader: plaintext reads of a KServe-style JWE model folder over a store.

A compact JWE carries one GCM tag for the whole file, so a file serves no byte until
all of its ciphertext authenticated: one streaming pass per file, in worker threads,
several files at once, in listing order, except that a file being read goes first
(a read waits for its file's pass). The pass keeps no plaintext; it records a short
digest of every ciphertext chunk. Reads then fetch just the chunks they need, check
each chunk's ciphertext against its recorded digest (so a store that changes after the pass
gives IntegrityError, never other bytes) and decrypt it on its own (GCM's counter
mode), into the same byte-budgeted chunk cache as ModelReader's.

Files that are not JWE are unauthenticated: they are left out unless asked for, and
then served as the store holds them. A JWE file that cannot be authenticated (bad
structure, header, key or tag) is listed and reads fail with IntegrityError, logged
once per file. Never returns a byte of a JWE file whose tag has not verified.
"""

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from cmlfs.errors import CmlfsError, IntegrityError, StoreError
from cmlfs.format.jwe import (
    HEAD_BYTES,
    JWE_MAGIC,
    TAIL_BYTES,
    Authenticator,
    ChunkDigests,
    JweKey,
    JweParts,
    decrypt_chunk,
    find_parts,
    is_jwe_name,
    open_parts,
    served_name,
)
from cmlfs.logfmt import quote
from cmlfs.manifest import DirEntry
from cmlfs.reader import DEFAULT_CACHE_BYTES
from cmlfs.reader.cache import ChunkCache, PlainSpan, SingleFlight
from cmlfs.reader.reader import MAX_REPORTED_CHUNKS, ReaderStats, run_in_thread
from cmlfs.stores.base import Store, StoreStats

log = logging.getLogger(__name__)

DEFAULT_AUTHENTICATORS = 2  # files authenticated at once in the background
AUTH_READ_CHUNKS = 8  # chunks of text fetched per store request while authenticating
READ_PASSES = 2  # passes of files being read that may run beside the background ones
MAX_FILES = 100_000
# The headers and wrapped keys a listing keeps for its files' passes, at most what a cmlfs
# manifest body may hold: 100,000 files with the largest headers would keep ~900 MiB.
MAX_LISTING_TEXT = 64 * 1024 * 1024
# A JWE folder records no modes: show what KServe's storage initializer leaves on the model
# volume (files written under the usual umask), write bits included as for every mount.
FILE_MODE = 0o644
DIR_MODE = 0o755


@dataclass(frozen=True)
class JweEntry:
    """A file of the served tree: a JWE file (``parts``), a plain file shown on request,
    or a JWE file that cannot be served (``problem``)."""

    path: str  # as served: the store name without ``.jwe``
    name: str  # the store object
    size: int
    mode: int
    mtime_ns: int
    parts: JweParts | None = None
    problem: str | None = None

    @property
    def plain(self) -> bool:
        return self.parts is None and self.problem is None


@dataclass(frozen=True)
class JweListing:
    """The tree of a JWE model folder, shaped like a manifest's for the FUSE layer."""

    files: list[JweEntry]
    dirs: list[DirEntry]

    @property
    def jwe_files(self) -> list[int]:
        return [i for i, f in enumerate(self.files) if not f.plain]


def list_jwe_folder(store: Store, show_plain: bool = False) -> JweListing:
    """Every JWE file of ``store`` (a ``.jwe`` suffix or the ``eyJ`` prefix), with its
    plaintext size read from its structure; plain files too with ``show_plain``."""
    names = store.list()
    if len(names) > MAX_FILES:
        raise StoreError(f"{store.describe()} holds more than {MAX_FILES} files")
    now = time.time_ns()
    files: dict[str, JweEntry] = {}
    clashes: set[str] = set()
    kept = 0
    for name in names:
        entry = _entry(store, name, show_plain, now)
        if entry is None or entry.path in clashes:
            continue
        if entry.parts is not None:
            kept += len(entry.parts.header) + len(entry.parts.encrypted_key)
            if kept > MAX_LISTING_TEXT:
                raise StoreError(
                    f"the JWE headers and wrapped keys in {store.describe()} add up to more "
                    f"than {MAX_LISTING_TEXT} bytes"
                )
        other = files.setdefault(entry.path, entry)
        if other is entry:
            continue
        if other.plain != entry.plain:  # the JWE file is served, never the unchecked one
            skipped, files[entry.path] = (other, entry) if other.plain else (entry, other)
            log.warning(
                'event=file_skipped path=%s reason="a JWE file serves this name"',
                quote(skipped.name),
            )
        else:  # two JWE files (x.jwe and x starting with eyJ): neither is served
            del files[entry.path]
            clashes.add(entry.path)
            log.warning(
                'event=file_skipped path=%s reason="two files serve this name"', quote(entry.path)
            )
    folders = {""}
    for path in files:
        parts = path.split("/")
        folders.update("/".join(parts[:n]) for n in range(1, len(parts)))
    for path in sorted(folders & files.keys()):
        log.warning('event=file_skipped path=%s reason="a folder has this name"', quote(path))
        del files[path]
    dirs = [DirEntry(path, DIR_MODE, now) for path in sorted(folders)]
    return JweListing([files[p] for p in sorted(files)], dirs)


def _entry(store: Store, name: str, show_plain: bool, now: int) -> JweEntry | None:
    size = store.size(name)
    head = store.read_range(name, 0, min(size, HEAD_BYTES))
    if not (is_jwe_name(name) or head.startswith(JWE_MAGIC)):
        if show_plain:
            return JweEntry(name, name, size, FILE_MODE, now)
        log.warning(
            'event=file_refused path=%s reason="not a JWE file (unauthenticated)"', quote(name)
        )
        return None
    path = served_name(name)
    tail = head[-TAIL_BYTES:] if size <= HEAD_BYTES else b""
    if size > HEAD_BYTES:
        tail = store.read_range(name, size - TAIL_BYTES, TAIL_BYTES)
    try:
        parts = find_parts(head, tail, size)
    except CmlfsError as exc:  # logged when its authentication fails
        # Not empty: the kernel answers reads of an empty file itself, and this one must fail.
        return JweEntry(path, name, max(1, size), FILE_MODE, now, problem=str(exc))
    return JweEntry(path, name, parts.ciphertext_size, FILE_MODE, now, parts)


@dataclass
class Authenticated:
    """A JWE file whose whole ciphertext authenticated: its key, and its chunks' digests."""

    key: JweKey
    digests: ChunkDigests = field(repr=False)


def authenticate_file(
    store: Store, entry: JweEntry, key: bytes, progress: Callable[[int], object] | None = None
) -> Authenticated:
    """One pass over ``entry``'s ciphertext (blocking), in requests of
    ``AUTH_READ_CHUNKS`` chunks; IntegrityError if any part of it fails, StoreError if
    the store does. ``progress`` is told the ciphertext bytes of each chunk passed."""
    if entry.problem is not None:
        raise IntegrityError(f"{entry.path}: {entry.problem}")
    parts = entry.parts
    try:
        opened = open_parts(parts, key)
        authenticator = Authenticator(opened)
        for first in range(0, parts.n_chunks, AUTH_READ_CHUNKS):
            last = min(first + AUTH_READ_CHUNKS, parts.n_chunks) - 1
            offset = parts.chunk_chars(first)[0]
            text = store.read_range(entry.name, offset, sum(parts.chunk_chars(last)) - offset)
            for chunk in range(first, last + 1):
                start, length = parts.chunk_chars(chunk)
                authenticator.update(text[start - offset : start - offset + length])
                if progress is not None:
                    progress(parts.chunks.chunk_len(chunk))
        return Authenticated(opened, authenticator.finish())
    except StoreError:
        raise
    except CmlfsError as exc:
        raise IntegrityError(f"{entry.path}: {exc}") from None


def open_chunk(store: Store, entry: JweEntry, done: Authenticated, chunk: int) -> bytes:
    """Chunk ``chunk``'s plaintext, if its text in the store is still what authenticated."""
    offset, length = entry.parts.chunk_chars(chunk)
    text = store.read_range(entry.name, offset, length)
    try:
        return decrypt_chunk(done.key, chunk, text, done.digests)
    except CmlfsError as exc:  # FormatError too: the text was valid when it authenticated
        raise IntegrityError(f"{entry.path}: {exc}") from None


class JweReader:
    """Random-access plaintext reads of the files of one JWE listing (ModelReader's
    interface: ``read``, ``stats``, ``cache``, ``store``, ``store_stats``, ``after_read``)."""

    def __init__(
        self,
        listing: JweListing,
        store: Store,
        key: bytes,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        authenticators: int = DEFAULT_AUTHENTICATORS,
        inline: bool = False,
        threads: int = 2,
    ) -> None:
        self.listing = listing
        self.store = store
        self.cache = ChunkCache(cache_bytes)
        self.stats = ReaderStats()
        self.after_read: Callable[[], object] | None = None
        self._key = key
        self._inline = inline
        self._done: dict[int, Authenticated] = {}
        self._failed: dict[int, IntegrityError] = {}
        self._rejected: set[tuple[int, int]] = set()  # chunks that changed, each logged once
        self._authenticating: SingleFlight[Authenticated] = SingleFlight()
        self._chunks: SingleFlight[PlainSpan] = SingleFlight()
        self._background = trio.CapacityLimiter(authenticators)
        # Passes run in threads of their own: files being read do not queue behind the
        # background passes (bounded by ``_background``), up to READ_PASSES more at once;
        # each pass holds one request's text and a chunk of scratch (about 9 MiB).
        self._passes = trio.CapacityLimiter(authenticators + READ_PASSES)
        self._limiter = trio.CapacityLimiter(threads)  # chunk fetches at once, unless inline
        self._started = False

    @property
    def store_stats(self) -> StoreStats:
        return self.store.stats

    # --- authentication ----------------------------------------------------------------

    def authenticate_one(self) -> None:
        """Authenticate files, smallest first, until one passes, and every empty file
        (blocking, before the mount): IntegrityError naming the first failure if none can.

        An empty file that fails is listed with one byte, which reads fail: the kernel
        answers reads of an empty file itself, so it must never be shown unchecked."""
        files = self.listing.files
        order = sorted(self.listing.jwe_files, key=lambda i: files[i].size)
        passed = False
        for file_index in order:
            if passed and files[file_index].size:
                return
            try:
                self._done[file_index] = self._authenticate(file_index)
                passed = True
            except IntegrityError as exc:
                self._fail(file_index, exc)
                if not files[file_index].size:
                    files[file_index] = dataclasses.replace(files[file_index], size=1)
        if passed:
            return
        reason = self._failed[order[0]] if order else "the folder holds no JWE file"
        raise IntegrityError(f"no file of the model could be authenticated: {reason}")

    async def authenticate_all(self) -> None:
        """Authenticate every file in the background, ``authenticators`` at once, in
        listing order; files being read have gone first."""
        if self._started:
            return
        self._started = True
        pending = iter(self.listing.jwe_files)

        async def worker() -> None:
            for file_index in pending:
                async with self._background:
                    try:
                        await self._authenticated(file_index)
                    except CmlfsError:
                        pass  # logged; reads of the file report it
                    except Exception:
                        log.exception(
                            "event=authentication_crashed path=%s", quote(self._path(file_index))
                        )

        async with trio.open_nursery() as nursery:
            for _ in range(self._background.total_tokens):
                nursery.start_soon(worker)

    async def _authenticated(self, file_index: int) -> Authenticated:
        """File ``file_index``'s key and chunk digests, once its whole ciphertext authenticated."""
        done = self._done.get(file_index)
        if done is not None:
            return done
        if file_index in self._failed:
            raise self._failed[file_index]
        if not self._started:
            trio.lowlevel.spawn_system_task(self.authenticate_all)
        return await self._authenticating.run(
            file_index, lambda: self._authenticate_async(file_index)
        )

    async def _authenticate_async(self, file_index: int) -> Authenticated:
        try:
            done = await run_in_thread(lambda: self._authenticate(file_index), self._passes)
        except IntegrityError as exc:
            self._fail(file_index, exc)
            raise
        except StoreError:
            self.stats.store_errors += 1  # not recorded: a later read tries again
            raise
        self._done[file_index] = done
        log.info("event=jwe_authenticated path=%s", quote(self._path(file_index)))
        return done

    def _authenticate(self, file_index: int) -> Authenticated:
        return authenticate_file(self.store, self.listing.files[file_index], self._key)

    def _fail(self, file_index: int, error: IntegrityError) -> None:
        self._failed[file_index] = error
        log.error(
            "event=jwe_refused path=%s reason=%s", quote(self._path(file_index)), quote(error)
        )

    def _path(self, file_index: int) -> str:
        return self.listing.files[file_index].path

    # --- reads ----------------------------------------------------------------------------

    async def read(self, file_index: int, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` plaintext bytes of file ``file_index`` from ``offset`` (short at EOF);
        never a byte of a file that has not authenticated."""
        try:
            return await self._read(file_index, offset, size)
        except IntegrityError:
            self.stats.integrity_failures += 1
            raise
        finally:
            if self.after_read is not None:
                self.after_read()

    async def _read(self, file_index: int, offset: int, size: int) -> bytes | memoryview:
        started = time.perf_counter()
        entry = self.listing.files[file_index]
        if entry.plain:
            length = max(0, min(size, entry.size - offset))
            result = await self._run(self.store.read_range, entry.name, offset, length)
        else:
            done = await self._authenticated(file_index)
            chunks = entry.parts.chunks.chunks_for_range(offset, size)
            if not chunks:
                return b""
            end = min(offset + size, entry.size)
            pieces = []
            for chunk in chunks:
                span = await self._chunk(file_index, chunk, done)
                start = max(offset, span.offset) - span.offset
                pieces.append(memoryview(span.plaintext)[start : end - span.offset])
            result = pieces[0].toreadonly() if len(pieces) == 1 else b"".join(pieces)
        self.stats.bytes_read += len(result)
        self.stats.read_seconds.observe(time.perf_counter() - started)
        return result

    async def _chunk(self, file_index: int, chunk: int, done: Authenticated) -> PlainSpan:
        span = self.cache.find(file_index, chunk)
        if span is not None:
            return span
        return await self._chunks.run(
            (file_index, chunk), lambda: self._fetch(file_index, chunk, done)
        )

    async def _fetch(self, file_index: int, chunk: int, done: Authenticated) -> PlainSpan:
        try:
            plaintext = await self._run(self._open_chunk, file_index, chunk, done)
        except IntegrityError as exc:  # changed since the file authenticated
            key = (file_index, chunk)
            if key not in self._rejected and len(self._rejected) < MAX_REPORTED_CHUNKS:
                self._rejected.add(key)
                path = quote(self._path(file_index))
                log.error("event=chunk_rejected path=%s reason=%s", path, quote(exc))
            raise
        self.stats.store_requests += 1
        self.stats.chunks_decrypted += 1
        self.stats.bytes_decrypted += len(plaintext)
        offset = self.listing.files[file_index].parts.chunks.chunk_offset(chunk)
        span = PlainSpan(file_index, chunk, chunk + 1, offset, plaintext)
        self.cache.put(span)
        return span

    def _open_chunk(self, file_index: int, chunk: int, done: Authenticated) -> bytes:
        return open_chunk(self.store, self.listing.files[file_index], done, chunk)

    async def _run(self, function: Callable, *args: object):
        try:
            if self._inline:
                return function(*args)
            return await run_in_thread(lambda: function(*args), self._limiter)
        except StoreError:
            self.stats.store_errors += 1
            raise
