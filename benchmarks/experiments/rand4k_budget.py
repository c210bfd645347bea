"""Issue 20's random 4 KiB target, taken apart: what one cold random 4 KiB read costs in each
part of cmlfs's stack, measured alone, beside the whole mount and gocryptfs, on bench_read's
2 GiB workspace. Not product code: it shows which parts a faster read path would have to
replace, so a claim about the floor is a number, not a guess.

Parts (median microseconds per read of ``count`` random 4 KiB offsets, ``rounds`` rounds):
  fuse-null      the same pyfuse3 + trio stack serving a 2 GiB file whose reads are answered
                 at once with zeros: the kernel round trip plus pyfuse3's and trio's share
  disk-record    one O_DIRECT read of the aligned blocks around a 64 KiB record (68-72 KiB), what
                 a miss reads
  disk-4k        one O_DIRECT 4 KiB read at the record, what gocryptfs's 4 KiB blocks need
  reader-STORE   ModelReader.read of 4 KiB in this process, no FUSE: disk, decryption, leaf
                 hash and the reader's own bookkeeping
  cmlfs-STORE    the whole mount, with ``--warm-up 0`` (the warm-up would fill the page cache
                 between the open and the first read); gocryptfs for the ratio

Run as root after bench_read prepared its workspace:
  python -m benchmarks.experiments.rand4k_budget [ROUNDS] [COUNT]
"""

import errno
import mmap
import os
import random
import stat
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pyfuse3
import trio

from benchmarks import bench_read
from benchmarks.lib import GIB, cmlfs_mount, drop_caches, unmount, wait_for_mount
from cmlfs.format.header import BlobHeader
from cmlfs.format.layout import HEADER_LEN
from cmlfs.keys.file import FileKeySource
from cmlfs.model import open_model
from cmlfs.reader.tuning import tuned_reader

BLOCK = 4096
RECORD = 64 * 1024 + 4096  # a 64 KiB record with its nonce and tag fits in this much
NULL_SIZE = 2 * GIB
STORES = ("cmlfs-gcm-siv", "cmlfs-gcm")
T = TypeVar("T")


class NullFs(pyfuse3.Operations):
    """One read-only file, ``f``, of NULL_SIZE zeros, answered without any work."""

    zeros = bytes(1 << 20)

    async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
        attributes = pyfuse3.EntryAttributes()
        attributes.st_ino = inode
        attributes.entry_timeout = attributes.attr_timeout = 3600
        if inode == pyfuse3.ROOT_INODE:
            attributes.st_mode, attributes.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            attributes.st_mode, attributes.st_size = stat.S_IFREG | 0o444, NULL_SIZE
        return attributes

    async def lookup(self, parent: int, name: bytes, ctx: object = None):
        if name != b"f":
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(pyfuse3.ROOT_INODE + 1)

    async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> memoryview:
        return memoryview(self.zeros)[: max(0, min(size, NULL_SIZE - off))]


def serve_null(mountpoint: str) -> None:
    pyfuse3.init(NullFs(), mountpoint, set(pyfuse3.default_options) | {"ro", "fsname=nullfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


def per_read(fd: int, reads: list[T], read: Callable[[int, T], object]) -> float:
    """Microseconds per ``read(fd, each)`` over ``reads``, caches dropped first."""
    drop_caches()
    start = time.perf_counter()
    for each in reads:
        read(fd, each)
    return (time.perf_counter() - start) / len(reads) * 1e6


def preads(fd: int, offsets: list[int]) -> float:
    return per_read(fd, offsets, lambda fd, offset: os.pread(fd, BLOCK, offset))


def fuse_null(mountpoint: Path, offsets: list[int]) -> float:
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.experiments.rand4k_budget",
            "serve-null",
            str(mountpoint),
        ]
    ):
        wait_for_mount(mountpoint)
        try:
            fd = os.open(mountpoint / "f", os.O_RDONLY)
            try:
                return preads(fd, offsets)
            finally:
                os.close(fd)
        finally:
            unmount(mountpoint)


def disk(blob: Path, offsets: list[int], whole_record: bool) -> float:
    """O_DIRECT reads of the records holding ``offsets``: the aligned blocks around each
    record, as the folder store reads them, or (``whole_record`` False) its first 4 KiB."""
    with open(blob, "rb") as f:
        layout = BlobHeader.parse(f.read(HEADER_LEN)).layout
    buffer = mmap.mmap(-1, 2 * RECORD)  # page-aligned, as O_DIRECT needs
    reads = []
    for offset in offsets:
        index = offset // layout.chunk_size
        start = layout.record_offset(index)
        end = start + layout.record_len(index)
        aligned = start - start % BLOCK
        length = -(-end // BLOCK) * BLOCK - aligned if whole_record else BLOCK
        reads.append((aligned, length))
    fd = os.open(blob, os.O_RDONLY | os.O_DIRECT)
    try:
        return per_read(
            fd, reads, lambda fd, read: os.preadv(fd, [memoryview(buffer)[: read[1]]], read[0])
        )
    finally:
        os.close(fd)
        buffer.close()


def reader_alone(ws: bench_read.Workspace, variant: str, offsets: list[int]) -> float:
    store, manifest, key = open_model(str(ws.stores[variant]), FileKeySource(ws.key))
    reader = tuned_reader(manifest, store, key, cache_bytes=64 << 20)

    async def reads() -> float:
        await reader.read(0, 0, BLOCK)  # header and page digests, as an open does
        drop_caches()
        start = time.perf_counter()
        for offset in offsets:
            await reader.read(0, offset, BLOCK)
        return (time.perf_counter() - start) / len(offsets) * 1e6

    try:
        return trio.run(reads)
    finally:
        store.close()


def mounted(ws: bench_read.Workspace, variant: str, offsets: list[int]) -> float:
    if variant == "gocryptfs":
        mount = ws.mount(variant)
    else:  # the warm-up would fill the page cache between the open and the first read
        mount = cmlfs_mount(ws.stores[variant], ws.mnt, ws.key, "--warm-up", "0")
    with mount as root:
        fd = os.open(root / bench_read.FILE, os.O_RDONLY)
        try:
            return preads(fd, offsets)
        finally:
            os.close(fd)


def main(rounds: int = 3, count: int = 3000) -> None:
    ws = bench_read.Workspace(Path("/var/tmp/cmlfs-bench-2g"), 2 * GIB)
    blob = next((ws.stores["cmlfs-gcm-siv"] / "blobs").iterdir())
    parts: dict[str, Callable[[list[int]], float]] = {
        "fuse-null": lambda offsets: fuse_null(ws.mnt, offsets),
        "disk-record": lambda offsets: disk(blob, offsets, whole_record=True),
        "disk-4k": lambda offsets: disk(blob, offsets, whole_record=False),
        **{f"reader-{v}": lambda o, v=v: reader_alone(ws, v, o) for v in STORES},
        **{v: lambda o, v=v: mounted(ws, v, o) for v in (*STORES, "gocryptfs")},
    }
    samples: dict[str, list[float]] = {name: [] for name in parts}
    for r in range(rounds):
        rng = random.Random(r)
        offsets = [rng.randrange(0, ws.size - BLOCK) // BLOCK * BLOCK for _ in range(count)]
        for name, measure in parts.items():
            samples[name].append(measure(offsets))
    base = statistics.median(samples["gocryptfs"])
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name}: {median:.0f} us per read ({base / median:.2f}x gocryptfs's speed)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-null"]:
        serve_null(sys.argv[2])
    else:
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 3,
            int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
        )
