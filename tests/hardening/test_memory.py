"""Key and plaintext memory: no core dumps (daemon, inspect, verify), locked against swap
where RLIMIT_MEMLOCK or CAP_IPC_LOCK allows, one log line and a working mount where not."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from cmlfs.mountpoint import mount_entry
from tests.conftest import daemon_pid, force_unmount, run_cli
from tests.hardening.stress import core_dump_limit, proc_status

pytestmark = [pytest.mark.fuse, pytest.mark.hardening]


def test_without_cap_ipc_lock_a_small_memlock_limit_is_one_log_line_and_the_mount_works(
    encrypted_model, tmp_path
):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop CAP_IPC_LOCK")
    _, contents, store, key = encrypted_model
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    mnt.mkdir()
    command = ["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock", "--"]
    command += ["prlimit", "--memlock=65536:65536", sys.executable, "-m", "cmlfs", "mount"]
    command += [store, mnt, "--key-file", key, "--log-file", log]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=60)
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
        assert proc_status(daemon_pid(mnt), "VmLck") == 0
        lines = [line for line in log.read_text().splitlines() if "memory_" in line]
        assert len(lines) == 1 and "event=memory_not_locked" in lines[0]
        assert "RLIMIT_MEMLOCK is 65536 bytes" in lines[0]
    finally:
        force_unmount(mnt)


@pytest.mark.parametrize("command", ["inspect", "verify"])
def test_inspect_and_verify_disable_core_dumps_before_they_read_the_key(
    encrypted_model, tmp_path, command
):
    """The key file is a FIFO: the command blocks opening it (its kernel wait channel is
    ``wait_for_partner``), i.e. just before the key enters its memory, and its core file
    limit is checked at that moment."""
    _, _, store, _ = encrypted_model
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "cmlfs", command, store, "--key-file", fifo],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while _wait_channel(process.pid) != "wait_for_partner":
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.01)
        assert core_dump_limit(process.pid) == ["0", "0"]
    finally:
        os.close(os.open(fifo, os.O_WRONLY))  # release it: a FIFO is not a key file
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1 and b"not a regular file" in stderr


def _wait_channel(pid: int) -> str:
    with open(f"/proc/{pid}/wchan") as f:
        return f.read()


def test_the_daemon_never_dumps_core(encrypted_model, tmp_path):
    _, _, store, key = encrypted_model
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        run_cli("mount", store, mnt, "--key-file", key)
        assert mount_entry(mnt) is not None
        assert core_dump_limit(daemon_pid(mnt)) == ["0", "0"]
    finally:
        force_unmount(mnt)
