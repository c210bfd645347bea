"""Runs last (pytest collects tests/ in name order): after every other test, no plaintext of a
test model and no test key is left where it does not belong. tests/zz_leaks/scan.py says
exactly what is looked for and what counts as a legitimate copy."""

import os
import tempfile
from pathlib import Path

import pytest

from tests.conftest import write_sample_model
from tests.hardening.models import campaign_contents, stress_contents
from tests.zz_leaks.scan import PlaintextIndex, find_keys, scan

pytestmark = pytest.mark.hardening

SAMPLE_SEEDS = (1, 2)  # write_sample_model seeds the suite uses (tests/e2e/test_key_release.py: 2)
SYSTEM_ROOTS = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm"), Path("/var/log")]


def known_plaintext() -> list[tuple[str, bytes]]:
    """(model-relative path, content) of every file of every deterministic test model."""
    files: list[tuple[str, bytes]] = []
    for seed in SAMPLE_SEEDS:
        with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:  # in memory, gone at once
            files += write_sample_model(Path(folder), seed).items()
    return [*files, *campaign_contents().items(), *stress_contents().items()]


def test_the_scanner_finds_a_window_anywhere_and_tells_source_copies_apart():
    index = PlaintextIndex(known_plaintext())
    rel, data = max(index.files, key=lambda item: len(item[1]))
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        root = Path(folder)
        for offset in (0, 1, 47, 48, 4097):
            leak = root / f"leak-{offset}"
            leak.write_bytes(b"x" * offset + data[offset + 5 : offset + 5 + 64] + b"y" * 9)
        (root / "short").write_bytes(data[1000:1063])  # 63 bytes: below the window
        (root / "src" / rel).parent.mkdir(parents=True)
        (root / "src" / rel).write_bytes(data)
        (root / "elsewhere.bin").write_bytes(data)
        key = root / "model.key"
        key_bytes = os.urandom(32)  # like keygen's: a pattern would not count as a key
        key.write_bytes(key_bytes)
        key.chmod(0o600)
        (root / "daemon.log").write_text("event=x key=" + key_bytes.hex() + "\n")
        report = scan([root], index, find_keys([root]))
    assert sorted(hit.split(" @ ")[0].rsplit("/", 1)[1] for hit in report.plaintext_hits) == [
        "elsewhere.bin",
        *sorted(f"leak-{offset}" for offset in (0, 1, 47, 48, 4097)),
    ]
    assert report.source_copies == 1
    assert [hit.split(":")[0].rsplit("/", 1)[1] for hit in report.key_hits] == ["daemon.log"]


def test_patterned_key_files_do_not_flag_unrelated_files_but_a_random_key_is_found():
    """Regression: a pip install into a venv under /tmp during a run made the scan flag pip's
    Windows launcher .exe files as holding "a test key (32-byte form)": runs of one byte and
    counting tables occur in executables, so a 32-byte 0600 file holding such a pattern is
    not a key to look for. A random key written anywhere is still a leak."""
    patterned = [bytes(32), b"\xcc" * 32, bytes(range(32)), bytes(range(0, 256, 8)), b"ab" * 16]
    real_key = os.urandom(32)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        root = Path(folder)
        for index, pattern in enumerate([*patterned, real_key]):
            key = root / f"key-{index}"
            key.write_bytes(pattern)
            key.chmod(0o600)
        launcher = root / "venv" / "lib" / "pip" / "_vendor" / "distlib" / "t64.exe"
        launcher.parent.mkdir(parents=True)
        launcher.write_bytes(b"MZ\x90\x00" + b"".join(p * 3 for p in patterned) + b"PE\x00")
        (root / "daemon.log").write_text("event=x key=" + real_key.hex() + "\n")
        keys = find_keys([root])
        report = scan([root], PlaintextIndex([]), keys)
    assert list(keys) == [real_key]
    assert [hit.split(":")[0].rsplit("/", 1)[1] for hit in report.key_hits] == ["daemon.log"]


def process_start_time() -> float:
    """Unix time at which this pytest process started (/proc: boot time + start ticks)."""
    boot = next(
        int(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK") - 1


def test_no_plaintext_window_or_test_key_outside_source_folders(tmp_path_factory):
    basetemp = tmp_path_factory.getbasetemp()
    index = PlaintextIndex(known_plaintext())
    keys = find_keys([basetemp])
    report = scan([basetemp], index, keys)
    # System temp folders and logs: what changed while this run ran; earlier pytest runs'
    # folders (pytest keeps three) were scanned by their own runs.
    earlier = frozenset(p for p in basetemp.parent.iterdir() if p.name.startswith("pytest-"))
    system = scan(SYSTEM_ROOTS, index, keys, earlier | {basetemp}, process_start_time())
    for field in (
        "files",
        "bytes",
        "source_copies",
        "skipped_for_keys",
        "plaintext_hits",
        "key_hits",
    ):
        setattr(report, field, getattr(report, field) + getattr(system, field))
    print(
        f"leak scan: {report.files} files, {report.bytes / 2**20:.0f} MiB, "
        f"{report.source_copies} source-folder copies skipped, {len(keys)} test keys, "
        f"{len(report.plaintext_hits)} plaintext hits, {len(report.key_hits)} key hits"
    )
    assert report.plaintext_hits == []
    assert report.key_hits == []
