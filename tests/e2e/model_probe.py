"""Load a sentence-transformers model from a folder and print what it computes, as JSON.

Run in a fresh process per load (``python -m tests.e2e.model_probe PATH``) so that
nothing is shared between the plaintext load and the load through a mount.
"""

import hashlib
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCES = [
    "Confidential computing keeps model weights encrypted outside the TEE.",
    "The quick brown fox jumps over the lazy dog.",
    "cmlfs decrypts chunks lazily on read.",
]


def main(path: str) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(path, device="cpu")
    embeddings = model.encode(SENTENCES, convert_to_numpy=True)
    params = {
        name: hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()
        for name, tensor in model.state_dict().items()
    }
    print(
        json.dumps(
            {
                "embeddings_sha256": hashlib.sha256(embeddings.tobytes()).hexdigest(),
                "shape": list(embeddings.shape),
                "params": params,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
