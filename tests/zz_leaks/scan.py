"""Scan folders for plaintext of the test models (any 64-byte window) and for test keys.

Plaintext: every window of 64 bytes of a known model file. The known files are
regenerated from the deterministic writers the suite uses, so no copy of them
is needed. Matching is exact: every 16-byte substring of the plaintext is
fingerprinted (numpy); each scanned file is probed at every 48th byte, which
any 64-byte window contains; a probe whose fingerprint matches is verified by
extending the match byte by byte in both directions, and only a match of at
least 64 bytes counts.

Legitimate plaintext is a *source folder*: a file whose whole content equals a
known model file and whose path ends with that file's model-relative path (what
``write_sample_model`` and the hardening writers create). Everything else that
holds a window is a leak.

Keys: every key file ``cmlfs keygen`` made under the scanned roots (32 bytes,
mode 0600), looked for raw, in hex and in base64/base64url, everywhere except
the key files themselves and a key broker's repository (a folder whose name ends
in ``repository``, where dev-kbs keeps the resources it releases, by design).
A 32-byte file with a pattern instead of random bytes (few distinct byte values,
or few distinct steps from one byte to the next, like 32 zero bytes or
0, 1, 2, ...) is not a key ``keygen`` made: such runs occur by chance in
unrelated files (padding and tables of executables), so it is not looked for.
Keys from ``keygen`` are random and never look like that (a random 32-byte key
has about 30 distinct values; fewer than 16 has a chance below 10^-14).
"""

import base64
import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WINDOW = 64
# Keys are searched for literally, once per encoding per key: a file larger than this
# (blobs and models of the large-file tests, not logs or configs) is left out of the key
# search to keep the scan in minutes; it is still scanned for plaintext.
KEY_SCAN_LIMIT = 64 << 20
PROBE = 16
STRIDE = WINDOW - PROBE  # a 64-byte window always contains a probe at a multiple of 48
MIN_DISTINCT = 16  # byte values (and steps) a 32-byte file needs to be taken for a key
_MIX = np.uint64(0x9E3779B97F4A7C15)
_TABLE_BITS = 27  # 128 MiB of flags for ~9 million fingerprints: ~7% of probes pass


def _fingerprints(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a * _MIX ^ b


def _words(data: bytes, shift: int) -> np.ndarray:
    count = max(0, (len(data) - shift) // 8)
    return (
        np.frombuffer(data, dtype="<u8", count=count, offset=shift) if count else np.empty(0, "<u8")
    )


@dataclass
class PlaintextIndex:
    """Fingerprints of every 16-byte substring of the known plaintext files."""

    files: list[tuple[str, bytes]]  # (model-relative path, content)
    fingerprints: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        parts = []
        for _, data in self.files:
            if len(data) < WINDOW:
                continue
            for shift in range(8):
                words = _words(data, shift)
                if len(words) >= 2:
                    parts.append(_fingerprints(words[:-1], words[1:]))
        # sorted for searchsorted (np.sort: np.unique is ~60x slower on 9M uint64 here)
        self.fingerprints = np.sort(np.concatenate(parts)) if parts else np.empty(0, "<u8")
        # A one-byte-per-slot table of the fingerprints' top bits: one memory access per
        # probe rules most probes out before the binary search.
        self._table = np.zeros(1 << _TABLE_BITS, dtype=bool)
        self._table[self.fingerprints >> np.uint64(64 - _TABLE_BITS)] = True
        self._by_content: dict[bytes, set[str]] = {}
        for rel, data in self.files:
            self._by_content.setdefault(data, set()).add(rel)

    def is_source_copy(self, path: Path, data: bytes) -> bool:
        return any(path.as_posix().endswith("/" + rel) for rel in self._by_content.get(data, ()))

    def windows_in(self, data: bytes) -> list[int]:
        """Offsets in ``data`` where at least 64 bytes of known plaintext start."""
        words = _words(data, 0)
        count = min(len(words[::6]), len(words[1::6]))
        if count == 0 or len(self.fingerprints) == 0:
            return []
        probes = _fingerprints(words[::6][:count], words[1::6][:count])
        maybe = np.nonzero(self._table[probes >> np.uint64(64 - _TABLE_BITS)])[0]
        at = np.searchsorted(self.fingerprints, probes[maybe])
        at[at == len(self.fingerprints)] = 0
        found: list[int] = []
        covered = 0  # end of the last verified match: probes inside it are the same leak
        for k in maybe[self.fingerprints[at] == probes[maybe]]:
            position = int(k) * STRIDE
            if position < covered:
                continue
            match = self._verified(data, position)
            if match is not None:
                found.append(match[0])
                covered = match[1]
        return found

    def _verified(self, data: bytes, position: int) -> tuple[int, int] | None:
        """(start, end) of a match of >= 64 bytes with a known file around ``position``."""
        probe = data[position : position + PROBE]
        for _, source in self.files:
            at = source.find(probe)
            while at >= 0:
                back = min(at, position, WINDOW)  # 64 bytes back decide it; never more
                left = _common_length(
                    source[at - back : at][::-1], data[position - back : position][::-1]
                )
                right = PROBE + _common_length(source[at + PROBE :], data[position + PROBE :])
                if left + right >= WINDOW:
                    return position - left, position + right
                at = source.find(probe, at + 1)
        return None


def _common_length(a: bytes, b: bytes) -> int:
    """Length of the common prefix of ``a`` and ``b``, compared a block at a time."""
    limit, done, block = min(len(a), len(b)), 0, 4096
    while done + block <= limit and a[done : done + block] == b[done : done + block]:
        done += block
    while done < limit and a[done] == b[done]:
        done += 1
    return done


def key_forms(key: bytes) -> list[bytes]:
    """The ways a key could be written: raw, hex, base64 and base64url."""
    return [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        base64.b64encode(key).rstrip(b"="),
        base64.urlsafe_b64encode(key).rstrip(b"="),
    ]


def walk(
    roots: list[Path], exclude: frozenset[Path] = frozenset(), since: float = 0.0
) -> Iterator[Path]:
    """Regular files under ``roots`` but not under ``exclude``, changed at or after ``since``
    (a Unix time), never following symlinks or entering other mounts."""
    seen: set[tuple[int, int]] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            keep = []
            for name in dirs:
                path = Path(folder, name)
                if not (os.path.ismount(path) or path.is_symlink() or path in exclude):
                    keep.append(name)
            dirs[:] = keep
            for name in files:
                path = Path(folder, name)
                try:
                    st = path.lstat()
                except OSError:
                    continue
                changed = max(st.st_mtime, st.st_ctime) >= since
                if stat.S_ISREG(st.st_mode) and changed and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    yield path


def is_patterned(data: bytes) -> bool:
    """Whether ``data`` has too few distinct byte values, or steps between neighbours, to be
    random: such bytes also occur by chance in files that never saw a key."""
    steps = {(b - a) % 256 for a, b in itertools.pairwise(data)}
    return min(len(set(data)), len(steps)) < MIN_DISTINCT


def find_keys(roots: list[Path]) -> dict[bytes, list[Path]]:
    """Key files made by ``cmlfs keygen`` (32 random bytes, mode 0600) -> where they are."""
    keys: dict[bytes, list[Path]] = {}
    for path in walk(roots):
        try:
            st = path.stat()
            if st.st_size == 32 and stat.S_IMODE(st.st_mode) == 0o600:
                data = path.read_bytes()
                if not is_patterned(data):
                    keys.setdefault(data, []).append(path)
        except OSError:
            continue
    return keys


@dataclass
class ScanReport:
    files: int = 0
    bytes: int = 0
    source_copies: int = 0
    skipped_for_keys: int = 0  # files above KEY_SCAN_LIMIT, scanned for plaintext only
    plaintext_hits: list[str] = field(default_factory=list)
    key_hits: list[str] = field(default_factory=list)


def scan(
    roots: list[Path],
    index: PlaintextIndex,
    keys: dict[bytes, list[Path]],
    exclude: frozenset[Path] = frozenset(),
    since: float = 0.0,
) -> ScanReport:
    report = ScanReport()
    key_files = {p for paths in keys.values() for p in paths}
    patterns = [(form, key) for key in keys for form in key_forms(key)]
    for path in walk(roots, exclude, since):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        report.files += 1
        report.bytes += len(data)
        if index.is_source_copy(path, data):
            report.source_copies += 1
        else:
            for offset in index.windows_in(data):
                report.plaintext_hits.append(f"{path} @ {offset}")
        if path in key_files or any(part.endswith("repository") for part in path.parts):
            continue
        if len(data) > KEY_SCAN_LIMIT:
            report.skipped_for_keys += 1
            continue
        for form, _ in patterns:
            if form in data:
                report.key_hits.append(f"{path}: a test key ({len(form)}-byte form)")
    return report
