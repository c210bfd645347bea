"""The KeySource protocol."""

from typing import Protocol


class KeySource(Protocol):
    def describe(self) -> str:
        """Where the key comes from, for messages (never the key)."""
        ...

    def fetch_key(self) -> bytes:
        """The 32-byte model key, or KeySourceError with a one-line reason."""
        ...
