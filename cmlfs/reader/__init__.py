"""Random-access decrypting reads over a store (no FUSE here).

Importing the package imports no module of it: its names load on first use (PEP 562), so
the CLI reads ``DEFAULT_CACHE_BYTES`` for ``--help`` and the mount settings without
loading trio, which the reader runs on (~0.3 s; benchmarks/RESULTS.md, "Lazy imports").
"""

import importlib

DEFAULT_CACHE_BYTES = 64 * 1024 * 1024  # the page cache keeps what readers re-read

_MODULE_OF = {
    "ChunkCache": "cache",
    "SingleFlight": "cache",
    "PlainSpan": "cache",
    "SealedSpan": "cache",
    "Span": "cache",
    "ModelReader": "reader",
    "ReaderStats": "reader",
}


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ChunkCache",
    "ModelReader",
    "PlainSpan",
    "ReaderStats",
    "SealedSpan",
    "SingleFlight",
    "Span",
]
