"""The Store protocol every backend implements.

Names are relative, slash-separated (``manifest.cmlfs``, ``blobs/<sha256>``).
``read_range`` returns exactly the bytes asked for or raises StoreError;
callers never see a short read as data.
"""

import re
from typing import Protocol

from cmlfs.errors import StoreError

_NAME = re.compile(r"(manifest\.cmlfs|blobs/[0-9a-f]{64})")
MAX_WHOLE_READ = 128 * 1024 * 1024


def check_name(name: str) -> str:
    """Refuse any object name outside the store layout (no traversal, no surprises)."""
    if not _NAME.fullmatch(name):
        raise StoreError(f"invalid store object name {name!r}")
    return name


class Store(Protocol):
    def describe(self) -> str:
        """Where this store is, for messages (no credentials)."""
        ...

    def size(self, name: str) -> int:
        """Byte size of object ``name``; StoreError if it does not exist."""
        ...

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of ``name`` from ``offset``, else StoreError."""
        ...

    def read_all(self, name: str, limit: int = MAX_WHOLE_READ) -> bytes:
        """The whole object, refused if larger than ``limit``."""
        ...

    def list(self) -> list[str]:
        """Names of every object in the store."""
        ...

    def close(self) -> None: ...
