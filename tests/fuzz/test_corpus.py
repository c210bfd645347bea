"""The regression corpus and a bounded coverage-guided fuzz run.

tests/fuzz/corpus/<target>/ holds every input that once crashed a parser (and
a few hand-made neighbours); each must now be a typed refusal. The bounded
atheris run fuzzes every target for a few seconds (``CMLFS_FUZZ_SECONDS``,
default 3); the long run is ``python -m tests.fuzz.run_atheris --seconds N``.
"""

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.fuzz import targets
from tests.fuzz.run_atheris import CORPUS, run_all

pytestmark = pytest.mark.hardening

CASES = sorted(
    (folder.name, path)
    for folder in CORPUS.iterdir()
    if folder.is_dir()
    for path in folder.iterdir()
)


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_every_past_crash_is_now_a_typed_refusal(name: str, path: Path):
    targets.run(name, path.read_bytes())


def test_a_key_uri_with_a_broken_ipv6_literal_is_a_one_line_error(encrypted_model, tmp_path):
    """Regression: ``urlsplit`` raised ValueError out of key_source_from_uri, so the CLI died
    with a traceback (and a daemon given such a URI by a store's envelope crashed)."""
    store = encrypted_model[2]
    policy = tmp_path / "policy.json"
    policy.write_text("{}")
    for args in (
        ["inspect", store, "--key-uri", "kbs://[::1/default/model/demo"],
        ["key", "policy", "kbs://[::1", "--policy-file", policy],
        ["inspect", "http://127.0.0.1:99999/models"],
    ):
        result = run_cli(*args, check=False)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cmlfs: error: "), result.stderr


def test_bounded_atheris_run_finds_no_crash(tmp_path):
    pytest.importorskip("atheris")
    seconds = int(os.environ.get("CMLFS_FUZZ_SECONDS", "3"))
    results = run_all(sorted(targets.TARGETS), seconds, tmp_path / "crashes")
    for result in results:
        print(f"{result.target}: {result.executions} executions, coverage {result.coverage}")
    crashed = {r.target: r.crashes for r in results if not r.ok}
    assert not crashed
    assert all(r.executions > 0 for r in results)


def test_a_large_parent_does_not_make_the_fuzzer_report_out_of_memory(tmp_path):
    """Regression: the children inherited the pytest process's peak RSS (kept across fork
    and exec), so late in a full run every target 'crashed' out of memory on an empty input."""
    pytest.importorskip("atheris")
    ballast = bytearray(1200 << 20)
    ballast[:: 1 << 12] = b"\1" * len(range(0, len(ballast), 1 << 12))  # touch every page
    [result] = run_all(["key_uri"], 2, tmp_path / "crashes")
    del ballast
    assert result.ok, result.crashes
