"""Unit tier fixtures that start real parts in-process or as helpers on loopback/tmp paths."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cmlfs.devkbs import DevKbs, DevKbsConfig
from tests.fake_configfs_tsm import running_fake_tsm
from tests.kbs_helpers import ed25519_pair


@pytest.fixture
def devkbs(tmp_path: Path) -> Iterator[DevKbs]:
    """An in-process dev-kbs on a free loopback port (its sessions reachable by the test)."""
    repository = tmp_path / "kbs-repository"
    repository.mkdir()
    kbs = DevKbs(DevKbsConfig(repository=repository, port=0)).start()
    try:
        yield kbs
    finally:
        kbs.stop()


@pytest.fixture
def admin_devkbs(tmp_path: Path) -> Iterator[tuple[DevKbs, Path]]:
    """(dev-kbs, private admin key PEM): admin tokens need that Ed25519 key, and ``iss``
    "idp" and ``aud`` "kbs", as a Trustee identity provider entry naming both."""
    private, public = ed25519_pair(tmp_path, "admin")
    repository = tmp_path / "admin-kbs-repository"
    repository.mkdir()
    config = DevKbsConfig(
        repository, port=0, admin_public_key=public, admin_issuer="idp", admin_audience="kbs"
    )
    kbs = DevKbs(config).start()
    try:
        yield kbs, private
    finally:
        kbs.stop()


@pytest.fixture
def fake_tsm(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start fake configfs-tsm trees (tests/fake_configfs_tsm.py) over FUSE; returns a root."""
    with ExitStack() as stack:

        def start(provider: str, empty_outblob: bool = False, *options: str) -> Path:
            root = tmp_path / f"tsm-{provider}-{len(stack._exit_callbacks)}"
            root.mkdir()
            return stack.enter_context(running_fake_tsm(root, provider, empty_outblob, *options))

        yield start
