"""32 concurrent readers over a multi-file model whose cache budget is smaller than the model:
no mismatch, bounded daemon memory, no descriptor or thread leak, memory locked."""

import os

import pytest

from tests.conftest import daemon_pid, mounted
from tests.hardening.stress import core_dump_limit, proc_status, run_stress

pytestmark = [pytest.mark.fuse, pytest.mark.hardening]

SECONDS = float(os.environ.get("CMLFS_STRESS_SECONDS", "20"))
CACHE = 1 << 20
# As tests/fuse/test_large.py: the interpreter, libraries and in-flight request buffers.
RSS_MARGIN = 100 << 20


def test_32_readers_random_ranges_and_mmap_read_only_source_bytes(stress_model):
    root, contents, key = stress_model
    assert sum(map(len, contents.values())) > 4 * CACHE
    log = root / "daemon.log"
    options = ["--key-file", key, "--cache-size", str(CACHE), "--log-file", log]
    with mounted(root / "store", root / "mnt", *options) as mnt:
        report = run_stress(mnt, contents, SECONDS, readers=32)
        pid = daemon_pid(mnt)
        locked = proc_status(pid, "VmLck")
        core_limit = core_dump_limit(pid)
    print(report.summary())
    assert report.reads > 1000 and report.mismatches == 0 and report.errors == {}
    assert report.short_reads == 0
    assert report.peak_rss < CACHE + RSS_MARGIN
    assert report.fds_after == report.fds_before
    assert report.threads_after <= report.threads_before + (os.cpu_count() or 2)
    # Key and cache memory: no core dump, and locked against swap (root has CAP_IPC_LOCK).
    assert core_limit == ["0", "0"]
    if os.geteuid() == 0:
        assert locked > 0
        assert "event=memory_locked" in log.read_text()
