"""An on-disk cache of ciphertext spans of blobs, bounded in bytes, committed atomically.

It holds ciphertext only: the reader puts a span after it authenticated and
before anything is decrypted into it, and drops an entry that fails to
authenticate (so a bad entry costs one network read, never wrong data).
Entries are keyed by blob name (a content digest), offset and length, so an
entry is never stale. Each entry is written to a temporary file, flushed and
renamed into place: a crash leaves at most a temporary file, which is never
served and is removed when the cache is next opened. Never stores plaintext,
keys or names of model files.
"""

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from cmlfs.errors import StoreError
from cmlfs.logfmt import quote
from cmlfs.stores.base import check_name

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"


class DiskCache:
    """Least-recently-used ciphertext spans under ``root``, at most ``budget`` bytes."""

    def __init__(self, root: Path, budget: int) -> None:
        if budget <= 0:
            raise StoreError("the disk cache size must be positive")
        self.root = root
        self.budget = budget
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._load()
        except OSError as exc:
            raise StoreError(f"cannot use disk cache {root}: {exc.strerror}") from None

    def get(self, name: str, offset: int, length: int) -> bytes | None:
        """The cached span, or None (a damaged or wrongly sized entry is dropped)."""
        key = _key(name, offset, length)
        with self._lock:
            if key not in self._entries:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
        try:
            with open(self.root / key, "rb") as f:
                data = f.read(length + 1)
        except OSError:
            data = b""
        if len(data) != length:
            self.discard(name, offset, length)
            with self._lock:
                self.misses += 1
            return None
        with self._lock:
            self.hits += 1
        return data

    def put(self, name: str, offset: int, length: int, data: bytes) -> None:
        """Commit an authenticated ciphertext span; failures only cost the cache entry."""
        if len(data) != length or length > self.budget:
            return
        key = _key(name, offset, length)
        tmp = self.root / f"{_TMP_PREFIX}{os.urandom(8).hex()}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, self.root / key)
        except OSError as exc:
            if tmp.exists():  # on a read-only folder it never was: no second warning
                _remove(tmp)
            log.warning("event=disk_cache_write_failed reason=%s", quote(exc.strerror))
            return
        with self._lock:
            self.used += length - self._entries.pop(key, 0)
            self._entries[key] = length
            evicted = self._evict()
        for victim in evicted:
            _remove(self.root / victim)

    def discard(self, name: str, offset: int, length: int) -> None:
        key = _key(name, offset, length)
        with self._lock:
            self.used -= self._entries.pop(key, 0)
        _remove(self.root / key)

    def _evict(self) -> list[str]:
        evicted = []
        while self.used > self.budget and self._entries:
            victim, size = self._entries.popitem(last=False)
            self.used -= size
            evicted.append(victim)
        return evicted

    def _load(self) -> None:
        """Index existing entries oldest first; remove leftovers of interrupted writes."""
        found = []
        for path in self.root.iterdir():
            if path.name.startswith(_TMP_PREFIX):
                _remove(path)
            elif path.is_file() and not path.is_symlink():
                st = path.stat()
                found.append((st.st_mtime_ns, path.name, st.st_size))
        for _, key, size in sorted(found):
            self._entries[key] = size
            self.used += size
        for victim in self._evict():
            _remove(self.root / victim)


def _remove(path: Path) -> None:
    """Delete a cache file if the folder lets us: on a read-only or failing cache folder an
    unlink fails too (EROFS even for a missing file), and that must cost only the cache,
    never the read that was being served."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("event=disk_cache_remove_failed reason=%s", quote(exc.strerror))


def _key(name: str, offset: int, length: int) -> str:
    """Entry file name: the blob digest and the span (only blobs are cached)."""
    if not check_name(name).startswith("blobs/"):
        raise StoreError(f"only blobs are cached, not {name}")
    return f"{name.removeprefix('blobs/')}-{offset:x}-{length:x}"
