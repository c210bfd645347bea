"""Retry policy and the ciphertext disk cache (atomic entries, budget, recovery)."""

import pytest

from cmlfs.errors import StoreError
from cmlfs.stores.base import ObjectMissing
from cmlfs.stores.diskcache import DiskCache
from cmlfs.stores.retry import RetryPolicy, TransientStoreError

BLOB = "blobs/" + "0f" * 32


def test_transient_failures_are_retried_then_give_up():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientStoreError("server answered 503")
        return b"ok"

    policy = RetryPolicy(attempts=3, base_delay=0.001)
    assert policy.call("x", flaky) == b"ok" and len(calls) == 3
    assert policy.stats.retries == 2  # counted by the store layer, not matched in its logs
    calls.clear()
    with pytest.raises(StoreError, match="gave up after 2 attempts") as failed:
        RetryPolicy(attempts=2, base_delay=0.001).call("x", lambda: flaky() and flaky())
    assert not isinstance(failed.value, TransientStoreError)


def test_permanent_failures_are_not_retried_and_keep_their_type():
    calls = []

    def missing():
        calls.append(1)
        raise ObjectMissing("not found")

    with pytest.raises(ObjectMissing, match="blobs/x: not found"):
        RetryPolicy(attempts=5, base_delay=0.001).call("blobs/x", missing)
    assert len(calls) == 1


def test_backoff_is_jittered_and_bounded():
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    delays = [policy.delay(4) for _ in range(50)]
    assert all(0.4 <= d <= 0.8 for d in delays) and len(set(delays)) > 1
    assert all(0.5 <= policy.delay(20) <= 1.0 for _ in range(20))


def test_disk_cache_round_trip_and_budget(tmp_path):
    cache = DiskCache(tmp_path / "c", budget=250)
    assert cache.get(BLOB, 0, 100) is None
    cache.put(BLOB, 0, 100, b"a" * 100)
    cache.put(BLOB, 100, 100, b"b" * 100)
    assert cache.get(BLOB, 0, 100) == b"a" * 100  # now the most recently used
    cache.put(BLOB, 200, 100, b"c" * 100)  # evicts the least recently used entry
    assert cache.get(BLOB, 100, 100) is None
    assert cache.get(BLOB, 0, 100) == b"a" * 100
    assert cache.used <= 250
    reopened = DiskCache(tmp_path / "c", budget=250)
    assert reopened.get(BLOB, 200, 100) == b"c" * 100


def test_disk_cache_never_serves_partial_or_damaged_entries(tmp_path):
    root = tmp_path / "c"
    cache = DiskCache(root, budget=1000)
    cache.put(BLOB, 0, 10, b"0123456789")
    (root / ".tmp-deadbeef").write_bytes(b"left by a crash")
    entry = next(p for p in root.iterdir() if not p.name.startswith("."))
    entry.write_bytes(b"01234")  # damaged outside the cache's control
    reopened = DiskCache(root, budget=1000)
    assert not (root / ".tmp-deadbeef").exists()
    assert reopened.get(BLOB, 0, 10) is None
    assert not entry.exists()


def test_disk_cache_holds_only_blobs(tmp_path):
    cache = DiskCache(tmp_path / "c", budget=1000)
    with pytest.raises(StoreError):
        cache.put("manifest.cmlfs", 0, 3, b"abc")
    with pytest.raises(StoreError):
        cache.get("../escape", 0, 3)
