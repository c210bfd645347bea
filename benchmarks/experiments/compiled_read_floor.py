"""Issue 20's experiment for the random 4 KiB target: cold random 4 KiB preads through a
compiled single-threaded FUSE read loop (compiled_read_floor.c: O_DIRECT record reads and
AES-256-GCM over each 64 KiB record, no leaf-hash check, no cache) against cmlfs and
gocryptfs, on bench_read's 2 GiB workspace. Not product code: it measures how fast a compiled
read path could answer, so the Python overhead's share is a number, not a guess.

Run as root after bench_read prepared its workspace:
  python -m benchmarks.experiments.compiled_read_floor [ROUNDS] [COUNT]
"""

import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks import bench_read
from benchmarks.lib import GIB, drop_caches, rotated, unmount, wait_for_mount
from cmlfs.format.header import BlobHeader
from cmlfs.format.keys import Purpose, open_object_key
from cmlfs.format.layout import HEADER_LEN

SOURCE = Path(__file__).with_suffix(".c")
BINARY = Path("/tmp/cmlfs-compiled-read-floor")


def build() -> None:
    flags = subprocess.run(
        ["pkg-config", "fuse3", "--cflags", "--libs"], capture_output=True, text=True, check=True
    ).stdout.split()
    subprocess.run(["gcc", "-O2", "-o", BINARY, SOURCE, *flags, "-lcrypto"], check=True)


def main(rounds: int = 3, count: int = 4000) -> None:
    build()
    ws = bench_read.Workspace(Path("/var/tmp/cmlfs-bench-2g"), 2 * GIB)
    blob = next((ws.stores["cmlfs-gcm"] / "blobs").iterdir())
    with open(blob, "rb") as f:
        header = BlobHeader.parse(f.read(HEADER_LEN))
    key = open_object_key(
        ws.key.read_bytes(), header.salt, header.commitment, Purpose.content(header.version)
    )

    @contextmanager
    def floor_mount() -> Iterator[Path]:
        ws.mnt.mkdir(exist_ok=True)
        env = {**os.environ, "FLOOR_KEY": key.hex()}
        command = [BINARY, blob, ws.mnt, "-f", "-s", "-o", "ro"]
        with subprocess.Popen(command, env=env) as process:
            try:
                wait_for_mount(ws.mnt)
                yield ws.mnt
            finally:
                unmount(ws.mnt)
                process.wait(timeout=30)

    with (
        floor_mount() as root,
        open(root / bench_read.FILE, "rb") as f,
        open(ws.plain / bench_read.FILE, "rb") as plain,
    ):
        if f.read(1 << 20) != plain.read(1 << 20):
            raise SystemExit("the compiled loop does not serve the plaintext")
    samples: dict[str, list[float]] = {}
    for r in range(rounds):
        rng = random.Random(r)
        offsets = [rng.randrange(0, ws.size - 4096) // 4096 * 4096 for _ in range(count)]
        for variant in rotated(["floor-c-gcm", "cmlfs-gcm", "cmlfs-gcm-siv", "gocryptfs"], r):
            mounted = floor_mount() if variant == "floor-c-gcm" else ws.mount(variant)
            with mounted as root:
                drop_caches()
                fd = os.open(root / bench_read.FILE, os.O_RDONLY)
                try:
                    start = time.perf_counter()
                    for offset in offsets:
                        os.pread(fd, 4096, offset)
                    samples.setdefault(variant, []).append(count / (time.perf_counter() - start))
                finally:
                    os.close(fd)
    base = statistics.median(samples["gocryptfs"])
    for variant, values in samples.items():
        median = statistics.median(values)
        print(f"{variant}: {median:.0f} ops/s = {median / base:.2f}x gocryptfs {values}")


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        int(sys.argv[2]) if len(sys.argv) > 2 else 4000,
    )
