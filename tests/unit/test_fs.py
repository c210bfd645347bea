"""The FUSE operations without a mount: inode tree, attributes, and the errno boundary."""

import errno
import stat

import pyfuse3
import pytest
import trio

from cmlfs.errors import IntegrityError, StoreError
from cmlfs.format.aead import Algorithm
from cmlfs.fs import ModelFs, build_tree
from cmlfs.manifest import DirEntry, FileEntry, Manifest

HEX = "0" * 64


def manifest() -> Manifest:
    def file(path: str, size: int) -> FileEntry:
        return FileEntry(path, size, 0o644, 7, HEX, 0, HEX, HEX)

    return Manifest(
        name="m",
        version="1",
        chunk_size=65536,
        algorithm=Algorithm.AES_256_GCM_SIV,
        files=(file("a.txt", 5), file("sub/b.bin", 70000), file("sub/ü.txt", 0)),
        dirs=(DirEntry("", 0o755, 1), DirEntry("sub", 0o755, 2), DirEntry("empty", 0o700, 3)),
    )


class FailingReader:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def read(self, index: int, offset: int, size: int) -> bytes:
        raise self.error


def test_tree_has_every_entry_with_read_only_modes():
    nodes = build_tree(manifest())
    root = nodes[pyfuse3.ROOT_INODE]
    assert root.names == [b"a.txt", b"empty", b"sub"]
    sub = nodes[root.children[b"sub"]]
    assert sub.names == [b"b.bin", "ü.txt".encode()]
    leaf = nodes[sub.children[b"b.bin"]]
    assert leaf.size == 70000 and leaf.mode == stat.S_IFREG | 0o444
    assert nodes[root.children[b"empty"]].mode == stat.S_IFDIR | 0o500
    assert len({n.inode for n in nodes.values()}) == len(nodes) == 6


@pytest.mark.parametrize(
    "error", [IntegrityError("chunk 3"), StoreError("gone"), RuntimeError("bug"), KeyError(1)]
)
def test_any_read_failure_becomes_eio_and_never_escapes(error):
    fs = ModelFs(manifest(), FailingReader(error))
    inode = fs.nodes[pyfuse3.ROOT_INODE].children[b"a.txt"]
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(fs.read, inode, 0, 10)
    assert info.value.errno == errno.EIO


def test_lookup_of_a_missing_name_is_enoent_and_writes_are_erofs():
    fs = ModelFs(manifest(), FailingReader(RuntimeError()))
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(fs.lookup, pyfuse3.ROOT_INODE, b"nope", None)
    assert info.value.errno == errno.ENOENT
    inode = fs.nodes[pyfuse3.ROOT_INODE].children[b"a.txt"]
    for flags in (1, 2):  # O_WRONLY, O_RDWR
        with pytest.raises(pyfuse3.FUSEError) as info:
            trio.run(fs.open, inode, flags, None)
        assert info.value.errno == errno.EROFS
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(fs.open, pyfuse3.ROOT_INODE, 0, None)
    assert info.value.errno == errno.EISDIR
