"""Commands import only what they use: ``--help`` and commands that neither mount nor talk to
a broker load none of the key-release, HTTP, metrics, vTPM or tink stacks, nor trio and
pyfuse3. A behavioural check of each process's imports (``-X importtime``), not a timing:
the start-up cost is measured in benchmarks/RESULTS.md ("Lazy imports"). The mount path is
checked through a real mount in tests/fuse/test_lazy_imports.py."""

import os

import pytest

from tests.conftest import ON_DEMAND_MODULES, imported_modules, loaded_of, run_cli

# ssl: trio loads it for a mount anyway, but --help and keygen need no TLS (cmlfs.tls imports it
# only when a trust store is looked up)
NOT_BEFORE_A_MOUNT = (*ON_DEMAND_MODULES, "tink", "trio", "pyfuse3", "ssl")


def importing(*args: object) -> set[str]:
    result = run_cli(*args, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    modules = imported_modules(result.stderr)
    assert "cmlfs.cli" in modules  # the importtime lines were read
    return modules


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("mount", "--help"),
        ("run", "--help"),
        ("encrypt", "--help"),
        ("key", "--help"),
    ],
    ids=" ".join,
)
def test_help_loads_no_stack(args):
    assert loaded_of(importing(*args), NOT_BEFORE_A_MOUNT) == set()


def test_keygen_loads_no_stack(tmp_path):
    assert loaded_of(importing("keygen", "--out", tmp_path / "k"), NOT_BEFORE_A_MOUNT) == set()
    assert len((tmp_path / "k").read_bytes()) == 32


def test_a_stack_in_use_is_seen(tmp_path):
    """The check sees a lazily imported stack: encrypt seals with tink's GCM-SIV."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(os.urandom(1000))
    run_cli("keygen", "--out", tmp_path / "k")
    modules = importing(
        "encrypt", tmp_path / "model", tmp_path / "store", "--key-file", tmp_path / "k"
    )
    assert "tink" in modules
