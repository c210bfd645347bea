"""A mount of a folder store with a key file loads no stack it does not use: none of the
key-release (jwcrypto, rfc8785), HTTP, metrics, vTPM or S3 stacks from start to a served
read, and tink only for a GCM-SIV model. Checked on the daemon's own imports
(``-X importtime``) through a real mount and real reads; the start-up cost is measured in
benchmarks/RESULTS.md ("Lazy imports"). Through a key broker, tink is imported while the
broker still holds the key back, not after it released it (RESULTS.md, "First byte")."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cmlfs.devkbs import DevKbs, DevKbsConfig
from cmlfs.format.keys import key_id
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


def served_imports(store, mountpoint, source, stderr: Path, *key_options) -> set[str]:
    """Mount in the foreground, read every file (checked against ``source``), unmount; the
    modules the daemon imported meanwhile, read from its stderr, written to the file
    ``stderr`` (a pipe left unread while the mount starts could fill and stall it)."""
    mountpoint.mkdir()
    command = [sys.executable, "-m", "cmlfs", "mount", store, mountpoint, *key_options]
    with stderr.open("w") as errors:
        daemon = subprocess.Popen(
            [*command, "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
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
        daemon.wait(timeout=60)
    finally:
        force_unmount(mountpoint)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    output = stderr.read_text()
    assert daemon.returncode == 0, output[-2000:]
    return imported_modules(output)


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "aes-256-gcm-siv"])
def test_folder_mount_with_key_file_loads_only_what_it_uses(tmp_path, algorithm):
    source = tmp_path / "model"
    write_sample_model(source)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", source, tmp_path / "store", "--key-file", key, "--algorithm", algorithm)
    modules = served_imports(
        tmp_path / "store", tmp_path / "mnt", source, tmp_path / "daemon.err", "--key-file", key
    )
    assert {"pyfuse3", "trio", "cmlfs.daemon.mount"} <= modules  # the daemon's imports were read
    assert loaded_of(modules, ON_DEMAND_MODULES) == set()
    # BoringSSL's GCM-SIV opens GCM-SIV records; AES-256-GCM is cryptography's
    assert ("tink" in modules) == (algorithm == "aes-256-gcm-siv")


class WithholdingKbs(DevKbs):
    """dev-kbs that holds a release back (with ``withhold``) until the daemon's stderr
    (``-X importtime``) shows tink imported, or 20 s passed; ``tink_first`` says whether
    tink came first."""

    def __init__(self, config: DevKbsConfig, daemon_stderr: Path, withhold: bool) -> None:
        super().__init__(config)
        self.daemon_stderr = daemon_stderr
        self.withhold = withhold
        self.tink_first = threading.Event()

    def release(self, *args, **kwargs) -> dict:
        deadline = time.monotonic() + 20
        while self.withhold and time.monotonic() < deadline and not self.tink_first.is_set():
            if "tink" in imported_modules(self.daemon_stderr.read_text()):
                self.tink_first.set()
            time.sleep(0.01)
        return super().release(*args, **kwargs)


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "aes-256-gcm-siv"])
def test_tink_is_imported_while_the_broker_still_holds_the_key(tmp_path, algorithm):
    """The daemon imports what opens a GCM-SIV model (tink) while it attests and waits for
    the key, not once it has it; a GCM model still never imports tink. The broker withholds
    the key until tink shows among the daemon's imports: the old daemon, which imported it
    only with the key in hand, never showed it (the broker gave up after 20 s)."""
    source = tmp_path / "model"
    write_sample_model(source)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", source, tmp_path / "store", "--key-file", key, "--algorithm", algorithm)
    repository = tmp_path / "repository"
    repository.mkdir()
    stderr = tmp_path / "daemon.err"
    stderr.touch()
    gcm_siv = algorithm == "aes-256-gcm-siv"
    config = DevKbsConfig(repository=repository, port=0)
    kbs = WithholdingKbs(config, stderr, withhold=gcm_siv).start()
    try:
        kbs.repository.write("default/model/key", key.read_bytes())
        options = ["--key-uri", f"kbs://127.0.0.1:{kbs.httpd.server_address[1]}/default/model/key"]
        options += ["--attester", "sample", "--insecure-kbs-http"]
        options += ["--key-id", key_id(key.read_bytes())]
        modules = served_imports(tmp_path / "store", tmp_path / "mnt", source, stderr, *options)
    finally:
        kbs.stop()
    assert {"cmlfs.keys.kbs", "trio", "pyfuse3"} <= modules
    assert ("tink" in modules) == gcm_siv
    assert kbs.tink_first.is_set() == gcm_siv
