"""Parsing byte sizes given on the command line (``64K``, ``256MiB``, ``1G``, ``4096``)."""

import re

_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes in ``text``; K, M, G and T are binary multiples (KiB, MiB, ...)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64K, 256MiB, 2G)")
    return int(match.group(1)) * _FACTORS[match.group(2).upper()]


def format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"
