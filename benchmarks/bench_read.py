"""Read-path benchmarks: cmlfs (GCM-SIV and GCM) against gocryptfs and the plain file.

Scenarios (each interleaves its variants round by round; medians and ratios):
  seq-cold    sequential read of one large file, caches dropped before each read
  format      the same cold read of a format-2 store (what cmlfs encrypt writes: every
              record checked against its BLAKE3 leaf) and of a format-1 store, and the
              daemon's CPU seconds per GiB (steadier than MB/s on a busy machine); -t2:
              format 2 read with 2 fetch threads (--threads 2)
  warm        re-read of a file already in the page cache (gocryptfs with -kernel_cache)
  rand-4k     random 4 KiB preads, ops/s, cold start
  (seq-cold and the random reads also run a model sealed with 16 KiB chunks: the trade-off
  between per-chunk cost on sequential reads and bytes opened per random read)
  rand-1m     random 1 MiB preads, ops/s, cold start
  first-byte  time from running `cmlfs mount` to holding the first 1 MiB, and peak plaintext
              memory, against decrypting the whole model into a RAM disk first (what an
              initContainer does) with the fastest decrypter here (cmlfs's read path, one
              process or --workers 2, whichever is faster in the round); key file. Then
              first-byte-kbs: both again with the key released by a key broker (dev-kbs in
              this process, `sample` attester), the clock started when the broker released
              the key (as deployed, the daemon starts and attests before that)
Variants ending in -Nw mount with --workers N (N processes decrypting; cmlfs.daemon.workers):
-2w as README recommends for 2 cores, -3w to test whether a third worker, which keeps a core
busy while the others wait for their O_DIRECT reads, is faster. Rounds rotate the order of
the variants, so that none always reads right after another's drop_caches.

Run as root (drop_caches, FUSE tuning):  python -m benchmarks.bench_read [--size 2G]
(with --only, results go to results/read-<scenarios>.json, beside a full run's read.json)
"""

import argparse
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from benchmarks.lib import (
    GIB,
    MIB,
    Measurement,
    Peak,
    cmlfs_command,
    cmlfs_mount,
    compile_cmlfs,
    drop_caches,
    gocryptfs_init,
    gocryptfs_mount,
    plain_mount,
    pss_of,
    read_sequential,
    report,
    rotated,
    run,
    save,
    timed,
)
from cmlfs.devkbs import DevKbs, DevKbsConfig
from cmlfs.format.keys import key_id
from cmlfs.keys.bundle import make_bundle
from cmlfs.manifest import MANIFEST_NAME, manifest_digest
from cmlfs.units import parse_size
from tests.conftest import daemon_pid, proc_stat, serving_pids

FILE = "weights.bin"
WORKERS_SUFFIX = "-2w"


class Workspace:
    """The plaintext model, its cmlfs stores (both algorithms, both formats) and a gocryptfs
    copy."""

    def __init__(self, root: Path, size: int) -> None:
        self.root = root
        self.size = size
        self.plain = root / "plain"
        self.key = root / "model.key"
        self.passfile = root / "gocryptfs.pass"
        self.stores = {
            "cmlfs-gcm-siv": root / "store-siv",
            "cmlfs-gcm": root / "store-gcm",
            "cmlfs-gcm-siv-16k": root / "store-siv-16k",  # the chunk-size trade-off
            "cmlfs-gcm-siv-f1": root / "store-siv-f1",  # format 1: no hash list
        }
        self.gocryptfs_dir = root / "gocryptfs"
        self.mnt = root / "mnt"

    def prepare(self) -> None:
        stamp = self.root / f"ready-{self.size}-f2-blake3"  # stores of both formats, BLAKE3 lists
        if stamp.exists():
            return
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        from benchmarks.lib import make_random_file

        make_random_file(self.plain / FILE, self.size)
        run(*cmlfs_command(), "keygen", "--out", self.key)
        run(
            *cmlfs_command(),
            "encrypt",
            self.plain,
            self.stores["cmlfs-gcm-siv"],
            "--key-file",
            self.key,
        )
        run(
            *cmlfs_command(),
            "encrypt",
            self.plain,
            self.stores["cmlfs-gcm"],
            "--key-file",
            self.key,
            "--algorithm",
            "aes-256-gcm",
        )
        run(
            *cmlfs_command(),
            "encrypt",
            self.plain,
            self.stores["cmlfs-gcm-siv-16k"],
            "--key-file",
            self.key,
            "--chunk-size",
            "16K",
        )
        run(
            *cmlfs_command(),
            "encrypt",
            self.plain,
            self.stores["cmlfs-gcm-siv-f1"],
            "--key-file",
            self.key,
            "--format",
            "1",
        )
        gocryptfs_init(self.gocryptfs_dir, self.passfile)
        with gocryptfs_mount(self.gocryptfs_dir, self.mnt, self.passfile) as mnt:
            shutil.copyfile(self.plain / FILE, mnt / FILE)
        stamp.touch()

    def mount(self, variant: str) -> AbstractContextManager[Path]:
        if variant.startswith("cmlfs"):
            name, _, threads = variant.rpartition("-t")  # -tN: with --threads N
            if name in self.stores and threads.isdigit():
                return cmlfs_mount(self.stores[name], self.mnt, self.key, "--threads", threads)
            workers = re.fullmatch(r"(.*)-(\d)w", variant)
            if workers:
                store, extra = self.stores[workers[1]], ("--workers", workers[2])
            else:
                store, extra = self.stores[variant], ()
            return cmlfs_mount(store, self.mnt, self.key, *extra)
        if variant == "gocryptfs":
            return gocryptfs_mount(self.gocryptfs_dir, self.mnt, self.passfile)
        if variant == "gocryptfs-kernel_cache":
            return gocryptfs_mount(self.gocryptfs_dir, self.mnt, self.passfile, "-kernel_cache")
        return plain_mount(self.plain)


def sequential_cold(ws: Workspace, rounds: int) -> Measurement:
    m = Measurement("seq-cold", "MB/s", True, "gocryptfs")
    variants = (
        "cmlfs-gcm-siv",
        "cmlfs-gcm",
        "cmlfs-gcm-siv-2w",
        "cmlfs-gcm-2w",
        "cmlfs-gcm-siv-3w",
        "cmlfs-gcm-3w",
        "cmlfs-gcm-siv-16k",
        "gocryptfs",
        "plain",
    )
    for round_index in range(rounds):
        for variant in rotated(variants, round_index):
            with ws.mount(variant) as root:
                drop_caches()
                seconds = timed(lambda root=root: read_sequential(root / FILE))
            m.add(variant, ws.size / seconds / 1e6)
    return m


def format_cold(ws: Workspace, rounds: int) -> list[Measurement]:
    """Cold sequential reads of format 2 against format 1, interleaved round by round:
    throughput, and the daemon's CPU time per GiB read."""
    speed = Measurement("seq-cold-format", "MB/s", True, "cmlfs-gcm-siv-f1")
    cpu = Measurement("cpu-format", "s/GiB", False, "cmlfs-gcm-siv-f1")
    for _ in range(rounds):
        for variant in ("cmlfs-gcm-siv-f1", "cmlfs-gcm-siv", "cmlfs-gcm-siv-t2"):
            with ws.mount(variant) as root:
                drop_caches()
                pid = daemon_pid(root)
                before = cpu_seconds(pid)
                seconds = timed(lambda root=root: read_sequential(root / FILE))
                used = cpu_seconds(pid) - before
            speed.add(variant, ws.size / seconds / 1e6)
            cpu.add(variant, used / (ws.size / GIB))
    return [speed, cpu]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (all its threads)."""
    fields = proc_stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_reread(ws: Workspace, rounds: int) -> Measurement:
    m = Measurement("warm", "MB/s", True, "gocryptfs-kernel_cache")
    for _ in range(rounds):
        for variant in ("cmlfs-gcm-siv", "gocryptfs-kernel_cache", "plain"):
            with ws.mount(variant) as root:
                read_sequential(root / FILE)
                seconds = timed(lambda root=root: read_sequential(root / FILE))
            m.add(variant, ws.size / seconds / 1e6)
    return m


def random_preads(ws: Workspace, rounds: int, block: int, count: int) -> Measurement:
    name = "rand-4k" if block == 4096 else "rand-1m"
    m = Measurement(name, "ops/s", True, "gocryptfs")
    for round_index in range(rounds):
        rng = random.Random(round_index)
        offsets = [rng.randrange(0, ws.size - block) // 4096 * 4096 for _ in range(count)]
        variants = ("cmlfs-gcm-siv", "cmlfs-gcm-siv-16k", "gocryptfs", "plain")
        for variant in rotated(variants, round_index):
            with ws.mount(variant) as root:
                drop_caches()
                fd = os.open(root / FILE, os.O_RDONLY)
                try:
                    seconds = timed(
                        lambda fd=fd, offsets=offsets: [os.pread(fd, block, o) for o in offsets]
                    )
                finally:
                    os.close(fd)
            m.add(variant, count / seconds)
    return m


class ReleaseClock(DevKbs):
    """dev-kbs noting when it released a key (``time.perf_counter``): the broker rows'
    clock starts at the broker's release, not at a time the daemon reports of itself."""

    def __init__(self, config: DevKbsConfig) -> None:
        super().__init__(config)
        self.released: list[float] = []

    def release(self, *args, **kwargs) -> dict:
        answer = super().release(*args, **kwargs)
        self.released.append(time.perf_counter())
        return answer


@contextmanager
def release_clock(ws: Workspace, store: Path) -> Iterator[tuple[ReleaseClock, list[str]]]:
    """A broker holding ``store``'s key (a key bundle pinning its manifest), and the mount
    options that take the key from it."""
    repository = ws.root / "kbs-repository"
    shutil.rmtree(repository, ignore_errors=True)
    repository.mkdir()
    broker = ReleaseClock(DevKbsConfig(repository, port=0)).start()
    try:
        key = ws.key.read_bytes()
        digest = manifest_digest((store / MANIFEST_NAME).read_bytes())
        broker.repository.write("default/bench/key", make_bundle(key, digest))
        port = broker.httpd.server_address[1]
        options = ["--key-uri", f"kbs://127.0.0.1:{port}/default/bench/key", "--key-id"]
        yield broker, [*options, key_id(key), "--attester", "sample", "--insecure-kbs-http"]
    finally:
        broker.stop()
        shutil.rmtree(repository)


def first_byte(ws: Workspace, rounds: int) -> list[Measurement]:
    """cmlfs: mount, read the first MiB, then stream the rest while sampling the daemon's
    memory. RAM disk: mount, copy everything to tmpfs, read the first MiB. Both with a key
    file (the clock from running `cmlfs mount`), then both with the key from a broker
    (``first-byte-kbs``, the clock from the broker's release).

    The RAM disk is filled by the fastest decrypter here, cmlfs's own read path: each round
    decrypts with a one-process mount (-1w) and with --workers 2 (-2w, as bench_serve_ready's
    --decrypt-workers does), and ``ramdisk-decrypt-all``, the baseline, is the faster of the
    two in that round. ``mount-returned``: when ``cmlfs mount`` exited (the mount ready), the
    rest of first-byte being the first read.
    """
    latency = Measurement("first-byte", "s", False, "ramdisk-decrypt-all")
    mounted = Measurement("mount-returned", "s", False, "cmlfs-mount")
    memory = Measurement("plaintext-memory", "MiB", False, "ramdisk-decrypt-all")
    brokered = Measurement("first-byte-kbs", "s", False, "ramdisk-decrypt-all")
    attested = Measurement("kbs-release", "s", False, "cmlfs-mount")
    ramdisk = Path("/dev/shm/cmlfs-bench-ramdisk")
    store = ws.stores["cmlfs-gcm-siv"]
    with release_clock(ws, store) as (broker, broker_options):
        for _ in range(rounds):
            # key file: the clock starts with `cmlfs mount` (interpreter start included)
            for variant in ("cmlfs-gcm-siv", "cmlfs-gcm-siv" + WORKERS_SUFFIX):
                label = "cmlfs-mount" + variant.removeprefix("cmlfs-gcm-siv")
                drop_caches()
                start = time.perf_counter()
                with ws.mount(variant) as root:
                    mounted.add(label, time.perf_counter() - start)
                    with open(root / FILE, "rb") as f:
                        f.read(MIB)
                    latency.add(label, time.perf_counter() - start)
                    with Peak(pss_of(list(serving_pids(ws.mnt)))) as peak:
                        read_sequential(root / FILE)
                memory.add(label, peak.value / MIB)
            decrypt_all_first(ws, ramdisk, latency, ws.key, [])
            plaintext = sum(p.stat().st_size for p in ramdisk.rglob("*"))
            memory.add("ramdisk-decrypt-all", plaintext / MIB)
            shutil.rmtree(ramdisk)

            # key broker: the clock starts at the broker's release
            drop_caches()
            broker.released.clear()
            start = time.perf_counter()
            with cmlfs_mount(store, ws.mnt, None, *broker_options) as root:
                with open(root / FILE, "rb") as f:
                    f.read(MIB)
                held = time.perf_counter()
            brokered.add("cmlfs-mount", held - broker.released[0])
            attested.add("cmlfs-mount", broker.released[0] - start)
            decrypt_all_first(ws, ramdisk, brokered, None, broker_options, broker)
            shutil.rmtree(ramdisk)
    latency.notes = (
        "ramdisk-decrypt-all: the faster of the -1w and -2w decrypt-alls of each round; cmlfs "
        "started from compiled modules, as a pip-installed package is (lib.compile_cmlfs)"
    )
    memory.notes = (
        "cmlfs: peak PSS of the daemon's processes while streaming the whole file (64 MiB "
        "cache included); RAM disk: plaintext bytes in tmpfs"
    )
    brokered.notes = (
        "the key from dev-kbs (sample attester, loopback), every time measured from the "
        "broker's release of the key; kbs-release: from running `cmlfs mount` to that release"
    )
    return [latency, mounted, memory, brokered, attested]


def decrypt_all_first(
    ws: Workspace,
    ramdisk: Path,
    latency: Measurement,
    key: Path | None,
    key_options: list[str],
    broker: ReleaseClock | None = None,
) -> None:
    """Decrypt the whole model into ``ramdisk`` and read its first MiB, with one process
    and with --workers 2; the faster of the two is ``ramdisk-decrypt-all``. Timed from
    running `cmlfs mount`, or with ``broker`` from its release of the key. The plaintext
    stays in ``ramdisk``."""
    fastest = None
    for workers in (1, 2):
        drop_caches()
        shutil.rmtree(ramdisk, ignore_errors=True)
        extra = ("--workers", str(workers)) if workers > 1 else ()
        if broker is not None:
            broker.released.clear()
        start = time.perf_counter()
        with cmlfs_mount(ws.stores["cmlfs-gcm-siv"], ws.mnt, key, *key_options, *extra) as root:
            shutil.copytree(root, ramdisk)
        with open(ramdisk / FILE, "rb") as f:
            f.read(MIB)
        seconds = time.perf_counter() - (start if broker is None else broker.released[0])
        latency.add(f"ramdisk-decrypt-all-{workers}w", seconds)
        fastest = seconds if fastest is None else min(fastest, seconds)
    latency.add("ramdisk-decrypt-all", fastest)


SCENARIOS: dict[str, Callable[[Workspace, int], list[Measurement]]] = {
    "seq-cold": lambda ws, r: [sequential_cold(ws, r)],
    "format": format_cold,
    "warm": lambda ws, r: [warm_reread(ws, r)],
    "rand-4k": lambda ws, r: [random_preads(ws, r, 4096, 4000)],
    "rand-1m": lambda ws, r: [random_preads(ws, r, MIB, 300)],
    "first-byte": first_byte,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=2 * GIB, help="file size (default 2G)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per scenario (default 5)")
    parser.add_argument(
        "--work", type=Path, default=Path("/var/tmp/cmlfs-bench"), help="work folder"
    )
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="scenarios to run")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmarks drop caches and tune FUSE")
    if shutil.which("gocryptfs") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "gocryptfs"], check=True)
    ws = Workspace(args.work, args.size)
    ws.prepare()
    compile_cmlfs()
    measurements = []
    for name in args.only or SCENARIOS:
        measurements.extend(SCENARIOS[name](ws, args.rounds))
        report(measurements[-1:])
    command = "python -m benchmarks.bench_read " + " ".join(
        f"--{k} {v}" for k, v in (("size", args.size), ("rounds", args.rounds))
    )
    if args.only:  # a partial run keeps the full run's results
        command += " --only " + " ".join(args.only)
    save("-".join(["read", *(args.only or [])]), measurements, command)
    report(measurements)


if __name__ == "__main__":
    main()
