"""The entrypoint shared by the image and the systemd unit, run on this host; the unit itself."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cmlfs.format.keys import key_id
from cmlfs.mountpoint import mount_entry
from tests.conftest import force_unmount, run_cli, tree_digests, write_sample_model
from tests.deploy.conftest import ROOT, stop, wait_for
from tests.signing_helpers import der_fingerprint, ec_pair

ENTRYPOINT = ROOT / "container" / "entrypoint.sh"
UNIT = ROOT / "deploy" / "systemd" / "cmlfs@.service"


@pytest.mark.fuse
def test_entrypoint_mounts_on_a_subdirectory_and_unmounts_on_sigterm(tmp_path):
    write_sample_model(tmp_path / "src")
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", tmp_path / "src", tmp_path / "store", "--key-file", key)
    mnt = tmp_path / "volume" / "model"  # created by the entrypoint
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CMLFS_STORE": str(tmp_path / "store"),
        "CMLFS_MOUNT": str(mnt),
        "CMLFS_HTTP": "127.0.0.1:0",
    }
    process = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "--key-file", str(key)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: mount_entry(mnt) is not None, what="the mount")
        assert tree_digests(mnt) == tree_digests(tmp_path / "src")
        assert "allow_other" in Path("/proc/self/mountinfo").read_text().split(f" {mnt} ")[1]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        stop(process, signal.SIGKILL)
        force_unmount(mnt)
    assert process.returncode == 0, err
    assert mount_entry(mnt) is None
    assert "event=unmounted" in err


@pytest.mark.fuse
def test_entrypoint_passes_the_trusted_publisher_and_minimum_version(tmp_path):
    """CMLFS_TRUST_PUBLISHER and CMLFS_MIN_MODEL_VERSION reach the mount: a store signed by
    the publisher mounts; with another publisher's key, or a newer minimum, it is refused."""
    write_sample_model(tmp_path / "src")
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    publisher, other = ec_pair(tmp_path, "publisher"), ec_pair(tmp_path, "other")
    run_cli(
        "encrypt", tmp_path / "src", tmp_path / "store", "--key-file", key,
        "--model-version", "3.1", "--sign-key", publisher[0],
    )  # fmt: skip
    mnt = tmp_path / "volume" / "model"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CMLFS_STORE": str(tmp_path / "store"),
        "CMLFS_MOUNT": str(mnt),
        "PYTHONPATH": str(ROOT),  # the console script runs this checkout's cmlfs
        "CMLFS_TRUST_PUBLISHER": str(publisher[1]),
        "CMLFS_MIN_MODEL_VERSION": "3",
    }
    process = subprocess.Popen(["sh", str(ENTRYPOINT), "--key-file", str(key)], env=env)
    try:
        wait_for(lambda: mount_entry(mnt) is not None, what="the mount")
        assert tree_digests(mnt) == tree_digests(tmp_path / "src")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        stop(process, signal.SIGKILL)
        force_unmount(mnt)
    for change, needle in (
        ({"CMLFS_TRUST_PUBLISHER": str(other[1])}, der_fingerprint(publisher[1])),
        ({"CMLFS_MIN_MODEL_VERSION": "3.2"}, "older than --min-model-version 3.2"),
    ):
        refused = subprocess.run(
            ["sh", str(ENTRYPOINT), "--key-file", str(key)],
            env={**env, **change},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0 and needle in refused.stderr, refused.stderr
        assert mount_entry(mnt) is None


@pytest.mark.parametrize("mount", ["/data", "data/model", ""])
def test_entrypoint_refuses_a_mount_at_the_volume_root(mount):
    result = subprocess.run(
        ["sh", str(ENTRYPOINT)],
        env={"PATH": "/usr/bin:/bin", "CMLFS_STORE": "/store", "CMLFS_MOUNT": mount},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "CMLFS_MOUNT" in result.stderr


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    """The unit, with its entrypoint at this checkout's path instead of /usr/local/bin."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: install Debian package systemd")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/cmlfs-entrypoint", str(ENTRYPOINT)))
    assert os.access(ENTRYPOINT, os.X_OK)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(tmp_path / "cmlfs@llama.service")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_unit_uses_no_mount_namespace():
    """A private mount namespace would hide the FUSE mount from the model server."""
    settings = {
        line.split("=", 1)[0]
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    hiding = {
        "PrivateTmp", "ProtectSystem", "ProtectHome", "ReadOnlyPaths", "InaccessiblePaths",
        "TemporaryFileSystem", "PrivateDevices", "ProtectKernelModules", "PrivateMounts",
        "BindPaths", "MountFlags", "RootDirectory",
    }  # fmt: skip
    assert not settings & hiding


@pytest.mark.fuse
def test_entrypoint_pins_the_key_id_and_refuses_another_model(tmp_path):
    """CMLFS_KEY_ID becomes --key-id: with it the key URI recorded in the store is used, and a
    store sealed for another key is refused (the unit and the image both run this script)."""
    write_sample_model(tmp_path / "src")
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    store = tmp_path / "store"
    run_cli("encrypt", tmp_path / "src", store, "--key-file", key, "--key-uri", f"file://{key}")
    mnt = tmp_path / "volume" / "model"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CMLFS_STORE": str(store),
        "CMLFS_MOUNT": str(mnt),
        "CMLFS_KEY_ID": key_id(os.urandom(32)),
    }
    refused = subprocess.run(
        ["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0 and "not the pinned" in refused.stderr
    assert mount_entry(mnt) is None
    env["CMLFS_KEY_ID"] = key_id(key.read_bytes())
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: mount_entry(mnt) is not None, what="the mount")
        assert tree_digests(mnt) == tree_digests(tmp_path / "src")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        stop(process, signal.SIGKILL)
        force_unmount(mnt)


def test_entrypoint_passes_key_id_and_both_ca_files(tmp_path):
    """The environment the unit's env file and the chart set, as cmlfs options."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cmlfs"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CMLFS_STORE": "oci://registry.example/m:v1",
        "CMLFS_MOUNT": str(tmp_path / "volume" / "model"),
        "CMLFS_KEY_ID": "0123456789abcdef0123456789abcdef",
        "CMLFS_KBS_CA": "/etc/cmlfs/kbs-ca.pem",
        "CMLFS_STORE_CA": "/etc/cmlfs/store-ca.pem",
    }
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "--attester", "tdx"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    argv = result.stdout.splitlines()
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert pairs["--key-id"] == env["CMLFS_KEY_ID"]
    assert pairs["--kbs-ca"] == env["CMLFS_KBS_CA"]
    assert pairs["--store-ca"] == env["CMLFS_STORE_CA"]
    assert pairs["--attester"] == "tdx"


def test_systemd_unit_documents_the_key_id_and_the_ca_files():
    header = UNIT.read_text().split("[Unit]")[0]
    for variable in ("CMLFS_KEY_ID", "CMLFS_KBS_CA", "CMLFS_STORE_CA"):
        assert variable in header and variable in ENTRYPOINT.read_text()
