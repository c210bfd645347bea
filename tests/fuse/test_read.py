"""Reads through a real FUSE mount equal the plaintext: files, ranges, mmap, concurrency."""

import errno
import mmap
import os
import random
import stat
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import tree_digests

pytestmark = pytest.mark.fuse


def test_every_file_digest_equals_the_source(mounted_sample):
    mnt, _, src = mounted_sample
    assert tree_digests(mnt) == tree_digests(src)


def test_tree_shape_sizes_modes_and_times_match(mounted_sample):
    mnt, contents, src = mounted_sample
    listed = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))
    assert listed == sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    assert list((mnt / "empty-folder").iterdir()) == []
    for rel, data in contents.items():
        mounted_stat, source_stat = os.stat(mnt / rel), os.stat(src / rel)
        assert mounted_stat.st_size == len(data)
        assert stat.S_ISREG(mounted_stat.st_mode)
        assert stat.S_IMODE(mounted_stat.st_mode) == stat.S_IMODE(source_stat.st_mode)
        assert mounted_stat.st_mtime_ns == source_stat.st_mtime_ns
    assert (mnt / "empty.txt").read_bytes() == b""
    assert (mnt / "deep/a/b/c/d/e/f/leaf.bin").read_bytes() == contents["deep/a/b/c/d/e/f/leaf.bin"]
    assert (mnt / "ünïcödé/модель 日本.bin").read_bytes() == contents["ünïcödé/модель 日本.bin"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_pread_ranges_equal_the_source(mounted_sample, data):
    mnt, contents, _ = mounted_sample
    name = data.draw(st.sampled_from(sorted(contents)))
    plain = contents[name]
    offset = data.draw(st.integers(0, len(plain) + 10))
    size = data.draw(st.integers(0, 3 * 65536))
    fd = os.open(mnt / name, os.O_RDONLY)
    try:
        assert os.pread(fd, size, offset) == plain[offset : offset + size]
    finally:
        os.close(fd)


@pytest.mark.parametrize("flags", [mmap.MAP_PRIVATE, mmap.MAP_SHARED], ids=["private", "shared"])
def test_mmap_reads_equal_the_source(mounted_sample, flags):
    mnt, contents, _ = mounted_sample
    plain = contents["model.safetensors"]
    with open(mnt / "model.safetensors", "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        try:
            assert mapped[:] == plain
            rng = random.Random(3)
            for _ in range(50):
                offset = rng.randrange(len(plain))
                assert mapped[offset : offset + 777] == plain[offset : offset + 777]
        finally:
            mapped.close()


def test_eight_concurrent_readers_see_the_source(mounted_sample):
    mnt, contents, _ = mounted_sample
    names = sorted(contents)
    failures: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(200):
            name = rng.choice(names)
            plain = contents[name]
            offset = rng.randrange(len(plain) + 1)
            size = rng.randrange(1, 200_000)
            with open(mnt / name, "rb") as f:
                f.seek(offset)
                if f.read(size) != plain[offset : offset + size]:
                    failures.append(f"{name}@{offset}+{size}")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_the_mount_is_read_only(mounted_sample):
    mnt, _, _ = mounted_sample
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC):
        with pytest.raises(OSError) as info:
            os.open(mnt / "config.json", flags)
        assert info.value.errno in (errno.EROFS, errno.EACCES)
    with pytest.raises(OSError):
        (mnt / "new-file").write_bytes(b"x")
    with pytest.raises(OSError):
        os.mkdir(mnt / "new-folder")
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "no-such-file")


def test_statfs_answers(mounted_sample):
    mnt, contents, _ = mounted_sample
    info = os.statvfs(mnt)
    assert info.f_blocks * info.f_frsize >= sum(len(v) for v in contents.values())
    assert info.f_bavail == 0
