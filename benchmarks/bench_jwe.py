"""A KServe confidential model (one large compact JWE file) served by cmlfs against KServe's
approach, in the same run, rounds interleaved, caches dropped before each variant.

  cmlfs   `cmlfs mount` on the JWE folder (the file authenticated in one pass before the
          mount is ready), read the first MiB (time to first byte), then the rest (time to
          the whole file). No plaintext on disk.
  kserve  what KServe's storage initializer does before the server starts: stream-decrypt
          the file into a temporary file next to it and rename it once the tag verified
          (the streamed form; 0.20 first read whole files into memory), then the server
          reads the plaintext file: first MiB, then the rest. A full plaintext copy on disk.
          Same primitives as cmlfs (pybase64's validating decoder, its fast path, and
          cryptography's AES-GCM), so the comparison is of the approach, not the libraries.

The JWE file is written here in one streaming pass (jwcrypto needs the whole plaintext in
memory); tests/fuse/test_jwe.py runs this with a tiny size and checks the file decrypts
with jwcrypto to the same plaintext.

Run as root (drop_caches):  python -m benchmarks.bench_jwe [--size 2G] [--rounds 3]
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pybase64
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from benchmarks.lib import (
    GIB,
    MIB,
    Measurement,
    bench_arguments,
    cmlfs_mount,
    drop_caches,
    read_sequential,
    report,
    run,
    save,
)
from cmlfs.format.jwe import CHUNK_CHARS, HEAD_BYTES, TAIL_BYTES, find_parts, open_parts

FILE = "model.safetensors"
BLOCK = 48 * MIB  # plaintext per step while writing or decrypting: a multiple of 3 and 16


def b64(data: bytes) -> bytes:
    return pybase64.urlsafe_b64encode(data).rstrip(b"=")


def write_jwe(
    path: Path, key: bytes, size: int, source: Callable[[int], bytes] = os.urandom
) -> None:
    """A compact A256KW/A256GCM JWE of ``size`` bytes from ``source``, streamed to ``path``."""
    cek, iv = os.urandom(32), os.urandom(12)
    header = b64(json.dumps({"alg": "A256KW", "enc": "A256GCM"}).encode())
    encryptor = Cipher(algorithms.AES(cek), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(header)
    with open(path, "wb") as out:
        out.write(b".".join((header, b64(aes_key_wrap(key, cek)), b64(iv), b"")))
        for offset in range(0, size, BLOCK):
            out.write(b64(encryptor.update(source(min(BLOCK, size - offset)))))
        encryptor.finalize()
        out.write(b"." + b64(encryptor.tag))


def jwe_size(path: Path) -> int | None:
    """The plaintext size of the JWE file at ``path``, None if there is none."""
    if not path.is_file():
        return None
    size = path.stat().st_size
    with open(path, "rb") as source:
        head = source.read(HEAD_BYTES)
        source.seek(max(0, size - TAIL_BYTES))
        return find_parts(head, source.read(TAIL_BYTES), size).ciphertext_size


def kserve_decrypt(path: Path, key: bytes, output: Path) -> None:
    """Stream-decrypt ``path`` into a temporary file next to ``output``, renamed into place
    once the tag verified (KServe's storage initializer, streamed form)."""
    size = path.stat().st_size
    with open(path, "rb") as source:
        head = source.read(HEAD_BYTES)
        source.seek(max(0, size - TAIL_BYTES))
        parts = find_parts(head, source.read(TAIL_BYTES), size)
        opened = open_parts(parts, key)
        decryptor = Cipher(algorithms.AES(opened.cek), modes.GCM(opened.iv, opened.tag))
        decryptor = decryptor.decryptor()
        decryptor.authenticate_additional_data(parts.header)
        partial = output.with_name(output.name + ".partial")
        source.seek(parts.ct_start)
        left = parts.ct_chars
        with open(partial, "wb") as out:
            while left:
                text = source.read(min(BLOCK // 3 * 4, left))
                left -= len(text)
                padding = b"=" * (-len(text) % 4)
                ciphertext = pybase64.b64decode(text + padding, altchars=b"-_", validate=True)
                out.write(decryptor.update(ciphertext))
            decryptor.finalize()
    partial.rename(output)


def first_and_whole(path: Path, started: float) -> tuple[float, float]:
    """Seconds from ``started`` to the first MiB of ``path``, and to all of it."""
    with open(path, "rb", buffering=0) as f:
        f.read(MIB)
        first = time.perf_counter() - started
    read_sequential(path)
    return first, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = bench_arguments(__doc__, 2 * GIB, 3, "/var/tmp/cmlfs-bench-jwe")
    parser.add_argument(
        "--decrypt", nargs=3, type=Path, metavar=("JWE", "OUT", "KEY"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.decrypt:
        jwe_file, out, key = args.decrypt
        kserve_decrypt(jwe_file, key.read_bytes(), out)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark drops caches")
    folder, output = args.work / "jwe", args.work / "kserve"
    key_file = args.work / "key.bin"
    if jwe_size(folder / f"{FILE}.jwe") != args.size or not key_file.is_file():
        shutil.rmtree(args.work, ignore_errors=True)
        folder.mkdir(parents=True)
        key_file.write_bytes(os.urandom(32))
        write_jwe(folder / f"{FILE}.jwe", key_file.read_bytes(), args.size)
    first = Measurement("jwe first byte", "s", False, "kserve")
    whole = Measurement("jwe whole file", "s", False, "kserve")
    mnt = args.work / "mnt"
    for _ in range(args.rounds):
        drop_caches()
        started = time.perf_counter()
        with cmlfs_mount(folder, mnt, key_file, "--cache-size", "64M") as root:
            seconds = first_and_whole(root / FILE, started)
        first.add("cmlfs", seconds[0])
        whole.add("cmlfs", seconds[1])

        shutil.rmtree(output, ignore_errors=True)
        output.mkdir()
        drop_caches()
        started = time.perf_counter()
        # A process of its own, as the storage initializer is (cmlfs's time counts its start too).
        jwe_file = folder / f"{FILE}.jwe"
        run(
            sys.executable,
            "-m",
            "benchmarks.bench_jwe",
            "--decrypt",
            jwe_file,
            output / FILE,
            key_file,
        )
        seconds = first_and_whole(output / FILE, started)
        first.add("kserve", seconds[0])
        whole.add("kserve", seconds[1])
        shutil.rmtree(output)
    whole.notes = first.notes = (
        f"one {args.size}-byte A256KW/A256GCM JWE file ({CHUNK_CHARS // MIB} MiB chunks of "
        "base64url text in cmlfs); kserve writes the plaintext to disk, cmlfs none"
    )
    if not args.no_save:
        command = f"python -m benchmarks.bench_jwe --size {args.size} --rounds {args.rounds}"
        save("jwe", [first, whole], command)
    report([first, whole])


if __name__ == "__main__":
    main()
