"""Mutation campaign: damage an encrypted store one mutation at a time, read through a real mount.

    python -m tests.hardening.mutation --mutations 10000 --workdir /tmp/campaign

Every byte read must equal the source, or the read must fail with EIO (or the
mount be refused). The report counts mutations, refused mounts, EIO reads,
correct reads, **wrong bytes** (must be 0) and **undetected** mutations (a read
of a damaged region that returned the source bytes: either the read never
reached the daemon, so the check was not real, or the damage went unnoticed;
must be 0 as well).

How the checks stay real with one mount for thousands of mutations:

- The daemon runs with ``--cache-size 0`` (no plaintext chunk cache) and
  ``--warm-up 0`` (nothing pushed into the page cache: a pushed page holds the
  plaintext as it was before a mutation, and a read served from it never asks the
  store again), and every read is opened with ``O_DIRECT``, so it bypasses the page
  cache and reaches the daemon, which reads the store again.
- Blobs are changed in place (same inode), which the store's cached descriptors see.
- The reader checks a blob's header and size once per file, on first read, and
  keeps the result only when the check passed. So the model's files are split:
  record mutations (bit flips, byte runs, record swaps, duplicates, transplants,
  and bit flips of format 2's leaf hashes, whose pages a reader without a cache
  fetches again) go to files that are open and verified; blob mutations (header
  edits, truncation, extension, a dropped record, blob swaps and replacements, and
  bit flips of the page digests, checked when a file is opened) go to files that
  have never been read successfully, whose header check runs on every read. A
  blob mutation that passed the check would be counted as undetected and its
  file would read wrong bytes.
- Manifest mutations need a new daemon each: they are fewer (``--manifest-share``)
  and mounted one by one at the end. Each mutation is undone before the next.
- Finally a fresh mount reads every file whole: the store was restored, and the
  blob-mutation files open and read correctly.
"""

import argparse
import errno
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cmlfs.format.hashlist import LEAVES_PER_PAGE, HashLayout
from cmlfs.format.layout import HEADER_LEN, ChunkLayout
from cmlfs.manifest import MANIFEST_NAME, open_manifest
from tests.conftest import daemon_pid, force_unmount, mounted, run_cli
from tests.hardening.models import CAMPAIGN_CHUNK, write_campaign_model

RECORD_KINDS = (
    "bit-flip",
    "byte-run",
    "record-swap",
    "record-duplicate",
    "record-transplant",
    "leaf-flip",
)
BLOB_KINDS = (
    "digest-flip",
    "header-flip",
    "header-run",
    "truncate",
    "extend",
    "record-drop",
    "blob-swap",
    "blob-replace",
)
MANIFEST_KINDS = (
    "manifest-flip",
    "manifest-run",
    "manifest-truncate",
    "manifest-extend",
    "manifest-replace",
)


@dataclass
class Report:
    mutations: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    refused_mounts: int = 0
    eio_reads: int = 0
    correct_reads: int = 0
    short_reads: int = 0
    wrong_bytes: int = 0
    undetected: int = 0
    other_errors: list[str] = field(default_factory=list)
    mounts: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.mutations} mutations ({dict(sorted(self.kinds.items()))}): "
            f"{self.refused_mounts} refused mounts, {self.eio_reads} EIO reads, "
            f"{self.correct_reads} correct reads, {self.short_reads} short reads, "
            f"{self.wrong_bytes} wrong bytes, "
            f"{self.undetected} undetected, {len(self.other_errors)} other errors; "
            f"{self.mounts} mounts in {self.seconds:.0f} s"
        )


@dataclass
class Blob:
    path: str  # model path
    file: Path  # the blob in the store being mutated
    other: Path  # the same file's blob in a second encryption with the same key
    layout: ChunkLayout
    original: bytes


class Campaign:
    """One mutable store, its pristine twin and a mount of it; see the module docstring."""

    def __init__(self, workdir: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.workdir = workdir
        self.report = Report()
        self.contents = write_campaign_model(workdir / "model")
        self.key = workdir / "model.key"
        run_cli("keygen", "--out", self.key)
        self.store, other = workdir / "store", workdir / "store-other"
        for store in (self.store, other):
            run_cli(
                "encrypt", workdir / "model", store, "--key-file", self.key, "--chunk-size", "4K"
            )
        self.mnt = workdir / "mnt"
        self.log = workdir / "daemon.log"
        self.options = [
            "--key-file",
            self.key,
            "--cache-size",
            "0",
            "--warm-up",
            "0",
            "--log-file",
            self.log,
        ]
        manifest = open_manifest((self.store / MANIFEST_NAME).read_bytes(), self.key.read_bytes())
        twin = open_manifest((other / MANIFEST_NAME).read_bytes(), self.key.read_bytes())
        twins = {f.path: other / f.blob_name for f in twin.files}
        blobs = [
            Blob(
                f.path,
                self.store / f.blob_name,
                twins[f.path],
                ChunkLayout(manifest.chunk_size, f.size),
                (self.store / f.blob_name).read_bytes(),
            )
            for f in manifest.files
            if f.size > 0
        ]
        blobs.sort(key=lambda b: b.path)
        # Files with several chunks alternate between the two roles; tiny ones take blob damage.
        self.record_files = [b for b in blobs if b.layout.n_chunks >= 3][::2]
        self.blob_files = [b for b in blobs if b not in self.record_files]
        self.manifest_bytes = (self.store / MANIFEST_NAME).read_bytes()
        self.other_manifest = (other / MANIFEST_NAME).read_bytes()
        self._fds: dict[str, int] = {}

    # --- reading through the mount ----------------------------------------------------------

    def _read(self, path: str, offset: int, length: int) -> bytes | None:
        """Bytes read with O_DIRECT, or None for EIO; any other failure is recorded."""
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(self.mnt / path, os.O_RDONLY | os.O_DIRECT)
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            if exc.errno != errno.EIO:
                self.report.other_errors.append(f"{path}@{offset}: {exc}")
            return None

    def check(self, path: str, offset: int, length: int, damaged: bool) -> None:
        """Read a range and count the outcome; ``damaged``: the range covers the mutation."""
        data = self._read(path, offset, length)
        expected = self.contents[path][offset : offset + length]
        if data is None:
            self.report.eio_reads += 1
            if not damaged:
                self.report.other_errors.append(f"{path}@{offset}+{length}: EIO on intact bytes")
        elif data != expected[: len(data)]:
            self.report.wrong_bytes += 1
        elif len(data) < len(expected):  # correct bytes, then the read stopped: POSIX allows it
            self.report.short_reads += 1
            if not damaged:
                self.report.other_errors.append(f"{path}@{offset}+{length}: short intact read")
        elif damaged:
            self.report.undetected += 1
        else:
            self.report.correct_reads += 1

    def close_files(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # --- record mutations: verified files, damage inside the records ---------------------------

    def record_mutation(self, kind: str) -> None:
        blob = self.rng.choice(self.record_files)
        data = bytearray(blob.original)
        layout = blob.layout
        full = [i for i in range(layout.n_chunks) if layout.chunk_len(i) == CAMPAIGN_CHUNK]
        hashes = HashLayout(layout)
        if kind == "leaf-flip":  # the page of the leaf fails: every chunk it covers
            start = self.rng.randrange(hashes.leaves_offset, hashes.digests_offset)
            data[start] ^= 1 << self.rng.randrange(8)
            page = (start - hashes.leaves_offset) // (32 * LEAVES_PER_PAGE)
            chunks = range(page * LEAVES_PER_PAGE, (page + 1) * LEAVES_PER_PAGE)
            damaged = set(chunks) & set(range(layout.n_chunks))
        elif kind in ("bit-flip", "byte-run"):
            start = self.rng.randrange(HEADER_LEN, hashes.leaves_offset)  # the records
            if kind == "bit-flip":
                data[start] ^= 1 << self.rng.randrange(8)
                end = start + 1
            else:
                end = min(hashes.leaves_offset, start + self.rng.randrange(1, 65))
                data[start:end] = self.rng.randbytes(end - start)
                if data[start:end] == blob.original[start:end]:
                    data[start] ^= 0xFF
            damaged = {
                i
                for i in range(layout.n_chunks)
                if layout.record_offset(i) < end
                and start < layout.record_offset(i) + layout.record_len(i)
            }
        elif kind in ("record-swap", "record-duplicate"):  # files of >= 3 chunks have 2 full
            i, j = self.rng.sample(full, 2)
            a, b = _record(blob.original, layout, i), _record(blob.original, layout, j)
            _put_record(data, layout, j, a)
            if kind == "record-swap":
                _put_record(data, layout, i, b)
            damaged = {i, j} if kind == "record-swap" else {j}
        else:  # a transplant: the same record index of the other encryption, or another blob
            i = self.rng.randrange(layout.n_chunks)
            donor = blob.other.read_bytes()
            if self.rng.random() < 0.5 and layout.chunk_len(i) == CAMPAIGN_CHUNK:
                other = self.rng.choice([b for b in self.record_files if b is not blob])
                j = self.rng.randrange(other.layout.n_chunks)
                if other.layout.chunk_len(j) == CAMPAIGN_CHUNK:
                    donor_record = _record(other.original, other.layout, j)
                else:
                    donor_record = _record(donor, layout, i)
            else:
                donor_record = _record(donor, layout, i)
            _put_record(data, layout, i, donor_record)
            damaged = {i}
        self._apply(blob, bytes(data))
        try:
            self._check_chunks(blob, damaged)
        finally:
            self._apply(blob, blob.original)

    def _check_chunks(self, blob: Blob, damaged: set[int]) -> None:
        layout = blob.layout
        for index in sorted(damaged)[:4]:
            self.check(blob.path, index * CAMPAIGN_CHUNK, CAMPAIGN_CHUNK, damaged=True)
        first, last = max(min(damaged) - 1, 0), min(max(damaged) + 1, layout.n_chunks - 1)
        span = (last - first + 1) * CAMPAIGN_CHUNK
        self.check(blob.path, first * CAMPAIGN_CHUNK, span, damaged=True)
        intact = [i for i in range(layout.n_chunks) if i not in damaged]
        for index in self.rng.sample(intact, min(2, len(intact))):
            self.check(blob.path, index * CAMPAIGN_CHUNK, CAMPAIGN_CHUNK, damaged=False)

    # --- blob mutations: never-verified files, damage the header check must catch -------------

    def blob_mutation(self, kind: str) -> None:
        blob = self.rng.choice(self.blob_files)
        data = bytearray(blob.original)
        victims = [blob]
        if kind == "digest-flip":
            hashes = HashLayout(blob.layout)
            data[self.rng.randrange(hashes.digests_offset, len(data))] ^= 1 << self.rng.randrange(8)
        elif kind == "header-flip":
            data[self.rng.randrange(HEADER_LEN)] ^= 1 << self.rng.randrange(8)
        elif kind == "header-run":
            start = self.rng.randrange(HEADER_LEN)
            end = min(HEADER_LEN, start + self.rng.randrange(1, 17))
            data[start:end] = self.rng.randbytes(end - start)
            if data == blob.original:
                data[start] ^= 0xFF
        elif kind == "truncate":
            del data[self.rng.randrange(len(data)) :]
        elif kind == "extend":
            data += self.rng.randbytes(self.rng.randrange(1, 8193))
        elif kind == "record-drop":
            i = self.rng.randrange(blob.layout.n_chunks)
            start = blob.layout.record_offset(i)
            del data[start : start + blob.layout.record_len(i)]
        elif kind == "blob-swap":
            other = self.rng.choice([b for b in self.blob_files if b is not blob])
            self._apply(other, blob.original)
            data = bytearray(other.original)
            victims.append(other)
        else:  # blob-replace
            data = bytearray(blob.other.read_bytes())
        self._apply(blob, bytes(data))
        try:
            for victim in victims:
                size = len(self.contents[victim.path])
                self.check(victim.path, 0, min(size, CAMPAIGN_CHUNK), damaged=True)
                offset = self.rng.randrange(size)
                self.check(victim.path, offset, self.rng.randrange(1, 3 * CAMPAIGN_CHUNK), True)
                self.check(victim.path, 0, size, damaged=True)
        finally:
            for victim in victims:
                self._apply(victim, victim.original)

    @staticmethod
    def _apply(blob: Blob, data: bytes) -> None:
        """Rewrite the blob in place (same inode: the daemon's open descriptor sees it)."""
        fd = os.open(blob.file, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    # --- manifest mutations: one daemon each ---------------------------------------------------

    def manifest_mutation(self, kind: str) -> None:
        data = bytearray(self.manifest_bytes)
        if kind == "manifest-flip":
            data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        elif kind == "manifest-run":
            start = self.rng.randrange(len(data))
            end = min(len(data), start + self.rng.randrange(1, 65))
            data[start:end] = self.rng.randbytes(end - start)
            if data == self.manifest_bytes:
                data[start] ^= 0xFF
        elif kind == "manifest-truncate":
            del data[self.rng.randrange(len(data)) :]
        elif kind == "manifest-extend":
            data += self.rng.randbytes(self.rng.randrange(1, 257))
        else:
            data = bytearray(self.other_manifest)
        (self.store / MANIFEST_NAME).write_bytes(data)
        try:
            self.mnt.mkdir(exist_ok=True)
            self.report.mounts += 1
            result = run_cli("mount", self.store, self.mnt, *self.options, check=False)
            if result.returncode != 0:
                self.report.refused_mounts += 1
                return
            try:
                for path, content in self.contents.items():
                    if content:
                        self.check(path, 0, len(content), damaged=True)
            finally:
                self.close_files()
                force_unmount(self.mnt)
        finally:
            (self.store / MANIFEST_NAME).write_bytes(self.manifest_bytes)

    # --- the whole run ---------------------------------------------------------------------------

    def _count(self, kind: str) -> None:
        self.report.kinds[kind] = self.report.kinds.get(kind, 0) + 1
        self.report.mutations += 1

    def run(self, mutations: int, manifest_share: float) -> Report:
        started = time.monotonic()
        n_manifest = max(len(MANIFEST_KINDS), round(mutations * manifest_share))
        n_manifest = min(n_manifest, mutations)
        plan = [
            self.rng.choice(RECORD_KINDS if self.rng.random() < 0.6 else BLOB_KINDS)
            for _ in range(mutations - n_manifest)
        ]
        actions: dict[str, Callable[[str], None]] = dict.fromkeys(
            RECORD_KINDS, self.record_mutation
        ) | dict.fromkeys(BLOB_KINDS, self.blob_mutation)
        self.report.mounts += 1
        with mounted(self.store, self.mnt, *self.options):
            pid = daemon_pid(self.mnt)
            try:
                for kind in plan:
                    actions[kind](kind)
                    self._count(kind)
            finally:
                self.close_files()
            if daemon_pid(self.mnt) != pid:
                self.report.other_errors.append("the daemon was replaced during the campaign")
        for index in range(n_manifest):
            kind = MANIFEST_KINDS[index % len(MANIFEST_KINDS)]
            self.manifest_mutation(kind)
            self._count(kind)
        self.report.mounts += 1
        with mounted(self.store, self.mnt, *self.options):
            try:
                for path, content in self.contents.items():
                    if content:
                        self.check(path, 0, len(content), damaged=False)
            finally:
                self.close_files()
        self.report.seconds = time.monotonic() - started
        return self.report


def _record(blob: bytes, layout: ChunkLayout, index: int) -> bytes:
    start = layout.record_offset(index)
    return blob[start : start + layout.record_len(index)]


def _put_record(data: bytearray, layout: ChunkLayout, index: int, record: bytes) -> None:
    start = layout.record_offset(index)
    data[start : start + layout.record_len(index)] = record


def run_campaign(
    workdir: Path, mutations: int, seed: int = 1, manifest_share: float = 0.01
) -> Report:
    workdir.mkdir(parents=True, exist_ok=True)
    return Campaign(workdir, seed).run(mutations, manifest_share)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--manifest-share",
        type=float,
        default=0.01,
        help="share of manifest mutations, each a new mount (default 0.01)",
    )
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    report = run_campaign(args.workdir, args.mutations, args.seed, args.manifest_share)
    print(report.summary())
    for error in report.other_errors[:20]:
        print(f"  error: {error}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=1))
    failed = report.wrong_bytes or report.undetected or report.other_errors
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
