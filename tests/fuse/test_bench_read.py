"""Smoke runs of bench_read's scenarios (the benchmark itself runs late, by hand, at size):
small stores mounted and read by the very code the benchmark times. No caches are dropped
here."""

import pytest

from benchmarks import bench_read
from benchmarks.lib import MIB, make_random_file
from tests.conftest import run_cli

pytestmark = pytest.mark.fuse


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> bench_read.Workspace:
    """A small plaintext file and a key; each test encrypts the stores it needs."""
    monkeypatch.setattr(bench_read, "drop_caches", lambda: None)  # global: not in CI
    ws = bench_read.Workspace(tmp_path, 4 * MIB)
    make_random_file(ws.plain / bench_read.FILE, ws.size)
    run_cli("keygen", "--out", ws.key)
    return ws


def test_the_format_scenario_measures_both_formats(workspace):
    ws = workspace
    for variant, version in (("cmlfs-gcm-siv-f1", "1"), ("cmlfs-gcm-siv", "2")):
        run_cli("encrypt", ws.plain, ws.stores[variant], "--key-file", ws.key, "--format", version)
    speed, cpu = bench_read.format_cold(ws, 1)
    assert (speed.baseline, cpu.baseline) == ("cmlfs-gcm-siv-f1", "cmlfs-gcm-siv-f1")
    for m in (speed, cpu):
        assert set(m.samples) == {"cmlfs-gcm-siv-f1", "cmlfs-gcm-siv", "cmlfs-gcm-siv-t2"}
    assert all(value > 0 for values in speed.samples.values() for value in values)


def test_the_first_byte_baseline_is_the_faster_decrypter(workspace):
    """Decrypt-all into a RAM disk both ways (one process, --workers 2): the faster of the
    round is the baseline; the mount returned before the first MiB was held. The same with
    the key from a key broker, timed from the broker's release of the key (which came after
    `cmlfs mount` started)."""
    ws = workspace
    run_cli("encrypt", ws.plain, ws.stores["cmlfs-gcm-siv"], "--key-file", ws.key)
    latency, mounted, memory, brokered, attested = bench_read.first_byte(ws, 1)
    decrypt_all = {"ramdisk-decrypt-all-1w", "ramdisk-decrypt-all-2w", "ramdisk-decrypt-all"}
    assert set(latency.samples) == {"cmlfs-mount", "cmlfs-mount-2w", *decrypt_all}
    assert set(brokered.samples) == {"cmlfs-mount", *decrypt_all}
    for m in (latency, brokered):
        both = m.samples["ramdisk-decrypt-all-1w"] + m.samples["ramdisk-decrypt-all-2w"]
        assert m.samples["ramdisk-decrypt-all"] == [min(both)]
        assert all(value > 0 for values in m.samples.values() for value in values)
    for label in ("cmlfs-mount", "cmlfs-mount-2w"):
        assert 0 < mounted.samples[label][0] <= latency.samples[label][0]
    assert memory.samples["ramdisk-decrypt-all"] == [ws.size / MIB]
    assert attested.samples["cmlfs-mount"][0] > 0  # the release came after the mount started
    assert not (ws.root / "kbs-repository").exists()  # the broker's key is not left behind
