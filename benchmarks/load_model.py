"""Time one SentenceTransformer load from a folder, in a fresh process (used by bench_models).

Prints JSON: seconds to construct the model (reading every weight) and encode one
sentence, measured after torch is imported, so only reading the model is timed.
"""

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(path: str) -> None:
    import torch  # noqa: F401 - imported before the clock starts
    from sentence_transformers import SentenceTransformer

    start = time.perf_counter()
    model = SentenceTransformer(path, device="cpu")
    model.encode(["warm up"], convert_to_numpy=True)
    print(json.dumps({"seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main(sys.argv[1])
