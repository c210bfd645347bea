"""Smoke run of bench_read's format scenario (the benchmark itself runs late, by hand, at
size): a format-1 and a format-2 store of a small file, mounted and read cold by the very
code the benchmark times, with its CPU accounting. No caches are dropped here."""

import pytest

from benchmarks import bench_read
from benchmarks.lib import MIB, make_random_file
from tests.conftest import run_cli

pytestmark = pytest.mark.fuse


def test_the_format_scenario_measures_both_formats(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_read, "drop_caches", lambda: None)  # global: not in CI
    ws = bench_read.Workspace(tmp_path, 8 * MIB)
    make_random_file(ws.plain / bench_read.FILE, ws.size)
    run_cli("keygen", "--out", ws.key)
    for variant, version in (("cmlfs-gcm-siv-f1", "1"), ("cmlfs-gcm-siv", "2")):
        run_cli("encrypt", ws.plain, ws.stores[variant], "--key-file", ws.key, "--format", version)
    speed, cpu = bench_read.format_cold(ws, 1)
    assert (speed.baseline, cpu.baseline) == ("cmlfs-gcm-siv-f1", "cmlfs-gcm-siv-f1")
    for m in (speed, cpu):
        assert set(m.samples) == {"cmlfs-gcm-siv-f1", "cmlfs-gcm-siv", "cmlfs-gcm-siv-t2"}
    assert all(value > 0 for values in speed.samples.values() for value in values)
