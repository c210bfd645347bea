"""A mount of a folder store with a key file loads no stack it does not use: none of the
key-release (jwcrypto, rfc8785), HTTP, metrics, vTPM or S3 stacks from start to a served
read, and tink only for a GCM-SIV model. Checked on the daemon's own imports
(``-X importtime``) through a real mount and real reads; the start-up cost is measured in
benchmarks/RESULTS.md ("Lazy imports")."""

import os
import subprocess
import sys
import time

import pytest

from cmlfs.mountpoint import mount_entry
from tests.conftest import (
    ON_DEMAND_MODULES,
    force_unmount,
    imported_modules,
    loaded_of,
    run_cli,
    tree_digests,
    write_sample_model,
)

pytestmark = pytest.mark.fuse


def served_imports(store, mountpoint, key, source) -> set[str]:
    """Mount in the foreground, read every file (checked against ``source``), unmount; the
    modules the daemon imported meanwhile."""
    mountpoint.mkdir()
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cmlfs",
            "mount",
            store,
            mountpoint,
            "--key-file",
            key,
            "--foreground",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )
    try:
        for _ in range(600):
            if mount_entry(mountpoint) is not None or daemon.poll() is not None:
                break
            time.sleep(0.05)
        assert mount_entry(mountpoint) is not None, "the mount did not appear"
        assert tree_digests(mountpoint) == tree_digests(source)
        run_cli("umount", mountpoint)
        _, stderr = daemon.communicate(timeout=60)
    finally:
        force_unmount(mountpoint)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0, stderr[-2000:]
    return imported_modules(stderr)


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "aes-256-gcm-siv"])
def test_folder_mount_with_key_file_loads_only_what_it_uses(tmp_path, algorithm):
    source = tmp_path / "model"
    write_sample_model(source)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", source, tmp_path / "store", "--key-file", key, "--algorithm", algorithm)
    modules = served_imports(tmp_path / "store", tmp_path / "mnt", key, source)
    assert {"pyfuse3", "trio", "cmlfs.daemon.mount"} <= modules  # the daemon's imports were read
    assert loaded_of(modules, ON_DEMAND_MODULES) == set()
    # BoringSSL's GCM-SIV opens GCM-SIV records; AES-256-GCM is cryptography's
    assert ("tink" in modules) == (algorithm == "aes-256-gcm-siv")
