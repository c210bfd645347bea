"""Where blobs live: one small synchronous interface, one module per kind of store.

Stores are called from worker threads by the reader, so every implementation
is thread-safe and blocking. They carry ciphertext only.
"""

from pathlib import Path

from cmlfs.errors import StoreError
from cmlfs.stores.base import Store
from cmlfs.stores.local import LocalStore


def open_store(location: str) -> Store:
    """The store a STORE argument names (a local folder path or ``file://`` URL)."""
    if location.startswith("file://"):
        return LocalStore(Path(location.removeprefix("file://")))
    if "://" in location:
        scheme = location.split("://", 1)[0]
        raise StoreError(f"unsupported store URL scheme {scheme!r}")
    return LocalStore(Path(location))


__all__ = ["LocalStore", "Store", "StoreError", "open_store"]
