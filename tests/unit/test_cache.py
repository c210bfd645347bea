"""ChunkCache budget/LRU and SingleFlight sharing, without stores or FUSE."""

import pytest
import trio

from cmlfs.reader.cache import ChunkCache, PlainSpan, SealedSpan, SingleFlight


def span(first: int, end: int, file_index: int = 0, chunk: int = 100) -> PlainSpan:
    return PlainSpan(file_index, first, end, first * chunk, bytearray(chunk * (end - first)))


def test_cache_keeps_within_budget_and_evicts_least_recently_used_spans():
    cache = ChunkCache(budget=600)
    a, b, c = span(0, 2), span(2, 4), span(10, 12)
    for s in (a, b, c):
        cache.put(s)
    assert cache.find(0, 1) is a  # "a" becomes the most recent
    cache.put(span(20, 22))
    assert cache.used == 600
    assert cache.find(0, 2) is None and cache.find(0, 3) is None  # "b" went, whole
    assert cache.find(0, 0) is a and cache.find(0, 11) is c
    assert cache.evictions == 1
    assert len(cache) == 3


def test_every_chunk_of_a_span_finds_it_and_files_are_kept_apart():
    cache = ChunkCache(budget=10_000)
    s = span(4, 9)
    cache.put(s)
    assert all(cache.find(0, chunk) is s for chunk in range(4, 9))
    assert cache.find(0, 3) is None and cache.find(0, 9) is None
    assert cache.find(1, 5) is None
    assert (0, 8) in cache and (1, 8) not in cache


def test_cache_ignores_spans_larger_than_the_budget():
    cache = ChunkCache(budget=10)
    cache.put(span(0, 1))
    assert cache.find(0, 0) is None
    assert cache.used == 0


def test_a_span_replacing_cached_chunks_keeps_accounting_exact():
    cache = ChunkCache(budget=1000)
    cache.put(span(0, 2))
    cache.put(span(1, 3))
    assert cache.used == 200
    assert len(cache) == 1
    assert (0, 0) not in cache and (0, 2) in cache


def sealed(buffer: memoryview, first: int, end: int, chunk: int = 100) -> SealedSpan:
    """A span of the records of chunks ``first`` up to ``end`` cut from one fetched buffer."""
    return SealedSpan(0, first, end, first * chunk, buffer[first * chunk : end * chunk])


def test_record_spans_of_one_fetch_count_its_buffer_once_while_any_is_held():
    buffer = memoryview(bytes(800))  # one fetch of chunks 0..7
    cache = ChunkCache(budget=2000)
    pieces = [sealed(buffer, 0, 4), sealed(buffer, 4, 8)]
    for piece in pieces:
        cache.put(piece)
    assert cache.used == 800
    cache.put(span(0, 4))  # the first piece opened: its plaintext replaces it
    assert cache.used == 800 + 400  # the buffer lives on in the second piece
    cache.discard(pieces[1])
    assert cache.used == 400
    cache.discard(pieces[1])  # not held: nothing changes
    assert cache.used == 400 and len(cache) == 1


def test_record_spans_are_evicted_until_their_buffers_fit_the_budget():
    cache = ChunkCache(budget=1000)
    first, second = memoryview(bytes(800)), memoryview(bytes(800))
    cache.put(sealed(first, 0, 4))
    cache.put(sealed(first, 4, 8))
    cache.put(SealedSpan(1, 0, 4, 0, second[:400]))  # another file's fetch
    assert cache.used == 800  # both pieces of the first buffer went, not just one
    assert (0, 0) not in cache and (0, 4) not in cache and (1, 0) in cache
    assert cache.evictions == 2
    cache.put(sealed(memoryview(bytes(1200)), 0, 4))  # its buffer exceeds the budget
    assert (0, 0) not in cache and cache.used == 800


def test_single_flight_runs_once_for_concurrent_callers():
    calls = 0

    async def compute():
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)
        return b"value"

    async def main():
        flight: SingleFlight[bytes] = SingleFlight()
        results = []

        async def caller():
            results.append(await flight.run("key", compute))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(caller)
        return results

    assert trio.run(main) == [b"value"] * 10
    assert calls == 1


def test_single_flight_shares_the_error_and_does_not_remember_it():
    attempts = 0

    async def failing():
        nonlocal attempts
        attempts += 1
        await trio.sleep(0.01)
        raise ValueError("boom")

    async def main():
        flight: SingleFlight[bytes] = SingleFlight()
        errors = []

        async def caller():
            try:
                await flight.run("key", failing)
            except ValueError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(caller)
        assert errors == ["boom"] * 5
        with pytest.raises(ValueError):
            await flight.run("key", failing)

    trio.run(main)
    assert attempts == 2


def test_single_flight_waiter_takes_over_when_the_leader_is_cancelled():
    async def taken_over():
        return b"taken over"

    async def main():
        flight: SingleFlight[bytes] = SingleFlight()
        results = []
        leader_scope = trio.CancelScope()

        async def leader():
            with leader_scope:
                await flight.run("key", trio.sleep_forever)

        async def waiter():
            results.append(await flight.run("key", taken_over))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.sleep(0.01)
            nursery.start_soon(waiter)
            await trio.sleep(0.01)
            leader_scope.cancel()
        return results

    assert trio.run(main) == [b"taken over"]
