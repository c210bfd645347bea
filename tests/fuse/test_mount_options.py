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


def test_debug_logs_every_request_with_numbers_never_names(encrypted_model, tmp_path):
    _, contents, store, key = encrypted_model
    log = tmp_path / "daemon.log"
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--debug", "--log-file", log) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
        assert "model.safetensors" in os.listdir(mnt)
    requests = [line for line in log.read_text().splitlines() if "event=request " in line]
    ops = {line.split("op=")[1].split()[0] for line in requests}
    assert {"lookup", "getattr", "open", "read", "release", "opendir", "readdir"} <= ops
    reads = [line for line in requests if "op=read " in line]
    assert all(" fh=" in line and " off=" in line and " size=" in line for line in reads)
    for name in contents:
        assert name.split("/")[-1] not in log.read_text()
