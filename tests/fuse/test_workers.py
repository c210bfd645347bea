"""``--workers``: several processes serving one mount, through real mounts.

Reads from many threads at once return the plaintext and spread over the workers,
which hold the key as the daemon does (no core dumps, locked memory); a tampered
chunk still reads as EIO; losing a worker leaves the others serving; SIGTERM to the
daemon stops every worker and unmounts; metrics add up all workers.
"""

import errno
import os
import signal
import time
from pathlib import Path

import pytest

from cmlfs.format.layout import HEADER_LEN, RECORD_OVERHEAD
from cmlfs.manifest import MANIFEST_NAME, open_manifest
from cmlfs.mountpoint import mount_entry
from tests.conftest import (
    daemon_pid,
    mounted,
    proc_stat,
    read_in_pieces,
    run_cli,
    worker_pids,
)
from tests.deploy.conftest import metrics, status_url
from tests.hardening.stress import core_dump_limit, proc_status

pytestmark = pytest.mark.fuse

CHUNK = 64 * 1024
FILES = {"a.bin": 24 * CHUNK + 5, "b.bin": 16 * CHUNK}


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    src = tmp_path / "model"
    src.mkdir()
    contents = {name: os.urandom(size) for name, size in FILES.items()}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", src, tmp_path / "store", "--key-file", key)
    return tmp_path / "store", key, contents


def cpu_ticks(pid: int) -> int:
    fields = proc_stat(pid)
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_workers_serve_the_plaintext_together(store, tmp_path):
    path, key, contents = store
    with mounted(path, tmp_path / "mnt", "--key-file", key, "--workers", "2") as mnt:
        workers = worker_pids(mnt)
        assert len(workers) == 2 and daemon_pid(mnt) not in workers
        before = {pid: cpu_ticks(pid) for pid in workers}
        for _ in range(20):  # cache dropped between rounds, so every round decrypts again
            for name, data in contents.items():
                assert read_in_pieces(mnt / name, len(data)) == data
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        assert all(cpu_ticks(pid) > before[pid] for pid in workers), "a worker served nothing"
        for pid in workers:  # each holds the key: no core dump, memory locked (root)
            assert core_dump_limit(pid) == ["0", "0"]
            if os.geteuid() == 0:
                assert proc_status(pid, "VmLck") > 0


@pytest.mark.expect_log("event=chunk_rejected .*chunk 3")
def test_a_tampered_chunk_reads_as_eio_in_any_worker(store, tmp_path):
    path, key, contents = store
    manifest = open_manifest((path / MANIFEST_NAME).read_bytes(), key.read_bytes())
    blob = path / next(f.blob_name for f in manifest.files if f.path == "a.bin")
    damaged = HEADER_LEN + 3 * (CHUNK + RECORD_OVERHEAD) + 100  # inside chunk 3
    with open(blob, "r+b") as f:
        f.seek(damaged)
        byte = f.read(1)
        f.seek(damaged)
        f.write(bytes([byte[0] ^ 1]))
    with mounted(path, tmp_path / "mnt", "--key-file", key, "--workers", "2") as mnt:
        fd = os.open(mnt / "a.bin", os.O_RDONLY)
        try:
            for _ in range(4):  # whichever worker answers
                with pytest.raises(OSError) as err:
                    os.pread(fd, 10, 3 * CHUNK + 7)
                assert err.value.errno == errno.EIO
            assert os.pread(fd, CHUNK, 4 * CHUNK) == contents["a.bin"][4 * CHUNK : 5 * CHUNK]
        finally:
            os.close(fd)


@pytest.mark.expect_log("event=worker_exited .*code=-9")
def test_a_lost_worker_leaves_the_others_serving_and_sigterm_stops_all(store, tmp_path):
    path, key, contents = store
    with mounted(path, tmp_path / "mnt", "--key-file", key, "--workers", "3") as mnt:
        supervisor, workers = daemon_pid(mnt), worker_pids(mnt)
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while len(worker_pids(mnt)) != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(worker_pids(mnt)) == 2 and mount_entry(mnt) is not None
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        for name, data in contents.items():
            assert read_in_pieces(mnt / name, len(data)) == data
        os.kill(supervisor, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while mount_entry(mnt) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mount_entry(mnt) is None
        for pid in (supervisor, *workers[1:]):
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the mount"


@pytest.mark.expect_log("event=worker_exited .*code=-9", "event=daemon_failed")
def test_losing_every_worker_fails_the_daemon_and_unmounts(store, tmp_path):
    path, key, _ = store
    log = tmp_path / "daemon.log"
    with mounted(
        path, tmp_path / "mnt", "--key-file", key, "--workers", "2", "--log-file", log
    ) as mnt:
        supervisor = daemon_pid(mnt)
        for pid in worker_pids(mnt):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{supervisor}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{supervisor}").exists()
        assert mount_entry(mnt) is None  # unmounted, not left as a dead mount
    text = log.read_text()
    assert "every worker process exited while mounted" in text
    assert "event=unmounted" in text


def test_metrics_add_up_every_worker(store, tmp_path):
    path, key, contents = store
    args = ("--key-file", key, "--workers", "2", "--http", "127.0.0.1:0", "--cache-size", "8M")
    with mounted(path, tmp_path / "mnt", *args) as mnt:
        url = status_url(mnt)
        total = sum(len(d) for d in contents.values())
        for name, data in contents.items():
            assert read_in_pieces(mnt / name, len(data), 4 * CHUNK) == data
        deadline = time.monotonic() + 5
        while (seen := metrics(url))["cmlfs_read_bytes_total"] != total:
            assert time.monotonic() < deadline, seen["cmlfs_read_bytes_total"]
            time.sleep(0.1)
        assert seen["cmlfs_decrypted_bytes_total"] >= total
        assert seen["cmlfs_cache_budget_bytes"] == 8 << 20  # split between the workers
        assert seen["cmlfs_read_duration_seconds_count"] >= 2
        assert seen["cmlfs_ready"] == 1


def test_every_workers_budget_counts_before_its_first_read(store, tmp_path):
    """Regression: a worker published its counters only after serving a read, so a worker
    the kernel had not yet sent a read left its share of the budget out of /metrics."""
    path, key, _ = store
    args = ("--key-file", key, "--workers", "2", "--http", "127.0.0.1:0", "--cache-size", "8M")
    with mounted(path, tmp_path / "mnt", *args) as mnt:
        assert metrics(status_url(mnt))["cmlfs_cache_budget_bytes"] == 8 << 20


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (("--threads", "4"), "--workers reads on each worker's event loop: leave out --threads"),
        (("--disk-cache", "cache"), "--disk-cache is kept by one process"),
    ],
)
def test_workers_refuse_threads_and_a_disk_cache(store, tmp_path, option, message):
    path, key, _ = store
    (tmp_path / "mnt").mkdir()
    args = ("mount", path, tmp_path / "mnt", "--key-file", key, "--workers", "2", *option)
    result = run_cli(*args, check=False, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert mount_entry(tmp_path / "mnt") is None
