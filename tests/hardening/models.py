"""Deterministic plaintext models of the hardening tests.

Deterministic so that the leak scan (tests/zz_leaks) can regenerate every
plaintext byte these tests ever wrote and look for it where it must not be.
"""

import random
from pathlib import Path

CAMPAIGN_CHUNK = 4096


def _write(root: Path, contents: dict[str, bytes]) -> dict[str, bytes]:
    for rel, data in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return contents


def campaign_contents(seed: int = 11) -> dict[str, bytes]:
    """Twenty-four shards of 1 to 16 chunks of 4 KiB (some exact multiples), a config file
    and a one-byte file: many small blobs, so one mount has many never-opened files."""
    rng = random.Random(seed)
    contents = {"config.json": b'{"model_type": "campaign", "layers": 24}\n', "one-byte": b"\x07"}
    for index in range(24):
        chunks = rng.randrange(1, 17)
        size = chunks * CAMPAIGN_CHUNK
        if index % 4:
            size -= rng.randrange(1, CAMPAIGN_CHUNK)
        contents[f"shards/shard-{index:02d}.bin"] = rng.randbytes(size)
    return contents


def stress_contents(seed: int = 21) -> dict[str, bytes]:
    """Four weights files, 6.8 MiB in all: larger than the stress tests' chunk cache."""
    rng = random.Random(seed)
    sizes = {
        "model-00001.safetensors": 3 * (1 << 20) + 17,
        "model-00002.safetensors": 2 * (1 << 20),
        "model-00003.safetensors": (1 << 20) - 1,
        "tokenizer.bin": 700_001,
    }
    return {name: rng.randbytes(size) for name, size in sizes.items()}


def write_campaign_model(root: Path, seed: int = 11) -> dict[str, bytes]:
    return _write(root, campaign_contents(seed))


def write_stress_model(root: Path, seed: int = 21) -> dict[str, bytes]:
    return _write(root, stress_contents(seed))
