"""A store in a local folder: ``manifest.cmlfs``, ``blobs/<sha256>`` and ``model.sig``, or
(``files``) a folder of ordinary files such as a JWE model folder, read-only.

Large reads of blobs bypass the page cache (``O_DIRECT``) where the filesystem allows it:
the disk writes the ciphertext straight into the buffer the read returns, instead of into
page-cache pages the daemon then copies out of. On the benchmark VM that copy was ~40% of a
daemon's CPU during a cold read (its pages are memory the VM touches for the first time), and
skipping it halves the CPU per GiB (benchmarks/RESULTS.md, "Figures behind code choices"); nor
is a model's ciphertext then cached beside its plaintext.
"""

import ctypes
import errno
import os
import threading
from pathlib import Path

from cmlfs.errors import StoreError
from cmlfs.signature import SIGNATURE_NAME
from cmlfs.stores.base import (
    MAX_WHOLE_READ,
    ObjectMissing,
    Progress,
    StoreStats,
    check_file_name,
    check_name,
    check_range,
    content_addressed,
    read_whole,
)

DIRECT_MIN_BYTES = 16 * 1024  # a blob read of at least this much bypasses the page cache
DIRECT_ALIGN = 4096  # O_DIRECT's offset, length and buffer alignment (any block size up to 4K)


class LocalStore:
    """Reads with ``pread`` on descriptors opened once and shared by all threads.

    ``read_range`` of a blob returns a read-only view of a buffer that is the caller's alone
    when it read it with ``O_DIRECT``, else bytes.
    """

    def __init__(self, root: Path, files: bool = False) -> None:
        self.root = root
        self.files = files
        self._check = check_file_name if files else check_name
        self.stats = StoreStats()  # a folder is never retried: stays zero
        self._fds: dict[tuple[str, bool], int] = {}  # (name, O_DIRECT) -> descriptor
        self._lock = threading.Lock()
        self._direct = not files  # until the filesystem refuses O_DIRECT
        if not root.is_dir():
            raise StoreError(f"store folder {root} does not exist")

    def describe(self) -> str:
        return str(self.root)

    def size(self, name: str) -> int:
        return os.fstat(self._fd(name)).st_size

    def read_range(self, name: str, offset: int, length: int) -> bytes | memoryview:
        fd = self._fd(name)
        if length <= 0 or offset < 0:  # no pread to make, or one that would not say why
            check_range(name, offset, length, os.fstat(fd).st_size)
            return b""
        try:
            if self._direct and length >= DIRECT_MIN_BYTES and content_addressed(name):
                data = self._read_direct(name, offset, length)
                if data is not None:
                    return data
            data = os.pread(fd, length, offset)
        except OSError as exc:
            raise StoreError(f"{name}: read failed: {os.strerror(exc.errno)}") from None
        if len(data) != length:
            raise StoreError(f"{name}: object is shorter than expected")
        return data

    def _read_direct(self, name: str, offset: int, length: int) -> memoryview | None:
        """``length`` bytes from ``offset`` read with ``O_DIRECT`` in aligned blocks around
        them, as a read-only view; None (and no more direct reads) where the filesystem
        refuses it."""
        try:
            fd = self._fd(name, direct=True)
            start = offset - offset % DIRECT_ALIGN
            end = -(-(offset + length) // DIRECT_ALIGN) * DIRECT_ALIGN
            buffer = bytearray(end - start + DIRECT_ALIGN)
            pad = -ctypes.addressof(ctypes.c_char.from_buffer(buffer)) % DIRECT_ALIGN
            view = memoryview(buffer)[pad : pad + end - start]
            got = os.preadv(fd, [view], start)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._direct = False
            return None
        if got < offset + length - start:
            raise StoreError(f"{name}: object is shorter than expected")
        return view[offset - start : offset - start + length].toreadonly()

    def read_all(self, name: str, limit: int = MAX_WHOLE_READ) -> bytes:
        return read_whole(self, name, limit)

    def _walk(self) -> list[str]:
        """Every regular file under the root, not following symbolic links."""
        names = []
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs.sort()
            base = Path(folder).relative_to(self.root)
            for name in sorted(files):
                path = Path(folder, name)
                if path.is_file() and not path.is_symlink():
                    names.append((base / name).as_posix())
        return names

    def list(self) -> list[str]:
        if self.files:
            return self._walk()
        names = [n for n in ("manifest.cmlfs", SIGNATURE_NAME) if (self.root / n).is_file()]
        blobs = self.root / "blobs"
        if blobs.is_dir():
            names.extend(f"blobs/{p.name}" for p in sorted(blobs.iterdir()) if p.is_file())
        return names

    def put(self, name: str, source: Path, progress: Progress) -> bool:
        """Copy ``source`` in under a temporary name, flush, then rename into place."""
        if self.files:
            raise StoreError(f"{self.root} is read as a folder of files; it takes no objects")
        target = self.root / check_name(name)
        size = source.stat().st_size
        if target.is_file() and target.stat().st_size == size and content_addressed(name):
            progress(size)
            return False
        target.parent.mkdir(exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.urandom(4).hex()}")
        try:
            with open(source, "rb") as src, open(partial, "xb") as dst:
                while block := src.read(1 << 20):
                    dst.write(block)
                    progress(len(block))
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise StoreError(f"{name}: cannot write into {self.root}: {exc.strerror}") from None
        return True

    def commit(self) -> str:
        """Nothing to do: the manifest, put last, is what makes the model visible."""
        return str(self.root)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def _fd(self, name: str, direct: bool = False) -> int:
        fd = self._fds.get((name, direct))
        if fd is not None:
            return fd
        path = self.root / self._check(name)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if direct and exc.errno == errno.EINVAL:
                raise  # the filesystem has no O_DIRECT: the caller reads through the cache
            if exc.errno == errno.ENOENT:
                raise ObjectMissing(f"{name}: not found in {self.root}") from None
            raise StoreError(f"{name}: cannot open: {os.strerror(exc.errno)}") from None
        with self._lock:
            existing = self._fds.setdefault((name, direct), fd)
        if existing != fd:
            os.close(fd)
        return existing
