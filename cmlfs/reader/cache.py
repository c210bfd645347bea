"""ChunkCache (byte budget, LRU) and SingleFlight (one computation per key).

The cache holds authenticated plaintext only: the reader inserts a chunk after
it opened successfully, never before.
"""

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class ChunkCache:
    """A least-recently-used map of chunk plaintexts whose total size stays within a budget."""

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError("cache budget must not be negative")
        self.budget = budget
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is cached, without counting a hit or a miss or reordering."""
        return key in self._entries

    def get(self, key: Hashable) -> bytes | None:
        value = self._entries.get(key)
        if value is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: bytes) -> None:
        if len(value) > self.budget:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._entries[key] = value
        self.used += len(value)
        while self.used > self.budget:
            _, evicted = self._entries.popitem(last=False)
            self.used -= len(evicted)
            self.evictions += 1


class _Call(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[T]):
    """Concurrent callers of ``run`` with one key share the first caller's result or error."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    def busy(self, key: Hashable) -> bool:
        """Whether a computation for ``key`` is running now."""
        return key in self._calls

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
