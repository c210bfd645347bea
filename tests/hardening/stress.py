"""Concurrent readers over a mounted multi-file model: random ranges, O_DIRECT and mmap.

    python -m tests.hardening.stress --seconds 600 --workdir /tmp/stress

Each reader thread picks a file and one of: a buffered ``pread`` of a random
range, the same with ``O_DIRECT`` (always reaches the daemon), a slice of a
``MAP_SHARED`` mapping (page faults), or dropping the file's page cache
(``posix_fadvise DONTNEED``) so later buffered reads and faults reach the
daemon again. Every byte is compared with the source. The daemon's RSS is
sampled all along, and its open descriptors and threads are counted before
and after.
"""

import argparse
import errno
import mmap
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import daemon_pid, mounted, rss_bytes, run_cli
from tests.hardening.models import write_stress_model

MAX_READ = 256 * 1024


@dataclass
class StressReport:
    readers: int
    seconds: float
    reads: int = 0
    bytes_read: int = 0
    mismatches: int = 0  # a byte that differs from the source: must always be 0
    short_reads: int = 0  # source bytes, but fewer than asked (a fault stopped the read)
    errors: dict[str, int] = field(default_factory=dict)  # errno name -> count
    peak_rss: int = 0
    fds_before: int = 0
    fds_after: int = 0
    threads_before: int = 0
    threads_after: int = 0

    def summary(self) -> str:
        return (
            f"{self.readers} readers for {self.seconds:.0f} s: {self.reads} reads, "
            f"{self.bytes_read / 2**20:.0f} MiB, {self.mismatches} mismatches, "
            f"{self.short_reads} short reads, errors {self.errors}; "
            f"daemon peak RSS {self.peak_rss / 2**20:.1f} MiB, fds {self.fds_before}->"
            f"{self.fds_after}, threads {self.threads_before}->{self.threads_after}"
        )


def count_entries(pid: int, what: str) -> int:
    """Open descriptors (``fd``) or threads (``task``) of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/{what}"))


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmLck, VmRSS, ...), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def core_dump_limit(pid: int) -> list[str]:
    """[soft, hard] of process ``pid``'s core file size limit, as /proc/PID/limits shows them."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    raise AssertionError(f"no core file limit for process {pid}")


class _Reader(threading.Thread):
    def __init__(
        self,
        mnt: Path,
        contents: dict[str, bytes],
        deadline: float,
        seed: int,
        use_mmap: bool,
        tolerated: frozenset[int],
        report: StressReport,
        lock: threading.Lock,
    ) -> None:
        super().__init__(daemon=True)
        self.mnt, self.contents, self.deadline = mnt, contents, deadline
        self.rng = random.Random(seed)
        self.use_mmap, self.tolerated = use_mmap, tolerated
        self.report, self.lock = report, lock
        self.failure: BaseException | None = None

    def run(self) -> None:
        names = [n for n, data in self.contents.items() if data]
        fds: dict[tuple[str, bool], int] = {}
        maps: dict[str, mmap.mmap] = {}
        reads = nbytes = mismatches = short = 0
        errors: dict[str, int] = {}
        try:
            while time.monotonic() < self.deadline:
                name = self.rng.choice(names)
                expected = self.contents[name]
                offset = self.rng.randrange(len(expected))
                size = self.rng.randrange(1, MAX_READ)
                choice = self.rng.random()
                direct = choice < 0.3
                try:
                    if choice >= 0.95:
                        fd = self._fd(fds, name, False)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        continue
                    if choice >= 0.75 and self.use_mmap:
                        view = maps.get(name)
                        if view is None:
                            fd = self._fd(fds, name, False)
                            view = maps[name] = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
                        data = view[offset : offset + size]
                    else:
                        data = os.pread(self._fd(fds, name, direct), size, offset)
                except OSError as exc:
                    if exc.errno not in self.tolerated:
                        raise
                    key = errno.errorcode.get(exc.errno, str(exc.errno))
                    errors[key] = errors.get(key, 0) + 1
                    continue
                reads += 1
                nbytes += len(data)
                wanted = expected[offset : offset + size]
                if data != wanted[: len(data)]:
                    mismatches += 1
                elif len(data) < len(wanted):
                    short += 1
        except BaseException as exc:
            self.failure = exc
        finally:
            for view in maps.values():
                view.close()
            for fd in fds.values():
                os.close(fd)
            with self.lock:
                self.report.reads += reads
                self.report.bytes_read += nbytes
                self.report.mismatches += mismatches
                self.report.short_reads += short
                for key, count in errors.items():
                    self.report.errors[key] = self.report.errors.get(key, 0) + count

    def _fd(self, fds: dict[tuple[str, bool], int], name: str, direct: bool) -> int:
        fd = fds.get((name, direct))
        if fd is None:
            flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
            fd = fds[(name, direct)] = os.open(self.mnt / name, flags)
        return fd


def run_stress(
    mnt: Path,
    contents: dict[str, bytes],
    seconds: float,
    readers: int = 32,
    use_mmap: bool = True,
    tolerated: frozenset[int] = frozenset(),
    seed: int = 1,
    settle: float = 1.0,
) -> StressReport:
    """Stress the mount at ``mnt``; errors outside ``tolerated`` errnos fail the run."""
    pid = daemon_pid(mnt)
    for name, data in contents.items():  # warm-up: every blob opened once, workers started
        if data:
            with open(mnt / name, "rb") as f:
                f.read(1)
    report = StressReport(readers, seconds)
    report.fds_before, report.threads_before = count_entries(pid, "fd"), count_entries(pid, "task")
    report.peak_rss = rss_bytes(pid)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    workers = [
        _Reader(mnt, contents, deadline, seed * 1000 + i, use_mmap, tolerated, report, lock)
        for i in range(readers)
    ]
    for worker in workers:
        worker.start()
    alive = True
    while any(w.is_alive() for w in workers):
        if alive:
            try:
                report.peak_rss = max(report.peak_rss, rss_bytes(pid))
            except (FileNotFoundError, ProcessLookupError, AssertionError):
                alive = False  # a fault test killed the daemon: nothing left to measure
        time.sleep(0.02)
    time.sleep(settle)
    if alive and Path(f"/proc/{pid}/fd").is_dir():
        report.fds_after = count_entries(pid, "fd")
        report.threads_after = count_entries(pid, "task")
    failures = [w.failure for w in workers if w.failure is not None]
    if failures:
        raise failures[0]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--cache-size", default="1M", help="daemon chunk cache (default 1M)")
    parser.add_argument("--workdir", type=Path, required=True, help="a new or empty folder")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    contents = write_stress_model(args.workdir / "model")
    key = args.workdir / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", args.workdir / "model", args.workdir / "store", "--key-file", key)
    options = ["--key-file", key, "--cache-size", args.cache_size]
    with mounted(args.workdir / "store", args.workdir / "mnt", *options) as mnt:
        report = run_stress(mnt, contents, args.seconds, args.readers)
    print(report.summary())
    return 0 if report.mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
