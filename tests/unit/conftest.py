"""Unit tier fixtures that start real parts in-process or as helpers on loopback/tmp paths."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from cmlfs.devkbs import DevKbs, DevKbsConfig
from tests.fake_configfs_tsm import running_fake_tsm


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
def fake_tsm(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start fake configfs-tsm trees (tests/fake_configfs_tsm.py) over FUSE; returns a root."""
    with ExitStack() as stack:

        def start(provider: str, empty_outblob: bool = False) -> Path:
            root = tmp_path / f"tsm-{provider}-{len(stack._exit_callbacks)}"
            root.mkdir()
            return stack.enter_context(running_fake_tsm(root, provider, empty_outblob))

        yield start
