"""The cmlfs command as a user runs it: success and failure paths of every command."""

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmlfs.format.layout import HEADER_LEN
from cmlfs.manifest import MANIFEST_NAME
from cmlfs.mountpoint import mount_entry
from tests.conftest import daemon_pid, force_unmount, mounted, run_cli, tree_digests

COMMANDS = ["keygen", "encrypt", "sign", "inspect", "verify", "mount", "umount"]


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cmlfs: error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command):
    result = run_cli(command, "--help")
    assert f"usage: cmlfs {command}" in result.stdout
    assert len(result.stdout.splitlines()) > 3


def test_keygen_writes_32_private_bytes_and_never_overwrites(tmp_path):
    key = tmp_path / "k"
    run_cli("keygen", "--out", key)
    assert len(key.read_bytes()) == 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    assert_one_line_error(run_cli("keygen", "--out", key, check=False), "refusing to overwrite")
    assert key.read_bytes() == before


def test_encrypt_inspect_verify_round_trip(encrypted_model):
    _, contents, store, key = encrypted_model
    public = run_cli("inspect", store).stdout
    assert "key id:" in public and "model.safetensors" not in public
    private = run_cli("inspect", store, "--key-file", key).stdout
    for name, data in contents.items():
        assert any(line.split(None, 1) == [str(len(data)), name] for line in private.splitlines())
    assert run_cli("verify", store, "--key-file", key).stdout.startswith("ok: 10 files")
    assert "\n" not in run_cli("verify", store, "--key-file", key).stderr.strip()


def test_encrypt_refuses_a_non_empty_store(sample_model, key_file, tmp_path):
    src, _ = sample_model
    store = tmp_path / "store"
    store.mkdir()
    (store / "keep.txt").write_text("mine")
    assert_one_line_error(
        run_cli("encrypt", src, store, "--key-file", key_file, check=False), "not empty"
    )
    assert [p.name for p in store.iterdir()] == ["keep.txt"]


def test_encrypt_refuses_a_symlink_out_of_the_source(sample_model, key_file, tmp_path):
    src, _ = sample_model
    secret = tmp_path / "outside.txt"
    secret.write_text("outside")
    (src / "link").symlink_to(secret)
    store = tmp_path / "store"
    result = run_cli("encrypt", src, store, "--key-file", key_file, check=False)
    assert_one_line_error(result, "link", "leads out of")
    assert not store.exists()


def test_encrypt_follows_a_symlink_to_a_file_inside_the_source(sample_model, key_file, tmp_path):
    src, contents = sample_model
    (src / "alias.json").symlink_to("config.json")
    store = tmp_path / "store"
    run_cli("encrypt", src, store, "--key-file", key_file)
    with mounted(store, tmp_path / "mnt", "--key-file", key_file) as mnt:
        assert (mnt / "alias.json").read_bytes() == contents["config.json"]
        assert not (mnt / "alias.json").is_symlink()


def test_encrypt_refuses_special_files_and_bad_names(sample_model, key_file, tmp_path):
    src, _ = sample_model
    os.mkfifo(src / "pipe")
    assert_one_line_error(
        run_cli("encrypt", src, tmp_path / "s1", "--key-file", key_file, check=False),
        "not a regular file",
    )
    os.unlink(src / "pipe")
    (src / os.fsdecode(b"latin1-\xe9")).write_bytes(b"x")
    assert_one_line_error(
        run_cli("encrypt", src, tmp_path / "s2", "--key-file", key_file, check=False), "UTF-8"
    )
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_encrypt_refuses_a_store_inside_the_source(sample_model, key_file):
    src, _ = sample_model
    result = run_cli("encrypt", src, src / "store", "--key-file", key_file, check=False)
    assert_one_line_error(result, "inside the source")


@pytest.mark.parametrize("size", ["3000", "8M", "1K", "lots"])
def test_encrypt_rejects_invalid_chunk_sizes(sample_model, key_file, tmp_path, size):
    src, _ = sample_model
    result = run_cli(
        "encrypt", src, tmp_path / "s", "--key-file", key_file, "--chunk-size", size, check=False
    )
    assert result.returncode == 2 and "chunk-size" in result.stderr


@pytest.mark.parametrize(("algorithm", "chunk"), [("aes-256-gcm", "4K"), ("aes-256-gcm-siv", "4M")])
def test_other_algorithm_and_chunk_sizes_mount_and_read_back(
    sample_model, key_file, tmp_path, algorithm, chunk
):
    src, _ = sample_model
    store = tmp_path / "store"
    run_cli(
        "encrypt",
        src,
        store,
        "--key-file",
        key_file,
        "--algorithm",
        algorithm,
        "--chunk-size",
        chunk,
    )
    assert algorithm in run_cli("inspect", store, "--key-file", key_file).stdout
    with mounted(store, tmp_path / "mnt", "--key-file", key_file) as mnt:
        assert tree_digests(mnt) == tree_digests(src)


def test_key_uri_recorded_at_encrypt_time_is_used_only_with_a_pinned_key_id(
    sample_model, key_file, tmp_path
):
    src, _ = sample_model
    store = tmp_path / "store"
    run_cli(
        "encrypt", src, store, "--key-file", key_file, "--key-uri", key_file.absolute().as_uri()
    )
    public = run_cli("inspect", store).stdout
    assert key_file.absolute().as_uri() in public
    model_key_id = next(
        line.split()[-1] for line in public.splitlines() if line.startswith("key id")
    )
    (tmp_path / "mnt").mkdir()
    unpinned = run_cli("mount", store, tmp_path / "mnt", check=False)
    assert_one_line_error(unpinned, "--key-id")
    assert_one_line_error(run_cli("verify", store, check=False), "not authenticated")
    wrong_pin = run_cli("mount", store, tmp_path / "mnt", "--key-id", "0" * 32, check=False)
    assert_one_line_error(wrong_pin, "not the pinned")
    assert mount_entry(tmp_path / "mnt") is None
    with mounted(store, tmp_path / "mnt", "--key-id", model_key_id) as mnt:
        assert tree_digests(mnt) == tree_digests(src)
    assert run_cli("verify", store, "--key-id", model_key_id).stdout.startswith("ok:")


def test_verify_names_the_first_damaged_file_and_chunk(encrypted_model, tmp_path):
    _, _, store, key = encrypted_model
    listing = run_cli("inspect", store, "--key-file", key).stdout
    assert "model.safetensors" in listing
    blob = _blob_of(store, key, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[HEADER_LEN + 2 * (65536 + 28) + 9] ^= 4
    blob.write_bytes(data)
    result = run_cli("verify", store, "--key-file", key, check=False)
    assert_one_line_error(result, "model.safetensors", "chunk 2")


def test_wrong_key_is_refused_by_verify_inspect_and_mount(encrypted_model, tmp_path):
    _, _, store, _ = encrypted_model
    wrong = tmp_path / "wrong"
    run_cli("keygen", "--out", wrong)
    for args in (("verify", store), ("inspect", store), ("mount", store, tmp_path / "mnt")):
        (tmp_path / "mnt").mkdir(exist_ok=True)
        assert_one_line_error(run_cli(*args, "--key-file", wrong, check=False), "wrong key")
    assert mount_entry(tmp_path / "mnt") is None


def test_bad_key_file_and_missing_store_give_one_line(encrypted_model, tmp_path):
    _, _, store, _ = encrypted_model
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    assert_one_line_error(
        run_cli("verify", store, "--key-file", short, check=False), "32 raw bytes"
    )
    assert_one_line_error(
        run_cli("verify", store, "--key-file", tmp_path / "nope", check=False),
        "cannot open key file",
    )
    assert_one_line_error(run_cli("inspect", tmp_path / "no-store", check=False), "does not exist")
    no_uri = run_cli("mount", store, tmp_path, check=False)
    assert_one_line_error(no_uri, "no key URI")


def test_mount_refuses_a_missing_mountpoint_and_an_existing_mount(encrypted_model, tmp_path):
    _, _, store, key = encrypted_model
    assert_one_line_error(
        run_cli("mount", store, tmp_path / "absent", "--key-file", key, check=False), "not a folder"
    )
    with mounted(store, tmp_path / "mnt", "--key-file", key) as mnt:
        again = run_cli("mount", store, mnt, "--key-file", key, check=False)
        assert_one_line_error(again, "already mounted")
        assert (mnt / "config.json").exists()


def test_umount_unmounts_and_refuses_what_is_not_a_cmlfs_mount(encrypted_model, tmp_path):
    _, _, store, key = encrypted_model
    with mounted(store, tmp_path / "mnt", "--key-file", key) as mnt:
        pid = daemon_pid(mnt)
        run_cli("umount", mnt)
        assert mount_entry(mnt) is None
        _wait_gone(pid)
    assert_one_line_error(run_cli("umount", tmp_path / "mnt", check=False), "not a cmlfs mount")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_unmounts_a_foreground_daemon_cleanly(encrypted_model, tmp_path, signum):
    _, contents, store, key = encrypted_model
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cmlfs", "mount", store, mnt, "--key-file", key, "--foreground"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: mount_entry(mnt) is not None)
        assert (mnt / "config.json").read_bytes() == contents["config.json"]
        daemon.send_signal(signum)
        _, err = daemon.communicate(timeout=20)
        assert daemon.returncode == 0, err
        assert mount_entry(mnt) is None
        assert "event=unmounted" in err
    finally:
        daemon.kill()
        force_unmount(mnt)


def test_a_killed_daemons_stale_mount_is_recovered_by_the_next_mount(encrypted_model, tmp_path):
    _, contents, store, key = encrypted_model
    mnt = tmp_path / "mnt"
    with mounted(store, mnt, "--key-file", key):
        pid = daemon_pid(mnt)
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
        assert mount_entry(mnt) is not None
        with pytest.raises(OSError):
            os.listdir(mnt)
        run_cli("mount", store, mnt, "--key-file", key)
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]


def _blob_of(store: Path, key: Path, path: str) -> Path:
    from cmlfs.manifest import open_manifest

    manifest = open_manifest((store / MANIFEST_NAME).read_bytes(), key.read_bytes())
    return store / next(f.blob_name for f in manifest.files if f.path == path)


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _wait_gone(pid: int) -> None:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") >= 0

    _wait_for(gone)


def test_mount_logs_to_the_log_file_and_refuses_one_it_cannot_write(encrypted_model, tmp_path):
    _, contents, store, key = encrypted_model
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unwritable = tmp_path / "missing-folder" / "daemon.log"
    result = run_cli("mount", store, mnt, "--key-file", key, "--log-file", unwritable, check=False)
    assert_one_line_error(result, "cannot open log file")
    assert mount_entry(mnt) is None
    log = tmp_path / "daemon.log"
    run_cli("mount", store, mnt, "--key-file", key, "--log-file", log)
    try:
        name, data = next(iter(contents.items()))
        assert (mnt / name).read_bytes() == data
    finally:
        run_cli("umount", mnt)
    deadline = time.monotonic() + 10
    while "event=unmounted" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "event=unmounted" in log.read_text()  # the detached daemon wrote there to the end
