"""Smoke run of bench_read's first-byte scenario (the benchmark itself runs late, by hand, at
size): a small model mounted and read by the very code the benchmark times, against decrypting
it all into a RAM disk both ways (one process, --workers 2), the faster being the baseline.
No caches are dropped here."""

import pytest

from benchmarks import bench_read
from benchmarks.lib import MIB, make_random_file
from tests.conftest import run_cli

pytestmark = pytest.mark.fuse


def test_the_first_byte_baseline_is_the_faster_decrypter(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_read, "drop_caches", lambda: None)  # global: not in CI
    ws = bench_read.Workspace(tmp_path, 4 * MIB)
    make_random_file(ws.plain / bench_read.FILE, ws.size)
    run_cli("keygen", "--out", ws.key)
    run_cli("encrypt", ws.plain, ws.stores["cmlfs-gcm-siv"], "--key-file", ws.key)
    latency, mounted, memory = bench_read.first_byte(ws, 1)
    assert set(latency.samples) == {
        "cmlfs-mount",
        "cmlfs-mount-2w",
        "ramdisk-decrypt-all-1w",
        "ramdisk-decrypt-all-2w",
        "ramdisk-decrypt-all",
    }
    fastest = min(
        latency.samples["ramdisk-decrypt-all-1w"] + latency.samples["ramdisk-decrypt-all-2w"]
    )
    assert latency.samples["ramdisk-decrypt-all"] == [fastest]
    for label in ("cmlfs-mount", "cmlfs-mount-2w"):  # the mount returned before the first MiB
        assert 0 < mounted.samples[label][0] <= latency.samples[label][0]
    assert memory.samples["ramdisk-decrypt-all"] == [ws.size / MIB]
