"""Page-cache warm-up (--warm-up) through a real mount: the pages it pushes hold exactly the
plaintext, a chunk that fails authentication is never pushed (EIO through read() and
mmap), it can be turned off, and a daemon stops cleanly in the middle of one."""

import ctypes
import errno
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmlfs.format.layout import HEADER_LEN, RECORD_OVERHEAD
from cmlfs.manifest import MANIFEST_NAME, open_manifest
from tests.conftest import daemon_pid, mounted, run_cli
from tests.deploy.conftest import metrics, status_url

pytestmark = pytest.mark.fuse

MIB = 1 << 20
CHUNK = 4096
BAD_CHUNK = 2 * MIB // CHUNK + 17  # in the third MiB: the warm-up's third piece


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A store of one 4 MiB file in 4 KiB chunks, its key and its plaintext."""
    root = tmp_path_factory.mktemp("warmup")
    (root / "src").mkdir()
    data = os.urandom(4 * MIB)
    (root / "src" / "weights.bin").write_bytes(data)
    key = root / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", root / "src", root / "store", "--key-file", key, "--chunk-size", "4K")
    manifest = open_manifest((root / "store" / MANIFEST_NAME).read_bytes(), key.read_bytes())
    blob = root / "store" / manifest.files[0].blob_name
    return root / "store", key, data, blob


def overwrite(blob: Path, offset: int, data: bytes) -> None:
    """Change the blob in place (the store keeps its descriptor open)."""
    with open(blob, "r+b") as f:
        f.seek(offset)
        f.write(data)


def wait_for(url: str, name: str, value: int) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while (seen := metrics(url))[name] != value:
        assert time.monotonic() < deadline, f"{name} = {seen[name]}, not {value}"
        time.sleep(0.02)
    return seen


MAPPED_READ = """
import mmap, sys
with open(sys.argv[1], "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
    start = int(sys.argv[2])
    sys.stdout.buffer.write(m[start : start + int(sys.argv[3])])
"""


def mapped_read(path: Path, offset: int, size: int) -> subprocess.CompletedProcess:
    """Bytes at ``offset`` read through mmap in a child (a failed page kills it: SIGBUS)."""
    args = [sys.executable, "-c", MAPPED_READ, str(path), str(offset), str(size)]
    return subprocess.run(args, capture_output=True, timeout=60)


def test_pushed_pages_hold_the_plaintext(model, tmp_path):
    """Once the warm-up pushed the file, reads never reach the daemon: with the whole blob
    then zeroed and no chunk cache, any read that did would fail; every byte still
    equals the plaintext through read() and mmap. Another process dropping the page cache
    in between would force a read through the daemon, so up to three mounts are tried."""
    store, key, data, blob = model
    original = blob.read_bytes()
    args = ("--key-file", key, "--cache-size", "0", "--http", "127.0.0.1:0")
    try:
        for attempt in range(3):
            overwrite(blob, 0, original)
            with mounted(store, tmp_path / f"mnt{attempt}", *args) as mnt:
                url = status_url(mnt)
                with open(mnt / "weights.bin", "rb") as f:
                    wait_for(url, "cmlfs_warmed_bytes_total", len(data))
                    overwrite(blob, HEADER_LEN, bytes(len(original) - HEADER_LEN))
                    try:
                        read = os.pread(f.fileno(), len(data), 0)
                    except OSError as exc:
                        assert exc.errno == errno.EIO
                        continue  # the page cache was dropped: try again
                    mapped = mapped_read(mnt / "weights.bin", 0, len(data))
                    if mapped.returncode == -signal.SIGBUS:
                        continue
                after = metrics(url)
            assert read == data and mapped.stdout == data
            assert after["cmlfs_read_bytes_total"] == 0
            assert after["cmlfs_warmed_bytes_total"] == len(data)
            return
        pytest.fail("the page cache was dropped under every attempt")
    finally:
        overwrite(blob, 0, original)


@pytest.mark.expect_log("event=chunk_rejected")
def test_a_tampered_chunk_is_never_pushed(model, tmp_path):
    """The warm-up skips the piece holding a damaged chunk and pushes the rest; the damaged
    chunk then reads as EIO through read() and kills an mmap reader with SIGBUS, its
    neighbours read as the plaintext."""
    store, key, data, blob = model
    original = blob.read_bytes()
    record = HEADER_LEN + BAD_CHUNK * (CHUNK + RECORD_OVERHEAD)
    overwrite(blob, record + 100, bytes([original[record + 100] ^ 1]))
    try:
        args = ("--key-file", key, "--cache-size", "0", "--http", "127.0.0.1:0")
        with mounted(store, tmp_path / "mnt", *args) as mnt:
            url = status_url(mnt)
            path = mnt / "weights.bin"
            with open(path, "rb") as f:
                seen = wait_for(url, "cmlfs_warmed_bytes_total", 3 * MIB)
                assert seen["cmlfs_authentication_failures_total"] >= 1
                bad = BAD_CHUNK * CHUNK
                with pytest.raises(OSError) as failed:
                    os.pread(f.fileno(), CHUNK, bad)
                assert failed.value.errno == errno.EIO
                result = mapped_read(path, bad, CHUNK)
                assert result.returncode == -signal.SIGBUS and result.stdout == b""
                for offset in (0, bad - CHUNK, bad + CHUNK, 3 * MIB):
                    assert os.pread(f.fileno(), CHUNK, offset) == data[offset : offset + CHUNK]
                    assert mapped_read(path, offset, CHUNK).stdout == data[offset : offset + CHUNK]
    finally:
        overwrite(blob, 0, original)


def cached(path: Path, size: int) -> bytes:
    """Per page of the file's first ``size`` bytes, 1 if it is in the page cache, else 0
    (mincore on a mapping of it, which reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    pages = (ctypes.c_ubyte * (size // mmap.PAGESIZE))()
    with open(path, "rb") as f:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    assert address != ctypes.c_void_p(-1).value, os.strerror(ctypes.get_errno())
    try:
        assert libc.mincore(address, size, pages) == 0, os.strerror(ctypes.get_errno())
    finally:
        libc.munmap(address, size)
    return bytes(page & 1 for page in pages)


def test_pushes_go_on_after_the_furthest_read(tmp_path):
    """A file the server has read further into is warmed from the end of that read on, not
    from its start: the pages after the read are pushed first. With the warm-up capped at
    the first file and one piece more, the second file's one piece is the MiB after the
    server's read, and its first two MiB stay out of the page cache. Another process
    dropping the page cache in between would empty the rest, so up to three mounts are
    tried."""
    (tmp_path / "src").mkdir()
    first, second = os.urandom(64 * MIB), os.urandom(4 * MIB)
    (tmp_path / "src" / "a.bin").write_bytes(first)
    (tmp_path / "src" / "b.bin").write_bytes(second)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", tmp_path / "src", tmp_path / "store", "--key-file", key)
    limit = len(first) + MIB
    args = ("--key-file", key, "--warm-up", str(limit), "--http", "127.0.0.1:0")
    per_mib = MIB // mmap.PAGESIZE
    for attempt in range(3):
        with mounted(tmp_path / "store", tmp_path / f"mnt{attempt}", *args) as mnt:
            url = status_url(mnt)
            with open(mnt / "a.bin", "rb"), open(mnt / "b.bin", "rb") as b:
                # b.bin waits behind a.bin's 64 MiB; no readahead: the kernel reads 1 MiB
                os.posix_fadvise(b.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
                assert os.pread(b.fileno(), MIB, 2 * MIB) == second[2 * MIB : 3 * MIB]
                wait_for(url, "cmlfs_warmed_bytes_total", limit)
                pages = cached(mnt / "b.bin", len(second))
        assert pages[: 2 * per_mib] == bytes(2 * per_mib)  # never read or pushed
        if pages[2 * per_mib :] == b"\x01" * (2 * per_mib):  # read, then pushed
            return
    pytest.fail("the page cache was dropped under every attempt")


def test_warm_up_off(model, tmp_path):
    store, key, data, _ = model
    args = ("--key-file", key, "--warm-up", "0", "--http", "127.0.0.1:0")
    with mounted(store, tmp_path / "mnt", *args) as mnt:
        assert (mnt / "weights.bin").read_bytes() == data
        after = metrics(status_url(mnt))
    assert after["cmlfs_warmed_bytes_total"] == 0
    assert after["cmlfs_read_bytes_total"] == len(data)


def test_warm_up_with_workers_is_refused(model, tmp_path):
    store, key, _, _ = model
    (tmp_path / "mnt").mkdir()
    args = ("--key-file", key, "--workers", "2", "--warm-up", "1G")
    result = run_cli("mount", store, tmp_path / "mnt", *args, check=False)
    assert result.returncode != 0
    assert result.stderr == (
        "cmlfs: error: --warm-up runs in one process: leave it out with --workers\n"
    )


def test_sigterm_in_the_middle_of_a_warm_up_unmounts(tmp_path):
    """A daemon asked to stop while it pushes a large file stops its warm-up first and
    unmounts, while a reader is still faulting pages in."""
    (tmp_path / "src").mkdir()
    data = os.urandom(64 * MIB)
    (tmp_path / "src" / "big.bin").write_bytes(data)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", tmp_path / "src", tmp_path / "store", "--key-file", key)
    with mounted(tmp_path / "store", tmp_path / "mnt", "--key-file", key) as mnt:
        pid = daemon_pid(mnt)
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
            assert m[32 * MIB : 33 * MIB] == data[32 * MIB : 33 * MIB]
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while os.path.ismount(mnt):
                assert time.monotonic() < deadline, "the daemon did not unmount"
                time.sleep(0.05)
        with pytest.raises(OSError) as closed:  # the daemon is gone: the flush has no answer
            os.close(fd)
        assert closed.value.errno == errno.ENOTCONN
