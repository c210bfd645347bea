"""The FUSE operations without a mount: inode tree, attributes, and the errno boundary."""

import errno
import hashlib
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
        blob = hashlib.sha256(path.encode()).hexdigest()  # one blob per file
        return FileEntry(path, size, 0o644, 7, blob, 0, blob, HEX, hash_root=HEX)

    return Manifest(
        name="m",
        version="1",
        chunk_size=65536,
        algorithm=Algorithm.AES_256_GCM_SIV,
        files=(file("a.txt", 5), file("sub/b.bin", 70000), file("sub/ü.txt", 0)),
        dirs=(
            DirEntry("", 0o755, 1),
            DirEntry("sub", 0o755, 2),
            DirEntry("empty", 0o700, 3),
            DirEntry("sub/deeper", 0o6775, 4),
        ),
    )


class FailingReader:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def read(self, index: int, offset: int, size: int) -> bytes:
        raise self.error


def test_tree_lists_dot_entries_links_and_modes_as_recorded_without_set_id_bits():
    nodes = build_tree(manifest())
    root = nodes[pyfuse3.ROOT_INODE]
    sub = nodes[root.children[b"sub"]]
    deeper = nodes[sub.children[b"deeper"]]
    empty = nodes[root.children[b"empty"]]
    assert root.entries == [
        (b".", root.inode),
        (b"..", root.inode),  # the root is its own parent
        (b"a.txt", root.children[b"a.txt"]),
        (b"empty", empty.inode),
        (b"sub", sub.inode),
    ]
    assert [name for name, _ in sub.entries] == [b".", b"..", b"b.bin", b"deeper", "ü.txt".encode()]
    assert sub.entries[1] == (b"..", root.inode)
    assert (root.nlink, sub.nlink, deeper.nlink, empty.nlink) == (4, 3, 2, 2)
    leaf = nodes[sub.children[b"b.bin"]]
    assert leaf.size == 70000 and leaf.mode == stat.S_IFREG | 0o644 and leaf.nlink == 1
    assert leaf.entries == []
    assert empty.mode == stat.S_IFDIR | 0o700 and empty.size == 4096
    assert deeper.mode == stat.S_IFDIR | 0o775  # set-user/group-ID dropped
    assert len({n.inode for n in nodes.values()}) == len(nodes) == 7


def _logs(pattern: str) -> pytest.MarkDecorator:
    return pytest.mark.expect_log(pattern)


@pytest.mark.parametrize(
    "error",
    [
        pytest.param(IntegrityError("chunk 3")),  # logged by the reader, once
        pytest.param(StoreError("gone"), marks=_logs("event=read_failed")),
        pytest.param(RuntimeError("bug"), marks=_logs("event=handler_crashed")),
        pytest.param(KeyError(1), marks=_logs("event=handler_crashed")),
    ],
)
def test_any_read_failure_becomes_eio_and_never_escapes(error):
    """A store error is logged as a failed read, an integrity error not again (its reader
    logged it), anything else as a crash with its traceback; either way the caller gets EIO
    and the daemon goes on."""
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
