"""HTTP(S) stores: nginx serving a pushed store, the fault proxy in front of it, disk cache."""

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from cmlfs.format.layout import HEADER_LEN
from tests.conftest import (
    daemon_pid,
    mounted,
    read_in_pieces,
    run_cli,
    tree_digests,
    worker_pids,
)
from tests.e2e.stores_servers import assert_reads_back

pytestmark = pytest.mark.fuse

FAST = ("--store-timeout", "1", "--store-attempts", "4")


@pytest.fixture
def served(encrypted_model, nginx, tmp_path):
    """(src, contents, local store, key, served folder, url) of a model pushed into nginx."""
    src, contents, store, key = encrypted_model
    folder = nginx.root / tmp_path.name
    out = run_cli("push", store, folder).stdout
    assert f"mount with: cmlfs mount {folder} MOUNTPOINT" in out
    return src, contents, store, key, folder, nginx.url(tmp_path.name)


def test_push_to_folder_then_mount_http_reads_back(served, tmp_path):
    src, contents, store, key, folder, url = served
    assert tree_digests(folder) == tree_digests(store)
    again = run_cli("push", store, folder).stdout
    assert "1 objects uploaded, 10 already there" in again  # the manifest is always written
    with mounted(url, tmp_path / "mnt", "--key-file", key) as mnt:
        assert_reads_back(mnt, src, contents)
    assert "ok:" in run_cli("verify", url, "--key-file", key).stdout
    inspected = run_cli("inspect", url, "--key-file", key).stdout
    assert "cannot list" in inspected and "model.safetensors" in inspected


def connections_to(pid: int, port: int) -> set[int]:
    """Socket inodes of ``pid``'s established TCP connections to loopback ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    connected = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2].endswith(f":{port:04X}") and fields[3] == "01":
            connected.add(int(fields[9]))
    return inodes & connected


def test_workers_read_a_network_store_each_on_its_own_connections(served, nginx, tmp_path):
    """With --workers every worker fetches and decrypts the chunks it is asked for over
    connections it opened itself (none inherited from the daemon or shared)."""
    src, contents, _, key, _, url = served
    with mounted(url, tmp_path / "mnt", "--key-file", key, "--workers", "2") as mnt:
        workers = worker_pids(mnt)
        assert len(workers) == 2
        for _ in range(20):  # until both workers have served (the kernel picks the reader)
            for name, data in contents.items():
                assert read_in_pieces(mnt / name, len(data)) == data
            if all(connections_to(pid, nginx.port) for pid in workers):
                break
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
        own = [connections_to(pid, nginx.port) for pid in workers]
        assert all(own), "a worker fetched nothing"
        assert not own[0] & own[1]
        assert not (own[0] | own[1]) & connections_to(daemon_pid(mnt), nginx.port)
        assert tree_digests(mnt) == tree_digests(src)


def test_store_behind_a_redirect_reads_back_and_meets_it_once_per_object(served, nginx, tmp_path):
    """Range GETs go straight to the session's adapter, which does not follow redirects: an
    object that redirects (as registries send blob GETs to storage) is read through the
    whole session from its first redirect on. So every object reads back, and each one's
    GETs meet the redirect once more than they reach its target: the first try only."""
    src, contents, _, key, folder, _ = served
    log = nginx.root.parent / "access.log"
    already = len(log.read_text().splitlines())
    with mounted(nginx.url(f"moved/{folder.name}"), tmp_path / "mnt", "--key-file", key) as mnt:
        assert tree_digests(mnt) == tree_digests(src)
    redirected, reached = Counter(), Counter()
    for line in log.read_text().splitlines()[already:]:
        request = re.search(r'"GET /(moved/)?(\S+) HTTP/1\.1" (\d{3}) ', line)
        if request and request[2].startswith(f"{folder.name}/"):
            if request[1]:
                assert request[3] == "302"
                redirected[request[2]] += 1
            else:
                assert request[3] == "206"
                reached[request[2]] += 1
    assert f"{folder.name}/manifest.cmlfs" in reached
    assert len(reached) == 1 + sum(1 for data in contents.values() if data)  # empty: no GET
    assert redirected == Counter({path: count + 1 for path, count in reached.items()})


def test_headers_refused_over_plain_http_without_insecure_flag(served):
    *_, key, _, url = served
    result = run_cli("verify", url, "--key-file", key, "--store-header", "X-A: b", check=False)
    assert result.returncode == 1 and "--insecure-http" in result.stderr
    flagged = ("--store-header", "X-A: b", "--insecure-http")
    assert run_cli("verify", url, "--key-file", key, *flagged).returncode == 0


def test_disk_cache_hit_avoids_the_network_and_holds_no_plaintext(served, proxy, tmp_path):
    src, contents, _, key, folder, _ = served
    url = f"{proxy.url}/{folder.name}"
    cache = tmp_path / "disk-cache"
    args = ("--key-file", key, "--disk-cache", cache, "--disk-cache-size", "64M")
    with mounted(url, tmp_path / "mnt", *args) as mnt:
        assert tree_digests(mnt) == tree_digests(src)
    assert _data_requests(proxy) > 0
    entries = [p for p in cache.iterdir() if p.is_file()]
    assert entries and not [p for p in entries if p.name.startswith(".tmp-")]
    cached = b"".join(p.read_bytes() for p in entries)
    for name, data in contents.items():
        for start in range(0, max(len(data) - 32, 1), 997):
            window = data[start : start + 32]
            if len(window) == 32:
                assert window not in cached, f"plaintext of {name} in the disk cache"
    proxy.reset()
    with mounted(url, tmp_path / "mnt2", *args) as mnt:
        assert tree_digests(mnt) == tree_digests(src)
    assert _data_requests(proxy) == 0


def _data_requests(proxy) -> int:
    """GETs of blob bytes past the header (the header and sizes are always asked)."""
    return sum(
        1
        for seen in proxy.requests("/blobs/")
        if seen.range and int(seen.range.removeprefix("bytes=").split("-")[0]) >= HEADER_LEN
    )


def test_unreachable_store_fails_cleanly(encrypted_model, tmp_path):
    *_, key = encrypted_model
    from tests.e2e.stores_servers import free_port

    url = f"http://127.0.0.1:{free_port()}/nothing"
    result = run_cli("verify", url, "--key-file", key, *FAST, check=False)
    assert result.returncode == 1
    assert "cmlfs: error:" in result.stderr and "gave up after 4 attempts" in result.stderr
    assert "Traceback" not in result.stderr
