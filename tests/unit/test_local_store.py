"""The folder store's O_DIRECT reads: right bytes, no page cache, and a fallback where the
filesystem refuses O_DIRECT (every store's contract: tests/e2e/test_store_contract.py)."""

import ctypes
import errno
import mmap
import os
from pathlib import Path

import pytest

from cmlfs.errors import StoreError
from cmlfs.stores import LocalStore
from cmlfs.stores.local import DIRECT_MIN_BYTES

BLOB = "blobs/" + "ab" * 32
SIZE = 3 * 1024 * 1024 + 1234  # not a whole number of blocks


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(SIZE)
    path = tmp_path / BLOB
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp_path, data


def cached_pages(path: Path) -> int:
    """How many of ``path``'s pages are in the page cache (mincore over a mapping of it that
    touches none)."""
    size = path.stat().st_size
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        anchor = ctypes.c_char.from_buffer(m)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), size, vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore failed")
        del anchor
        return sum(v & 1 for v in vector)


def drop_from_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def supports_direct(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def test_a_large_blob_read_bypasses_the_page_cache_and_reads_the_right_bytes(folder):
    root, data = folder
    if not supports_direct(root / BLOB):
        pytest.skip("this filesystem has no O_DIRECT")
    drop_from_cache(root / BLOB)
    if cached_pages(root / BLOB):
        pytest.skip("the page cache kept the blob after POSIX_FADV_DONTNEED")
    store = LocalStore(root)
    ranges = [(88, 16 * 65564), (5000, DIRECT_MIN_BYTES), (SIZE - 70001, 70001), (0, SIZE)]
    for offset, length in ranges:
        got = store.read_range(BLOB, offset, length)
        assert got == data[offset : offset + length]
        assert isinstance(got, memoryview) and got.readonly
    assert cached_pages(root / BLOB) == 0
    store.read_range(BLOB, 0, 88)  # a small read (a header) goes through the cache
    assert cached_pages(root / BLOB) > 0
    store.close()


def test_a_range_past_the_end_of_a_blob_cut_short_is_refused(folder):
    root, data = folder
    store = LocalStore(root)
    assert store.read_range(BLOB, 0, 65536) == data[:65536]
    os.truncate(root / BLOB, SIZE // 2)
    with pytest.raises(StoreError, match="shorter than expected"):
        store.read_range(BLOB, SIZE // 2 - 4096, 65536)
    store.close()


def test_where_o_direct_is_refused_reads_go_through_the_page_cache(folder, monkeypatch):
    root, data = folder
    real_open, direct_opens = os.open, []

    def refusing_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            direct_opens.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    store = LocalStore(root)
    for offset, length in ((88, 1 << 20), (4096, 1 << 20)):
        got = store.read_range(BLOB, offset, length)
        assert got == data[offset : offset + length]
        assert isinstance(got, bytes)
    assert len(direct_opens) == 1, "the store asked for O_DIRECT again after a refusal"
    store.close()
