"""Hardening tier: the encrypted stress model, and the e2e store servers (nginx behind the
fault proxy) for the fault tests."""

import pytest

from tests.conftest import run_cli
from tests.e2e.stores_servers import (  # noqa: F401 - fixtures
    fault_proxy,
    nginx,
    proxy,
)
from tests.hardening.models import write_stress_model


@pytest.fixture(scope="module")
def stress_model(tmp_path_factory):
    """(root, contents, key file) of the stress model, encrypted into ``root/store``."""
    root = tmp_path_factory.mktemp("stress")
    contents = write_stress_model(root / "model")
    key = root / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", root / "model", root / "store", "--key-file", key)
    return root, contents, key
