"""ChunkCache (byte budget, LRU over spans of chunks) and SingleFlight (one computation per key).

The cache holds authenticated plaintext, and records fetched ahead of readers:
the reader inserts a plaintext span after every chunk of it opened successfully,
and opens a span of records before serving any byte of it, replacing it with its
plaintext or dropping it if a chunk fails. A span covers consecutive chunks of
one file as one fetch produced them; every chunk maps to the span that holds it,
so a read finds its bytes with one lookup per span and can answer with a view of
one buffer. Spans never overlap: the reader fetches only chunks that are neither
cached nor in flight. What the reader keeps besides (format 2's checked hash
material) is counted against the same budget with ``hold``.
"""

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


@dataclass(eq=False)
class PlainSpan:
    """The authenticated plaintext of chunks ``first`` up to ``end`` (exclusive) of file
    ``file_index``; ``offset`` is the plaintext offset of chunk ``first`` in the file."""

    file_index: int
    first: int
    end: int
    offset: int
    plaintext: bytearray


@dataclass(eq=False)
class SealedSpan:
    """The records of chunks ``first`` up to ``end`` (exclusive) of file ``file_index`` as
    fetched, not yet authenticated: a view of the buffer one fetch filled, which pieces of
    the same fetch share, with their checked leaf hashes in format 2. Never served: the
    reader opens it first, and once it has, ``opened`` leads to the PlainSpan of its
    plaintext (for readers still holding this span)."""

    file_index: int
    first: int
    end: int
    offset: int
    records: memoryview
    leaves: bytes | None = None
    opened: PlainSpan | None = None


# What the cache holds: plaintext, or records to open (a SealedSpan, opened or not yet).
Span = PlainSpan | SealedSpan


class ChunkCache:
    """Least-recently-used spans of chunks whose total size stays within a budget.

    A plaintext span counts its plaintext. Spans of records count the buffer they were
    cut from, once, for as long as any of them is held: the buffer lives that long.
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("cache budget must not be negative")
        self.budget = budget
        self.used = 0
        self.held = 0  # bytes the reader holds outside spans, part of ``used``
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._spans: OrderedDict[Span, None] = OrderedDict()
        self._chunks: dict[tuple[int, int], Span] = {}
        self._buffers: dict[int, int] = {}  # id of a fetched buffer -> spans held from it

    def __len__(self) -> int:
        """The number of spans held."""
        return len(self._spans)

    def __contains__(self, key: tuple[int, int]) -> bool:
        """Whether chunk ``(file_index, chunk)`` is cached, without counting or reordering."""
        return key in self._chunks

    def find(self, file_index: int, chunk: int) -> Span | None:
        """The span holding ``chunk`` of file ``file_index`` (now the most recently used),
        or None."""
        span = self._chunks.get((file_index, chunk))
        if span is None:
            self.misses += 1
            return None
        self._spans.move_to_end(span)
        self.hits += 1
        return span

    def put(self, span: Span) -> None:
        """Hold ``span``, evicting the least recently used spans beyond the budget."""
        if _charged_len(span) > self.budget - self.held:
            return
        for chunk in range(span.first, span.end):
            old = self._chunks.get((span.file_index, chunk))
            if old is not None:
                self._forget(old)
        for chunk in range(span.first, span.end):
            self._chunks[(span.file_index, chunk)] = span
        self._spans[span] = None
        self._charge(span, 1)
        self._evict()

    def hold(self, nbytes: int) -> None:
        """Count ``nbytes`` the reader keeps outside the cache against the budget (``-nbytes``
        once it lets them go), evicting spans to make room."""
        self.held += nbytes
        self.used += nbytes
        self._evict()

    def _evict(self) -> None:
        while self.used > self.budget and self._spans:
            self._forget(next(iter(self._spans)))
            self.evictions += 1

    def discard(self, span: Span) -> None:
        """Drop ``span`` if it is held."""
        if span in self._spans:
            self._forget(span)

    def _forget(self, span: Span) -> None:
        del self._spans[span]
        self._charge(span, -1)
        for chunk in range(span.first, span.end):
            del self._chunks[(span.file_index, chunk)]

    def _charge(self, span: Span, sign: int) -> None:
        """Count ``span`` in (``sign`` 1) or out (-1); a fetched buffer only with its
        first span in and its last span out."""
        if isinstance(span, SealedSpan):
            key = id(span.records.obj)
            held = self._buffers.get(key, 0) + sign
            if held:
                self._buffers[key] = held
            else:
                del self._buffers[key]
            if held != (1 if sign > 0 else 0):
                return
        self.used += sign * _charged_len(span)


def _charged_len(span: Span) -> int:
    """What holding ``span`` costs: its plaintext, or the whole buffer its records are in."""
    if isinstance(span, SealedSpan):
        return len(span.records.obj)
    return len(span.plaintext)


class _Call(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[T]):
    """Concurrent callers of ``run`` with one key share the first caller's result or error."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        while True:
            call = self._calls.get(key)
            if call is None:
                return await self._lead(key, compute)
            await call.done.wait()
            if call.error is not None:
                raise call.error
            if call.result is not None:
                return call.result
            # The leader was cancelled: nothing to share, so this caller leads a new call.

    async def _lead(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        call: _Call[T] = _Call()
        self._calls[key] = call
        try:
            call.result = await compute()
            return call.result
        except Exception as exc:
            call.error = exc
            raise
        finally:
            del self._calls[key]
            call.done.set()
