"""Peak memory of serving one KServe JWE file: cmlfs against KServe's storage initializer.

  cmlfs           `cmlfs mount` on the JWE folder, then the whole file read through the
                  mount: the daemon's peak resident memory (VmHWM), its authenticating
                  pass, 64 MiB chunk cache and interpreter included.
  kserve-0.20     KServe 0.20's `JWEDecryptor.decrypt_file` steps (kserve
                  python/storage/kserve_storage/confidential/jwe_decryptor.py at aaac4e294):
                  read the whole file as text, deserialize and decrypt it with jwcrypto,
                  write the plaintext; the process's peak resident memory.
  kserve-streamed the streamed form (benchmarks/bench_jwe.py `kserve_decrypt`): decrypt in
                  48 MiB steps into a temporary file; the process's peak resident memory.

Each variant is a fresh process; peak resident memory counts the interpreter and its
libraries too (about 30-60 MiB of it).

Run as root:  python -m benchmarks.bench_kserve_memory [--size 256M] [--rounds 2]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_jwe import FILE, kserve_decrypt, write_jwe
from benchmarks.lib import (
    MIB,
    Measurement,
    bench_arguments,
    cmlfs_mount,
    read_sequential,
    report,
    save,
)
from tests.conftest import daemon_pid


def peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM of a process: the most resident memory it ever had, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def kserve_020(jwe_file: Path, key: bytes, output: Path) -> None:
    """decrypt_file's steps: the whole text in memory, jwcrypto, the plaintext written."""
    from jwcrypto import jwe, jwk

    token = jwe.JWE()
    token.deserialize(jwe_file.read_text())
    token.decrypt(jwk.JWK(kty="oct", k=jwe.base64url_encode(key)))
    output.write_bytes(token.payload)


def in_child(variant: str, jwe_file: Path, key_file: Path, output: Path) -> float:
    """Run one KServe variant in a process of its own; its peak resident memory in MiB."""
    answer = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_kserve_memory", "--child", variant,
         str(jwe_file), str(key_file), str(output)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(answer.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = bench_arguments(__doc__, 256 * MIB, 2, "/var/tmp/cmlfs-bench-kserve-memory")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, jwe_file, key_file, output = args.child
        decrypt = kserve_020 if variant == "kserve-0.20" else kserve_decrypt
        decrypt(Path(jwe_file), Path(key_file).read_bytes(), Path(output))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: cmlfs mounts")
    shutil.rmtree(args.work, ignore_errors=True)
    folder, output, mnt = args.work / "jwe", args.work / "kserve", args.work / "mnt"
    folder.mkdir(parents=True)
    key_file = args.work / "key.bin"
    key_file.write_bytes(os.urandom(32))
    jwe_file = folder / f"{FILE}.jwe"
    write_jwe(jwe_file, key_file.read_bytes(), args.size)
    memory = Measurement("jwe peak memory", "MiB", False, "kserve-0.20")
    try:
        for _ in range(args.rounds):
            with cmlfs_mount(folder, mnt, key_file, "--cache-size", "64M") as root:
                read_sequential(root / FILE)
                memory.add("cmlfs", peak_rss_mib(daemon_pid(root)))
            for variant in ("kserve-0.20", "kserve-streamed"):
                shutil.rmtree(output, ignore_errors=True)
                output.mkdir()
                memory.add(variant, in_child(variant, jwe_file, key_file, output / FILE))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    memory.notes = (
        f"one {args.size}-byte A256KW/A256GCM JWE file; peak resident memory (VmHWM, "
        "ru_maxrss) of the process that decrypts; cmlfs with --cache-size 64M"
    )
    if not args.no_save:
        command = (
            f"python -m benchmarks.bench_kserve_memory --size {args.size} --rounds {args.rounds}"
        )
        save("jwe-memory", [memory], command)
    report([memory])


if __name__ == "__main__":
    main()
