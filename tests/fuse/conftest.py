"""FUSE tier: real mounts of encrypted models, made once per module where possible."""

import shutil

import pytest

from tests.conftest import mounted, run_cli, write_sample_model

if shutil.which("fusermount3") is None:
    pytest.exit("fusermount3 is missing: run scripts/setup.sh", returncode=1)


@pytest.fixture(scope="module")
def mounted_sample(tmp_path_factory):
    """(mountpoint, contents, source folder) of the sample model mounted read-only."""
    root = tmp_path_factory.mktemp("fuse")
    src = root / "model"
    contents = write_sample_model(src)
    key = root / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", src, root / "store", "--key-file", key)
    with mounted(root / "store", root / "mnt", "--key-file", key) as mnt:
        yield mnt, contents, src
