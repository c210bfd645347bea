"""Choosing a key source from a key URI (``file:///path``)."""

from pathlib import Path
from urllib.parse import unquote, urlsplit

from cmlfs.errors import KeySourceError
from cmlfs.keys.base import KeySource
from cmlfs.keys.file import FileKeySource


def key_source_from_uri(uri: str) -> KeySource:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise KeySourceError(f"a file key URI is file:///absolute/path, not {uri!r}")
        return FileKeySource(Path(unquote(parts.path)))
    raise KeySourceError(f"unsupported key URI scheme {parts.scheme!r} in {uri!r}")
