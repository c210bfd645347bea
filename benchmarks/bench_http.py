"""The HTTP store over loopback nginx against the local folder store: sequential cold reads.

Both mounts read the same encrypted store (nginx serves the folder), by one daemon process
and with ``--workers 2``; caches are dropped before each read and rounds interleave the
four variants.

Run as root:  python -m benchmarks.bench_http [--size 2G] [--rounds 5]
"""

import argparse
import itertools
import shutil
from pathlib import Path

from benchmarks.bench_read import FILE, WORKERS_SUFFIX, Workspace
from benchmarks.lib import (
    GIB,
    Measurement,
    cmlfs_mount,
    drop_caches,
    read_sequential,
    report,
    save,
    timed,
)
from cmlfs.units import parse_size
from tests.e2e.stores_servers import start_nginx


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=2 * GIB)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/cmlfs-bench"))
    args = parser.parse_args()
    ws = Workspace(args.work, args.size)
    ws.prepare()
    base = args.work / "nginx"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    server, nginx = start_nginx(base)
    try:
        (nginx.root / "store").symlink_to(ws.stores["cmlfs-gcm-siv"])
        sources = {"local": str(ws.stores["cmlfs-gcm-siv"]), "http": nginx.url("store")}
        m = Measurement("seq-cold store", "MB/s", True, "local")
        for _ in range(args.rounds):
            for (variant, store), workers in itertools.product(sources.items(), ("", "2")):
                extra = ("--workers", workers) if workers else ()
                with cmlfs_mount(store, ws.mnt, ws.key, "--insecure-http", *extra) as root:
                    drop_caches()
                    seconds = timed(lambda root=root: read_sequential(root / FILE))
                m.add(variant + (WORKERS_SUFFIX if workers else ""), ws.size / seconds / 1e6)
    finally:
        server.stop()
    save("http", [m], f"python -m benchmarks.bench_http --size {args.size} --rounds {args.rounds}")
    report([m])


if __name__ == "__main__":
    main()
