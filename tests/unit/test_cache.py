"""ChunkCache budget/LRU and SingleFlight sharing, without stores or FUSE."""

import pytest
import trio

from cmlfs.reader.cache import ChunkCache, SingleFlight


def test_cache_keeps_within_budget_and_evicts_least_recently_used():
    cache = ChunkCache(budget=300)
    for key in "abc":
        cache.put(key, bytes(100))
    assert cache.get("a") is not None  # "a" becomes the most recent
    cache.put("d", bytes(100))
    assert cache.used == 300
    assert cache.get("b") is None
    assert [k for k in "acd" if cache.get(k) is not None] == ["a", "c", "d"]
    assert cache.evictions == 1


def test_cache_ignores_values_larger_than_the_budget():
    cache = ChunkCache(budget=10)
    cache.put("big", bytes(11))
    assert cache.get("big") is None
    assert cache.used == 0


def test_cache_replacing_a_key_keeps_accounting_exact():
    cache = ChunkCache(budget=100)
    cache.put("k", bytes(60))
    cache.put("k", bytes(30))
    assert cache.used == 30
    assert len(cache) == 1


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
