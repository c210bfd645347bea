"""A file of 1 GiB read sequentially through a mount, with the daemon's memory watched."""

import hashlib
import os
import threading

import pytest

from tests.conftest import daemon_pid, mounted, rss_bytes, run_cli

pytestmark = pytest.mark.fuse

GIB = 1 << 30
CACHE_BUDGET = 64 << 20
# Beyond the cache budget the daemon holds the interpreter, libraries and in-flight request
# buffers (up to max_background 1 MiB requests with their ciphertext and plaintext).
RSS_MARGIN = 100 << 20


def test_one_gib_file_reads_back_and_daemon_memory_stays_within_budget(tmp_path, key_file):
    src = tmp_path / "model"
    src.mkdir()
    expected = hashlib.sha256()
    with open(src / "weights.bin", "wb") as out:
        for _ in range(GIB >> 20):
            block = os.urandom(1 << 20)
            expected.update(block)
            out.write(block)
    run_cli("encrypt", src, tmp_path / "store", "--key-file", key_file)
    os.unlink(src / "weights.bin")  # keep one GiB on disk at a time

    mnt = tmp_path / "mnt"
    with mounted(
        tmp_path / "store", mnt, "--key-file", key_file, "--cache-size", str(CACHE_BUDGET)
    ):
        pid = daemon_pid(mnt)
        peak = rss_bytes(pid)
        done = threading.Event()

        def watch() -> None:
            nonlocal peak
            while not done.wait(0.02):
                peak = max(peak, rss_bytes(pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        actual = hashlib.sha256()
        total = 0
        try:
            with open(mnt / "weights.bin", "rb") as f:
                while block := f.read(4 << 20):
                    actual.update(block)
                    total += len(block)
        finally:
            done.set()
            watcher.join()
    assert total == GIB
    assert actual.hexdigest() == expected.hexdigest()
    print(f"daemon peak RSS {peak >> 20} MiB with a {CACHE_BUDGET >> 20} MiB cache budget")
    assert peak < CACHE_BUDGET + RSS_MARGIN
