"""The FUSE layer: a thin, read-only pyfuse3 ``Operations`` over a manifest and a ModelReader.

It only translates requests: inode numbers to manifest entries, reads to
``ModelReader.read`` (or a JWE folder's listing and ``JweReader.read``). Files are
opened with the page cache kept (no direct_io), so re-reads never reach the daemon
and mmap works with MAP_SHARED. With a ``Warmer`` (cmlfs.fs.warmup), an open queues the
file for the page-cache warm-up and each read tells it which blocks the kernel now
holds. Any error becomes an errno: integrity and store failures are EIO, and an
unexpected exception is logged and also becomes EIO, so a handler never kills the
daemon.
"""

import errno
import functools
import inspect
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import pyfuse3

from cmlfs.errors import CmlfsError, IntegrityError
from cmlfs.fs.warmup import Warmer
from cmlfs.logfmt import quote
from cmlfs.manifest import Manifest
from cmlfs.reader import ModelReader
from cmlfs.reader.jwe import JweListing, JweReader

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 3600.0  # the tree never changes while mounted
# Modes are shown as recorded, write bits included (as squashfs and gocryptfs -ro do: the
# mount is read-only whatever they say, and `cp -a` out of it gives the publisher's modes);
# set-user/group-ID bits are dropped, so no copy of a model ever makes a set-ID program.
_SHOWN_BITS = 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)
DIR_SIZE = 4096  # a folder's size and space (one block), like a small ext4 folder

P = ParamSpec("P")
R = TypeVar("R")


def _errno_boundary(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn every failure of a handler into a FUSEError, so the daemon survives it; at debug
    level (``--debug``) log each request, with its numbers only (never a name)."""
    names = list(inspect.signature(handler).parameters)[1:]  # after self

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        if log.isEnabledFor(logging.DEBUG):
            numbers = " ".join(
                f"{name}={value}"
                for name, value in zip(names, args[1:], strict=False)
                if type(value) is int
            )
            log.debug("event=request op=%s %s", handler.__name__, numbers)
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except IntegrityError:  # the reader logged it, once per damaged chunk
            raise pyfuse3.FUSEError(errno.EIO) from None
        except CmlfsError as exc:
            log.error("event=read_failed op=%s reason=%s", handler.__name__, quote(exc))
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("event=handler_crashed op=%s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class Node:
    inode: int
    mode: int  # with the S_IFDIR or S_IFREG bit
    size: int
    mtime_ns: int
    file_index: int | None = None  # index into manifest.files for regular files
    parent: int = pyfuse3.ROOT_INODE  # the root is its own parent, as on any filesystem
    nlink: int = 1  # a folder: 2 + its subfolders (its name, its ".", each subfolder's "..")
    children: dict[bytes, int] = field(default_factory=dict)
    # a folder's listing in readdir order: ".", "..", then its children by name
    entries: list[tuple[bytes, int]] = field(default_factory=list)


def build_tree(manifest: Manifest | JweListing) -> dict[int, Node]:
    """Inode table of the model: folders and files of the manifest, root at ROOT_INODE."""
    nodes: dict[int, Node] = {}
    by_path: dict[str, Node] = {}
    for d in sorted(manifest.dirs, key=lambda d: d.path):
        inode = pyfuse3.ROOT_INODE if d.path == "" else len(nodes) + pyfuse3.ROOT_INODE
        node = Node(inode, stat.S_IFDIR | (d.mode & _SHOWN_BITS), DIR_SIZE, d.mtime_ns, nlink=2)
        nodes[inode] = by_path[d.path] = node
    for file_index, f in enumerate(manifest.files):
        inode = len(nodes) + pyfuse3.ROOT_INODE
        node = Node(inode, stat.S_IFREG | (f.mode & _SHOWN_BITS), f.size, f.mtime_ns, file_index)
        nodes[inode] = by_path[f.path] = node
    for path, node in by_path.items():
        if path:
            parent_path, _, name = path.rpartition("/")
            parent = by_path[parent_path]
            parent.children[os.fsencode(name)] = node.inode
            node.parent = parent.inode
            parent.nlink += node.file_index is None
    for node in nodes.values():
        if node.file_index is None:
            links = [(b".", node.inode), (b"..", node.parent)]
            node.entries = links + sorted(node.children.items())
    return nodes


class ModelFs(pyfuse3.Operations):
    """Read-only view of one model; all data comes from the reader."""

    def __init__(
        self,
        manifest: Manifest | JweListing,
        reader: ModelReader | JweReader,
        warmer: Warmer | None = None,
    ) -> None:
        super().__init__()
        self.reader = reader
        self.warmer = warmer
        self.nodes = build_tree(manifest)
        self._uid = os.getuid()
        self._gid = os.getgid()

    def _node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.inode
        attrs.st_mode = node.mode
        attrs.st_nlink = node.nlink
        attrs.st_size = node.size
        attrs.st_blksize = 1 << 16
        attrs.st_blocks = -(-node.size // 512)
        attrs.st_uid = self._uid
        attrs.st_gid = self._gid
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = node.mtime_ns
        attrs.entry_timeout = attrs.attr_timeout = ATTR_TIMEOUT
        return attrs

    @_errno_boundary
    async def lookup(self, parent_inode, name, ctx=None):
        child = self._node(parent_inode).children.get(bytes(name))
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(self.nodes[child])

    @_errno_boundary
    async def getattr(self, inode, ctx=None):
        return self._attributes(self._node(inode))

    @_errno_boundary
    async def opendir(self, inode, ctx):
        if self._node(inode).file_index is not None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_errno_boundary
    async def readdir(self, fh, start_id, token):
        entries = self._node(fh).entries
        for position in range(start_id, len(entries)):
            name, inode = entries[position]
            if not pyfuse3.readdir_reply(
                token, name, self._attributes(self.nodes[inode]), position + 1
            ):
                break

    @_errno_boundary
    async def releasedir(self, fh):
        pass

    @_errno_boundary
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if node.file_index is None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if self.warmer is not None:
            self.warmer.opened(inode, node.file_index, node.size)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_errno_boundary
    async def read(self, fh, off, size):
        file_index = self._node(fh).file_index
        data = await self.reader.read(file_index, off, size)
        if self.warmer is not None:
            self.warmer.served(file_index, off, len(data))
        return data

    @_errno_boundary
    async def release(self, fh):
        pass

    @_errno_boundary
    async def statfs(self, ctx):
        result = pyfuse3.StatvfsData()
        total = sum(node.size for node in self.nodes.values())
        result.f_bsize = result.f_frsize = 4096
        result.f_blocks = -(-total // 4096)
        result.f_bfree = result.f_bavail = 0
        result.f_files = len(self.nodes)
        result.f_ffree = result.f_favail = 0
        result.f_namemax = 255
        return result
