"""Choosing a key source from a key URI: ``file:///path``, ``kbs://HOST:PORT/...``,
``kbs:///...`` (through the data hub), ``cdh:///...``."""

from pathlib import Path
from urllib.parse import unquote, urlsplit

from cmlfs.errors import KeySourceError
from cmlfs.keys.base import KeySettings, KeySource
from cmlfs.keys.file import key_file_source


def key_source_from_uri(uri: str, settings: KeySettings | None = None) -> KeySource:
    settings = settings or KeySettings()
    try:
        parts = urlsplit(uri)  # ValueError for a bad IPv6 literal: a store-chosen URI can have one
    except ValueError:
        raise KeySourceError(f"invalid key URI {uri!r}") from None
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise KeySourceError(f"a file key URI is file:///absolute/path, not {uri!r}")
        return key_file_source(Path(unquote(parts.path)), settings)
    if parts.scheme == "cdh" or (parts.scheme == "kbs" and not parts.netloc):
        # kbs:///REPO/TYPE/TAG: the broker this guest is configured for, through its data hub
        from cmlfs.keys.cdh import cdh_key_source

        return cdh_key_source(uri, settings)
    if parts.scheme == "kbs":
        # imported when used: requests and jwcrypto would slow every cmlfs start
        from cmlfs.keys.kbs import KbsKeySource, parse_kbs_uri

        return KbsKeySource(parse_kbs_uri(uri, settings), settings)
    raise KeySourceError(
        f"unsupported key URI scheme {parts.scheme!r} in {uri!r} (file, kbs or cdh)"
    )
