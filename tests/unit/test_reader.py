"""ModelReader over a LocalStore: reads, single decryption, integrity, budget (no FUSE)."""

import functools
import logging
import os
import shlex
import threading
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmlfs.errors import IntegrityError
from cmlfs.format.hashlist import HashLayout
from cmlfs.format.layout import HEADER_LEN, RECORD_OVERHEAD, ChunkLayout
from cmlfs.manifest import MANIFEST_NAME, Manifest, open_manifest
from cmlfs.publish import EncryptSettings, encrypt_model
from cmlfs.reader import ModelReader, SealedSpan
from cmlfs.reader.reader import run_in_thread
from cmlfs.reader.tuning import tuned_reader
from cmlfs.stores import LocalStore

CHUNK = 4096
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    src = root / "src"
    src.mkdir()
    contents = {"big.bin": os.urandom(40 * CHUNK + 17), "small.txt": b"hello", "empty": b""}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    store = root / "store"
    encrypt_model(src, store, KEY, EncryptSettings(chunk_size=CHUNK))
    return store, contents


def open_reader(store: Path, **kwargs) -> tuple[ModelReader, dict[str, int]]:
    local = LocalStore(store)
    manifest = open_manifest(local.read_all(MANIFEST_NAME), KEY)
    reader = ModelReader(manifest, local, KEY, **kwargs)
    return reader, {f.path: i for i, f in enumerate(manifest.files)}


def read(reader: ModelReader, index: int, offset: int, size: int) -> bytes:
    return trio.run(reader.read, index, offset, size)


def test_whole_files_read_back_exactly(model):
    store, contents = model
    reader, index = open_reader(store)
    for name, data in contents.items():
        assert read(reader, index[name], 0, len(data) + 100) == data


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(offset=st.integers(0, 41 * CHUNK), size=st.integers(0, 12 * CHUNK))
def test_random_ranges_equal_the_plaintext(model, offset, size):
    store, contents = model
    reader, index = open_reader(store, cache_bytes=3 * CHUNK, run_bytes=4 * CHUNK)
    assert (
        read(reader, index["big.bin"], offset, size) == contents["big.bin"][offset : offset + size]
    )


def test_concurrent_readers_of_one_chunk_decrypt_it_once(model):
    store, contents = model
    reader, index = open_reader(store, run_bytes=CHUNK)

    async def main():
        results = []

        async def one():
            results.append(await reader.read(index["big.bin"], 5 * CHUNK + 10, 100))

        async with trio.open_nursery() as nursery:
            for _ in range(16):
                nursery.start_soon(one)
        return results

    results = trio.run(main)
    assert results == [contents["big.bin"][5 * CHUNK + 10 : 5 * CHUNK + 110]] * 16
    assert reader.stats.chunks_decrypted == 1
    assert reader.stats.store_requests == 1


def test_neighbouring_reads_do_not_decrypt_a_chunk_twice(model):
    store, contents = model
    reader, index = open_reader(store, run_bytes=8 * CHUNK)
    big = index["big.bin"]
    for offset in range(0, 40 * CHUNK, 3000):
        assert read(reader, big, offset, 3000) == contents["big.bin"][offset : offset + 3000]
    assert reader.stats.chunks_decrypted == 41  # every chunk, once


def test_cache_stays_within_its_budget(model):
    store, contents = model
    reader, index = open_reader(store, cache_bytes=5 * CHUNK, run_bytes=2 * CHUNK)
    big = contents["big.bin"]
    for offset in range(0, len(big), 3000):
        assert read(reader, index["big.bin"], offset, 3000) == big[offset : offset + 3000]
        assert 0 < reader.cache.used <= 5 * CHUNK
    assert reader.cache.evictions > 0


@pytest.mark.expect_log("event=chunk_rejected")
def test_damaged_chunk_fails_only_reads_that_touch_it(model, tmp_path):
    store, contents = model
    damaged = tmp_path / "store"
    os.system(f"cp -r {store} {damaged}")
    reader, index = open_reader(damaged, run_bytes=CHUNK)
    blob = damaged / reader.manifest.files[index["big.bin"]].blob_name
    raw = bytearray(blob.read_bytes())
    raw[HEADER_LEN + 7 * (CHUNK + RECORD_OVERHEAD) + 100] ^= 1
    blob.write_bytes(raw)
    big = index["big.bin"]
    with pytest.raises(IntegrityError, match=r"big\.bin: chunk 7"):
        read(reader, big, 7 * CHUNK + 5, 1)
    with pytest.raises(IntegrityError):
        read(reader, big, 6 * CHUNK, 2 * CHUNK)
    assert read(reader, big, 0, 7 * CHUNK) == contents["big.bin"][: 7 * CHUNK]
    assert read(reader, big, 8 * CHUNK, CHUNK) == contents["big.bin"][8 * CHUNK : 9 * CHUNK]
    assert (big, 7) not in reader.cache
    assert reader.stats.integrity_failures == 2


@pytest.mark.expect_log("event=chunk_rejected")
def test_a_rejected_chunk_is_logged_with_its_reason_as_one_quoted_field(model, tmp_path, caplog):
    """The reason (free text with spaces) is one logfmt value, not words that run on."""
    store, _ = model
    damaged = tmp_path / "store"
    os.system(f"cp -r {store} {damaged}")
    reader, index = open_reader(damaged)
    big = index["big.bin"]
    blob = damaged / reader.manifest.files[big].blob_name
    raw = bytearray(blob.read_bytes())
    raw[HEADER_LEN + 3 * (CHUNK + RECORD_OVERHEAD) + 100] ^= 1
    blob.write_bytes(raw)
    caplog.set_level(logging.ERROR, "cmlfs.reader")
    with pytest.raises(IntegrityError) as caught:
        read(reader, big, 3 * CHUNK, 10)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=")]
    assert lines
    for line in lines:
        fields = dict(field.split("=", 1) for field in shlex.split(line))
        assert set(fields) == {"event", "reason"}, line
        assert fields["reason"] == str(caught.value)


@pytest.mark.expect_log("event=integrity_failed")
@pytest.mark.parametrize("change", ["truncate", "extend", "header"])
def test_blob_that_disagrees_with_the_manifest_is_refused(model, tmp_path, change):
    store, _ = model
    damaged = tmp_path / "store"
    os.system(f"cp -r {store} {damaged}")
    reader, index = open_reader(damaged)
    blob = damaged / reader.manifest.files[index["big.bin"]].blob_name
    raw = bytearray(blob.read_bytes())
    if change == "truncate":
        raw = raw[:-RECORD_OVERHEAD]
    elif change == "extend":
        raw += b"\0" * 64
    else:
        raw[20] ^= 0x80
    blob.write_bytes(raw)
    with pytest.raises(IntegrityError):
        read(reader, index["big.bin"], 0, 10)
    assert read(reader, index["small.txt"], 0, 10) == b"hello"


@pytest.mark.expect_log("event=chunk_rejected")
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "threads"])
def test_inline_and_threaded_readers_agree_on_bytes_and_failures(model, tmp_path, inline):
    store, contents = model
    damaged = tmp_path / "store"
    os.system(f"cp -r {store} {damaged}")
    reader, index = open_reader(damaged, run_bytes=4 * CHUNK, inline=inline)
    blob = damaged / reader.manifest.files[index["big.bin"]].blob_name
    raw = bytearray(blob.read_bytes())
    raw[HEADER_LEN + 9 * (CHUNK + RECORD_OVERHEAD) + 40] ^= 2
    blob.write_bytes(raw)
    big, plain = index["big.bin"], contents["big.bin"]
    assert read(reader, big, 0, 9 * CHUNK) == plain[: 9 * CHUNK]
    assert read(reader, big, 10 * CHUNK, 5 * CHUNK) == plain[10 * CHUNK : 15 * CHUNK]
    with pytest.raises(IntegrityError, match=r"chunk 9"):
        read(reader, big, 9 * CHUNK + 100, 10)
    assert (big, 9) not in reader.cache  # the damaged chunk is never cached
    assert (big, 0) in reader.cache


def test_a_read_within_one_run_is_a_read_only_view_without_a_copy(model):
    store, contents = model
    reader, index = open_reader(store, run_bytes=4 * CHUNK)
    data = read(reader, index["big.bin"], 100, 2 * CHUNK)
    assert isinstance(data, memoryview) and data.readonly
    assert data == contents["big.bin"][100 : 100 + 2 * CHUNK]


def test_a_random_read_opens_exactly_the_chunks_it_misses(model):
    store, contents = model
    reader, index = open_reader(store)  # default: no rounding up to runs
    big, plain = index["big.bin"], contents["big.bin"]
    assert read(reader, big, 5 * CHUNK + 7, 10) == plain[5 * CHUNK + 7 : 5 * CHUNK + 17]
    assert (reader.stats.chunks_decrypted, reader.stats.store_requests) == (1, 1)
    # Chunks 4..7 with 5 cached: 4 and 6..7 are fetched, as two spans around it.
    assert read(reader, big, 4 * CHUNK, 4 * CHUNK) == plain[4 * CHUNK : 8 * CHUNK]
    assert (reader.stats.chunks_decrypted, reader.stats.store_requests) == (4, 3)


def test_overlapping_concurrent_reads_share_the_chunks_in_flight(model):
    store, contents = model
    reader, index = open_reader(store, threads=4)  # fetches in threads: reads interleave
    big, plain = index["big.bin"], contents["big.bin"]
    ranges = [(0, 8), (4, 12), (2, 6), (10, 16), (0, 16)]

    async def main():
        results = {}

        async def one(first, end):
            data = await reader.read(big, first * CHUNK, (end - first) * CHUNK)
            results[first, end] = bytes(data)

        async with trio.open_nursery() as nursery:
            for first, end in ranges:
                nursery.start_soon(one, first, end)
        return results

    results = trio.run(main)
    assert results == {(a, b): plain[a * CHUNK : b * CHUNK] for a, b in ranges}
    assert reader.stats.chunks_decrypted == 16  # each chunk once, however the reads overlapped


def test_sequential_reads_prefetch_and_scattered_reads_do_not(model):
    store, contents = model
    plain = contents["big.bin"]

    async def reads(reader, offsets):
        for offset in offsets:
            assert await reader.read(big, offset, CHUNK) == plain[offset : offset + CHUNK]
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.2)  # let background fetches finish

    sequential, index = open_reader(store, threads=2, prefetch_bytes=1 << 20)
    big = index["big.bin"]
    trio.run(reads, sequential, [0, CHUNK, 2 * CHUNK])
    assert all((big, c) in sequential.cache for c in range(41))  # the rest of the file
    assert sequential.stats.chunks_decrypted == 41

    scattered, _ = open_reader(store, threads=2, prefetch_bytes=1 << 20)
    trio.run(reads, scattered, [0, 20 * CHUNK, 3 * CHUNK, 30 * CHUNK])
    assert scattered.stats.chunks_decrypted == 4


class CountingStore(LocalStore):
    """A folder store that records the length of every ranged read; those of format 2's
    hash material (from ``hashes_from`` on) in ``hash_lengths``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lengths: list[int] = []
        self.hash_lengths: list[int] = []
        self.hashes_from = 1 << 62

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        reads = self.hash_lengths if offset >= self.hashes_from else self.lengths
        reads.append(length)
        return super().read_range(name, offset, length)

    def count_hashes_of(self, manifest: Manifest) -> None:
        """Count reads past the records of the model's one file as hash material."""
        layout = ChunkLayout(manifest.chunk_size, manifest.files[0].size)
        self.hashes_from = HashLayout(layout).leaves_offset


MIB = 1 << 20


@pytest.fixture(scope="module")
def stream_model(tmp_path_factory):
    """A 24 MiB file in 64 KiB chunks: long enough for prefetch to reach its full window."""
    root = tmp_path_factory.mktemp("stream")
    (root / "src").mkdir()
    plain = os.urandom(24 * MIB)
    (root / "src" / "weights.bin").write_bytes(plain)
    encrypt_model(root / "src", root / "store", KEY, EncryptSettings(chunk_size=64 * 1024))
    return root / "store", plain


def streaming_reader(store_root: Path) -> tuple[ModelReader, CountingStore]:
    store = CountingStore(store_root)
    manifest = open_manifest(store.read_all(MANIFEST_NAME), KEY)
    store.count_hashes_of(manifest)
    reader = ModelReader(manifest, store, KEY, threads=4, prefetch_bytes=16 * MIB)
    store.lengths.clear()  # the manifest's read
    return reader, store


async def read_through(reader: ModelReader, plain: bytes, stop: int) -> None:
    """Sequential 1 MiB reads up to ``stop``, letting background fetches land after each."""
    for offset in range(0, stop, MIB):
        assert await reader.read(0, offset, MIB) == plain[offset : offset + MIB]
        await trio.testing.wait_all_tasks_blocked()


def test_a_long_sequential_stream_is_fetched_in_growing_requests_each_chunk_once(stream_model):
    """Requests start at one prefetch unit and grow to a quarter of the 16 MiB window; no
    chunk is fetched or decrypted twice and every byte reads back."""
    store_root, plain = stream_model
    reader, store = streaming_reader(store_root)
    trio.run(read_through, reader, plain, len(plain))
    record = 64 * 1024 + RECORD_OVERHEAD
    chunks = [length // record for length in store.lengths[1:]]  # after the blob header
    assert max(chunks) == 4 * MIB // (64 * 1024)
    assert chunks[:3] == [16, 16, 16]  # one prefetch unit while the window is small
    assert sum(chunks) == len(plain) // (64 * 1024)
    assert reader.stats.chunks_decrypted == len(plain) // (64 * 1024)


def test_spans_of_aligned_and_unaligned_reads_get_one_buffer_size(stream_model):
    """A 1 MiB read not aligned to chunks spans 17 chunks, an aligned one 16: both get a
    buffer of 17 chunks, so a buffer the LRU cache frees fits the next span (with two sizes
    a --workers process's heap grew with a stream's length). A small span keeps its own
    size; reads across spans, and the decrypted count, see only the chunks' bytes."""
    store_root, plain = stream_model
    local = LocalStore(store_root)
    manifest = open_manifest(local.read_all(MANIFEST_NAME), KEY)
    reader = tuned_reader(manifest, local, KEY, cache_bytes=64 * MIB, workers=2)
    chunk = 64 * 1024

    async def main():
        assert await reader.read(0, 0, MIB) == plain[:MIB]  # chunks 0-15
        unaligned = 3 * MIB + 4096  # chunks 48-64
        assert await reader.read(0, unaligned, MIB) == plain[unaligned : unaligned + MIB]
        assert await reader.read(0, 8 * MIB, 4096) == plain[8 * MIB : 8 * MIB + 4096]
        # Chunks 8-15 from the first span, then 16-23 fetched as a span of their own.
        assert await reader.read(0, MIB // 2, MIB) == plain[MIB // 2 : MIB // 2 + MIB]

    trio.run(main)
    lengths = [len(reader.cache.find(0, index).plaintext) for index in (0, 48, 128, 16)]
    assert lengths == [MIB + chunk, MIB + chunk, chunk, 8 * chunk]
    assert reader.stats.bytes_decrypted == (16 + 17 + 1 + 8) * chunk


def test_spans_of_large_chunks_keep_their_own_sizes(tmp_path: Path):
    """With 256 KiB chunks a read holds 4: padding every read-sized span to one size would
    leave up to a fifth of each buffer unused, so spans are made just as long as their
    chunks."""
    chunk = 256 * 1024
    (tmp_path / "src").mkdir()
    plain = os.urandom(4 * MIB)
    (tmp_path / "src" / "weights.bin").write_bytes(plain)
    encrypt_model(tmp_path / "src", tmp_path / "store", KEY, EncryptSettings(chunk_size=chunk))
    local = LocalStore(tmp_path / "store")
    manifest = open_manifest(local.read_all(MANIFEST_NAME), KEY)
    reader = tuned_reader(manifest, local, KEY, cache_bytes=64 * MIB, workers=2)

    async def main():
        assert await reader.read(0, 0, MIB) == plain[:MIB]  # chunks 0-3
        unaligned = 2 * MIB - 4096  # chunks 7-11
        assert await reader.read(0, unaligned, MIB) == plain[unaligned : unaligned + MIB]

    trio.run(main)
    lengths = [len(reader.cache.find(0, index).plaintext) for index in (0, 7)]
    assert lengths == [4 * chunk, 5 * chunk]


def test_records_fetched_ahead_are_opened_only_when_a_read_reaches_them(stream_model):
    """Prefetched records wait in the cache unopened: the chunks decrypted are the ones
    read, though the store has sent much more."""
    store_root, plain = stream_model
    reader, store = streaming_reader(store_root)
    trio.run(read_through, reader, plain, 4 * MIB)
    fetched = sum(store.lengths[1:]) // (64 * 1024 + RECORD_OVERHEAD)
    assert fetched >= 2 * 4 * MIB // (64 * 1024)  # 4 MiB read, at least as much ahead
    assert isinstance(reader.cache.find(0, fetched - 1), SealedSpan)  # still sealed
    assert reader.stats.chunks_decrypted == 4 * MIB // (64 * 1024)


class ThreadRecordingStore(CountingStore):
    """A counting folder store that also records which thread made each ranged read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.threads: list[int] = []

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        self.threads.append(threading.get_ident())
        return super().read_range(name, offset, length)


def test_a_folder_reader_reads_on_the_loop_and_prefetches_a_stream_in_threads(stream_model):
    """``tuned_reader`` for a folder in one process: a random read is fetched on the event
    loop's thread (no hand-off in its latency), a sequential stream is fetched ahead by
    worker threads; every byte reads back and no chunk is decrypted twice."""
    store_root, plain = stream_model
    store = ThreadRecordingStore(store_root)
    manifest = open_manifest(store.read_all(MANIFEST_NAME), KEY)
    reader = tuned_reader(manifest, store, KEY, cache_bytes=64 * MIB)
    loop = threading.get_ident()

    async def stream() -> None:
        assert await reader.read(0, 5 * MIB + 100, 4096) == plain[5 * MIB + 100 : 5 * MIB + 4196]
        await trio.testing.wait_all_tasks_blocked()
        assert set(store.threads) == {loop}, "a random read was handed to a thread"
        await read_through(reader, plain, len(plain))

    trio.run(stream)
    assert loop in store.threads[2:] and set(store.threads) - {loop}, "no fetch ran ahead"
    assert reader.stats.chunks_decrypted == len(plain) // (64 * 1024)


def test_a_read_over_a_run_the_cache_cannot_hold_fetches_it_once(stream_model):
    """With no cache (as ``cmlfs verify`` reads), a 4 MiB read of one 4 MiB run is one
    store request, not one per 1 MiB piece."""
    store_root, plain = stream_model
    store = CountingStore(store_root)
    manifest = open_manifest(store.read_all(MANIFEST_NAME), KEY)
    store.count_hashes_of(manifest)
    reader = ModelReader(manifest, store, KEY, cache_bytes=0, run_bytes=4 * MIB, threads=2)
    assert read(reader, 0, 0, 4 * MIB) == plain[: 4 * MIB]
    assert read(reader, 0, 4 * MIB, 4 * MIB) == plain[4 * MIB : 8 * MIB]
    assert len(store.lengths) == 1 + 1 + 2  # manifest, blob header, one per run


@pytest.mark.expect_log("event=chunk_rejected")
def test_a_damaged_chunk_fetched_ahead_fails_only_the_read_that_reaches_it(stream_model, tmp_path):
    """Prefetched records are authenticated when opened: the damaged chunk's read raises,
    every other byte of the stream reads back, and the damaged piece is not kept."""
    store_root, plain = stream_model
    damaged = tmp_path / "store"
    os.system(f"cp -r {store_root} {damaged}")
    reader, _ = streaming_reader(damaged)
    blob = damaged / reader.manifest.files[0].blob_name
    raw = bytearray(blob.read_bytes())
    bad = 200  # in the 13th MiB: fetched ahead, in a multi-piece request
    raw[HEADER_LEN + bad * (64 * 1024 + RECORD_OVERHEAD) + 50] ^= 1
    blob.write_bytes(raw)
    bad_mib = bad * 64 * 1024 // MIB

    async def stream():
        for offset in range(0, len(plain), MIB):
            if offset // MIB == bad_mib:
                with pytest.raises(IntegrityError, match=f"chunk {bad}"):
                    await reader.read(0, offset, MIB)
                assert (0, bad) not in reader.cache
            else:
                assert await reader.read(0, offset, MIB) == plain[offset : offset + MIB]
            await trio.testing.wait_all_tasks_blocked()

    trio.run(stream)
    assert reader.stats.integrity_failures == 1


def test_a_sequential_read_of_the_last_chunk_prefetches_nothing_past_the_end(model):
    store, contents = model
    reader, index = open_reader(store, threads=2, run_bytes=8 * CHUNK, prefetch_bytes=1 << 20)
    big, plain = index["big.bin"], contents["big.bin"]
    assert read(reader, big, 40 * CHUNK - 1, 1) == plain[40 * CHUNK - 1 : 40 * CHUNK]
    # Sequential: prefetch runs first; it must not claim a chunk after the last one.
    assert read(reader, big, 40 * CHUNK, CHUNK) == plain[40 * CHUNK :]


def test_run_in_thread_runs_off_the_loop_within_the_limiter_and_keeps_thread_names():
    """Results and exceptions come back; exactly ``limiter`` calls run at once (the
    barrier passes only when two threads are inside together); the worker thread's OS
    name is left alone (renaming it per call is what the helper avoids)."""
    loop_thread = threading.get_ident()
    running, peak, seen = 0, 0, []
    lock = threading.Lock()
    pair = threading.Barrier(2, timeout=10)

    def work(value: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text()
        seen.append((threading.get_ident(), comm))
        if value >= 0:
            pair.wait()
        with lock:
            running -= 1
        if value < 0:
            raise IntegrityError("refused")
        return value * 2

    async def main() -> list[int]:
        limiter = trio.CapacityLimiter(2)
        results: list[int] = []

        async def one(value: int) -> None:
            results.append(await run_in_thread(functools.partial(work, value), limiter))

        async with trio.open_nursery() as nursery:
            for value in range(6):
                nursery.start_soon(one, value)
        with pytest.raises(IntegrityError, match="refused"):
            await run_in_thread(functools.partial(work, -1), limiter)
        return sorted(results)

    assert trio.run(main) == [0, 2, 4, 6, 8, 10]
    assert peak == 2
    assert all(ident != loop_thread for ident, _ in seen)
    assert not any(" from " in comm for _, comm in seen)  # trio.to_thread names "fn from task"


def test_run_in_thread_holds_its_limiter_and_returns_when_cancelled_mid_call():
    """Cancelling the caller neither abandons the running thread nor frees its limiter
    token early: the call returns the thread's result once it ends."""
    release = threading.Event()

    async def main() -> None:
        limiter = trio.CapacityLimiter(1)
        results = []

        async def caller() -> None:
            with trio.move_on_after(0.05):
                results.append(await run_in_thread(lambda: release.wait(10) and "done", limiter))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await trio.sleep(0.3)  # the caller's deadline has passed; its thread still runs
            assert limiter.borrowed_tokens == 1 and results == []
            release.set()
        assert results == ["done"] and limiter.borrowed_tokens == 0

    trio.run(main)
