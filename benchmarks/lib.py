"""Shared benchmark machinery: cold caches, mounts of cmlfs and gocryptfs, timed reads, results.

Every scenario runs its baselines in the same run, interleaved round by round,
and reports medians and ratios (never absolute thresholds: this is not a test).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent
RESULTS_DIR = ROOT / "results"
MIB = 1 << 20
GIB = 1 << 30
PASSWORD = "benchmark-only-password"


def cmlfs_command() -> list[str]:
    return [sys.executable, "-m", "cmlfs"]


def compile_cmlfs() -> None:
    """Write the .pyc files of the cmlfs package the benchmarks start, as ``pip install``
    does: under PYTHONDONTWRITEBYTECODE (or in a read-only checkout) a start would compile
    every cmlfs module again, which an installed package never does (~40 ms of a mount)."""
    import compileall

    import cmlfs

    compileall.compile_dir(Path(cmlfs.__file__).parent, quiet=1)


def run(*args: object, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], check=True, capture_output=True, text=True, **kwargs
    )


def rotated(variants: Sequence[str], round_index: int) -> list[str]:
    """``variants`` starting one further each round: no variant keeps one place in the order."""
    shift = round_index % len(variants)
    return [*variants[shift:], *variants[:shift]]


def drop_caches() -> None:
    """Cold page cache, then touch and free a few GiB so the host hands memory back now.

    On these VMs memory freed by drop_caches is returned to the host and the first
    touch afterwards costs ~3 us per page; touching it here keeps that cost out of
    the timed read (see DESIGN.md, "Benchmark hygiene").
    """
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    ballast = bytearray(3 * GIB)
    del ballast


def read_sequential(path: Path, block: int = MIB) -> int:
    """Read a whole file with ``block``-sized reads into one reused buffer; return bytes read."""
    buffer = bytearray(block)
    view = memoryview(buffer)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def make_random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for _ in range(size // (16 * MIB)):
            out.write(os.urandom(16 * MIB))
        out.write(os.urandom(size % (16 * MIB)))


def wait_for_mount(mountpoint: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint} did not mount")
        time.sleep(0.02)


def unmount(mountpoint: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
    deadline = time.monotonic() + 30
    while os.path.ismount(mountpoint) and time.monotonic() < deadline:
        time.sleep(0.02)


@contextmanager
def cmlfs_mount(
    store: Path | str, mountpoint: Path, key: Path | None, *extra: str
) -> Iterator[Path]:
    """``cmlfs mount`` with the key file ``key`` (None: the key options are in ``extra``),
    unmounted on leaving."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    key_options = () if key is None else ("--key-file", key)
    run(*cmlfs_command(), "mount", store, mountpoint, *key_options, *extra)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def gocryptfs_init(cipher_dir: Path, passfile: Path) -> None:
    cipher_dir.mkdir(parents=True)
    passfile.write_text(PASSWORD)
    run("gocryptfs", "-q", "-init", "-passfile", passfile, "-scryptn", "10", cipher_dir)


@contextmanager
def gocryptfs_mount(
    cipher_dir: Path, mountpoint: Path, passfile: Path, *extra: str
) -> Iterator[Path]:
    mountpoint.mkdir(parents=True, exist_ok=True)
    run("gocryptfs", "-q", "-passfile", passfile, *extra, cipher_dir, mountpoint)
    wait_for_mount(mountpoint)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


@contextmanager
def plain_mount(folder: Path) -> Iterator[Path]:
    yield folder


def pss(pid: int) -> int:
    """Proportional set size: shared pages (a forked worker's, libraries) counted once overall."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


class Peak:
    """Calls ``sample`` every 10 ms while open and keeps the largest value (e.g. bytes of
    memory); a sample that raises OSError (a process gone) ends the sampling."""

    def __init__(self, sample: Callable[[], int]) -> None:
        self.sample = sample
        self.value = sample()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Peak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(0.01):
            try:
                self.value = max(self.value, self.sample())
            except OSError:
                return


def pss_of(pids: list[int]) -> Callable[[], int]:
    """A sample function: the summed PSS of ``pids``."""
    return lambda: sum(pss(pid) for pid in pids)


@dataclass
class Measurement:
    """One scenario row: samples per variant, and which variant is the baseline for ratios."""

    scenario: str
    unit: str  # what a sample is: "MB/s", "ops/s", "s", "MiB"
    higher_is_better: bool
    baseline: str
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: str = ""

    def add(self, variant: str, value: float) -> None:
        self.samples.setdefault(variant, []).append(value)

    def median(self, variant: str) -> float:
        return statistics.median(self.samples[variant])

    def ratio(self, variant: str) -> float:
        return self.median(variant) / self.median(self.baseline)

    def lines(self) -> list[str]:
        rows = []
        for variant in self.samples:
            values = ", ".join(f"{v:.4g}" for v in self.samples[variant])
            rows.append(
                f"| {self.scenario} | {variant} | {self.median(variant):.4g} {self.unit} | "
                f"{self.ratio(variant):.2f}x | {values} |"
            )
        return rows


def bench_arguments(doc: str, size: int, rounds: int, work: str) -> argparse.ArgumentParser:
    """A parser with the options of a one-file benchmark: --size, --rounds, --work, --no-save."""
    from cmlfs.units import format_size, parse_size

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=parse_size, default=size, help=f"file size (default {format_size(size)})"
    )
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds (default {rounds})")
    parser.add_argument("--work", type=Path, default=Path(work), help=f"work folder ({work})")
    parser.add_argument("--no-save", action="store_true", help="print only (the CI smoke run)")
    return parser


def save(name: str, measurements: list[Measurement], command: str) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "command": command,
                "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": machine(),
                "measurements": [asdict(m) for m in measurements],
            },
            indent=1,
        )
    )
    return path


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?"
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}"


def report(measurements: list[Measurement]) -> None:
    print("| scenario | variant | median | vs baseline | samples |")
    print("|---|---|---|---|---|")
    for m in measurements:
        for line in m.lines():
            print(line)
