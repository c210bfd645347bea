"""Faults under load: store failures, a missing key broker, a killed daemon, a full or
read-only disk cache. Readers see source bytes or an error, never wrong bytes; the daemon
survives where it should, and each fault leaves a clear log line."""

import errno
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from cmlfs.format.keys import key_id
from cmlfs.mountpoint import mount_entry, mount_is_dead
from tests.conftest import daemon_pid, force_unmount, mounted, run_cli
from tests.e2e.stores_servers import free_port
from tests.e2e.test_key_release import error_lines
from tests.hardening.stress import StressReport, run_stress

pytestmark = [pytest.mark.fuse, pytest.mark.hardening]

EIO = frozenset({errno.EIO})
DEAD = frozenset({errno.EIO, errno.ENOTCONN, errno.ECONNABORTED})


def stress_in_background(mnt, contents, seconds, tolerated) -> tuple[threading.Thread, list]:
    result: list[StressReport | BaseException] = []

    def work() -> None:
        try:
            result.append(run_stress(mnt, contents, seconds, 8, False, tolerated, settle=0))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    return thread, result


def finished(thread: threading.Thread, result: list) -> StressReport:
    thread.join(120)
    assert result, "the readers did not finish"
    if isinstance(result[0], BaseException):
        raise result[0]
    print(result[0].summary())
    return result[0]


def assert_reads_back(mnt, contents) -> None:
    for name, data in contents.items():
        assert (mnt / name).read_bytes() == data, name


@pytest.mark.expect_log("event=read_failed .*gave up after 2 attempts")
def test_store_faults_during_stress_give_eio_never_wrong_bytes(
    stress_model, nginx, proxy, tmp_path
):
    root, contents, key = stress_model
    shutil.copytree(root / "store", nginx.root / "fault-stress", dirs_exist_ok=True)
    log = tmp_path / "daemon.log"
    store = f"{proxy.url}/fault-stress"
    options = ["--key-file", key, "--cache-size", "1M", "--store-timeout", "1"]
    options += ["--store-attempts", "2", "--log-file", log]
    with mounted(store, tmp_path / "mnt", *options) as mnt:
        thread, result = stress_in_background(mnt, contents, 14, EIO)
        time.sleep(1)
        for kind in ("reset", "503", "500", "short", "stall"):
            proxy.inject(kind, "/fault-stress/blobs/", times=None)
            time.sleep(2)
            proxy.reset()
        report = finished(thread, result)
        assert not mount_is_dead(mnt)
        assert_reads_back(mnt, contents)  # the daemon survived and recovered
    assert report.mismatches == 0
    assert report.errors.get("EIO", 0) > 0, "the faults never reached a reader"
    text = log.read_text()
    assert "event=store_retry" in text and "event=read_failed" in text
    assert "Traceback" not in text and "handler_crashed" not in text


def test_a_key_broker_that_is_down_refuses_the_mount_with_one_line(encrypted_model, tmp_path):
    _, _, store, key_file = encrypted_model
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    uri = f"kbs://127.0.0.1:{free_port()}/default/model/demo"
    started = time.monotonic()
    result = run_cli(
        "mount",
        store,
        mnt,
        "--key-uri",
        uri,
        "--attester",
        "sample",
        "--insecure-kbs-http",
        "--key-id",
        key_id(key_file.read_bytes()),
        check=False,
    )
    try:
        assert result.returncode == 1
        lines = error_lines(result.stderr)
        assert (
            len(lines) == 1 and lines[0].startswith("cmlfs: error: ") and "cannot reach" in lines[0]
        )
        assert mount_entry(mnt) is None
        assert time.monotonic() - started < 60
    finally:
        force_unmount(mnt)


@pytest.mark.expect_log("event=stale_mount_cleared")
def test_sigkill_under_load_gives_errors_never_wrong_bytes_and_a_restart_recovers(
    stress_model, tmp_path
):
    root, contents, key = stress_model
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    options = ["--key-file", key, "--cache-size", "1M", "--log-file", log]
    with mounted(root / "store", mnt, *options):
        pid = daemon_pid(mnt)
        thread, result = stress_in_background(mnt, contents, 4, DEAD)
        time.sleep(1.5)
        os.kill(pid, signal.SIGKILL)
        report = finished(thread, result)
        assert report.mismatches == 0
        assert report.errors.get("ENOTCONN", 0) + report.errors.get("ECONNABORTED", 0) > 0
        assert mount_entry(mnt) is not None and mount_is_dead(mnt)  # stale
        run_cli("mount", root / "store", mnt, *options)
        assert daemon_pid(mnt) != pid
        assert_reads_back(mnt, contents)
    assert "event=stale_mount_cleared" in log.read_text()


@pytest.mark.parametrize(
    ("options", "reason"),
    [("size=64k", "No space left on device"), ("ro", "Read-only file system")],
    ids=["full", "read-only"],
)
@pytest.mark.expect_log("event=disk_cache_write_failed")  # and nothing else
def test_a_full_or_read_only_disk_cache_costs_only_the_cache(
    stress_model, tmp_path, options, reason
):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    root, contents, key = stress_model
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", cache], check=True)
    try:
        log = tmp_path / "daemon.log"
        args = ["--key-file", key, "--disk-cache", cache, "--log-file", log]
        with mounted(root / "store", tmp_path / "mnt", *args) as mnt:
            assert_reads_back(mnt, contents)
            assert not mount_is_dead(mnt)
        lines = [line for line in log.read_text().splitlines() if "disk_cache_write_failed" in line]
        assert lines and all(reason in line for line in lines)
    finally:
        subprocess.run(["umount", "-l", cache], check=False)
