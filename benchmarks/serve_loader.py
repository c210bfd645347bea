"""A model server's first answer, for bench_serve_ready: one process per timed load.

    python -m benchmarks.serve_loader KIND

KIND is ``sentence-transformers`` (a model folder; the answer is the embeddings of a few
sentences), ``safetensors`` (every tensor of every ``*.safetensors`` file in the folder is
read through safetensors' mmap and hashed; the answer is the digest, so every byte is
touched) or ``gguf`` / ``gguf-nommap`` (llama-cpp-python loads the folder's ``*.gguf`` with
``use_mmap`` on or off; the answer is the first generated token, greedy).

The process imports its whole stack first and prints ``ready``: imports are not what is
compared. It then reads one line, the model folder, loads the model, computes the first
answer, and prints one JSON line: ``seconds`` (load and answer), ``cpu_seconds`` (of this
process meanwhile), ``major_faults`` and ``minor_faults`` (page faults meanwhile: an mmapped
model's faults that waited for a read, and those that found the page cached) and
``answer`` (SHA-256 of the answer's bytes, the same for every approach when they served the
same bytes).
"""

import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCES = [
    "A confidential model is served from an encrypted store.",
    "The key is released only to an attested machine.",
]
PROMPT = "The capital of France is"


def sentence_transformers_loader() -> Callable[[Path], bytes]:
    import torch  # noqa: F401 - imported before the clock starts
    import transformers.models.bert.modeling_bert
    import transformers.models.mpnet.modeling_mpnet  # noqa: F401 - mpnet's
    from sentence_transformers import SentenceTransformer

    def answer(folder: Path) -> bytes:
        model = SentenceTransformer(str(folder), device="cpu")
        return model.encode(SENTENCES, convert_to_numpy=True).tobytes()

    return answer


def safetensors_loader() -> Callable[[Path], bytes]:
    from safetensors import safe_open

    def answer(folder: Path) -> bytes:
        digest = hashlib.sha256()
        for path in sorted(folder.rglob("*.safetensors")):
            with safe_open(path, framework="np") as tensors:
                for name in sorted(tensors.keys()):
                    digest.update(name.encode())
                    digest.update(memoryview(tensors.get_tensor(name)).cast("B"))
        return digest.digest()

    return answer


def gguf_loader(use_mmap: bool) -> Callable[[Path], bytes]:
    from llama_cpp import Llama

    def answer(folder: Path) -> bytes:
        path = next(folder.rglob("*.gguf"))
        model = Llama(str(path), use_mmap=use_mmap, n_ctx=256, seed=0, verbose=False)
        result = model.create_completion(PROMPT, max_tokens=1, temperature=0.0)
        return result["choices"][0]["text"].encode()

    return answer


LOADERS: dict[str, Callable[[], Callable[[Path], bytes]]] = {
    "sentence-transformers": sentence_transformers_loader,
    "safetensors": safetensors_loader,
    "gguf": lambda: gguf_loader(True),
    "gguf-nommap": lambda: gguf_loader(False),
}


def main(kind: str) -> None:
    answer = LOADERS[kind]()
    print("ready", flush=True)
    folder = Path(sys.stdin.readline().strip())
    before = resource.getrusage(resource.RUSAGE_SELF)
    start, cpu = time.perf_counter(), time.process_time()
    result = answer(folder)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu,
                "major_faults": after.ru_majflt - before.ru_majflt,
                "minor_faults": after.ru_minflt - before.ru_minflt,
                "answer": hashlib.sha256(result).hexdigest(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1])
