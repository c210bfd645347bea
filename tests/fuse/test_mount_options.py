"""Mount-level behaviour: kernel tuning as root, allow_other, page cache kept."""

import os

import pytest

from cmlfs.daemon.mount import READAHEAD_KB
from tests.conftest import mounted

pytestmark = pytest.mark.fuse


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can tune the FUSE connection")
def test_root_daemon_raises_readahead_and_background_requests(mounted_sample):
    mnt, _, _ = mounted_sample
    dev = os.stat(mnt).st_dev
    bdi = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    with open(bdi) as f:
        assert int(f.read()) == READAHEAD_KB == 8192
    with open(f"/sys/fs/fuse/connections/{os.minor(dev)}/max_background") as f:
        assert int(f.read()) == 64


def test_allow_other_is_passed_to_the_kernel(encrypted_model, tmp_path):
    _, _, store, key = encrypted_model
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--allow-other") as mnt:
        with open("/proc/self/mountinfo") as table:
            line = next(line for line in table if f" {mnt} " in line)
        assert "allow_other" in line
        assert " fuse.cmlfs " in line and "ro" in line.split()[5].split(",")
