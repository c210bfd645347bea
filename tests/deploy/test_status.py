"""The status server of a real mount: health, readiness, Prometheus metrics, `cmlfs status`."""

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio

from cmlfs.keys import FileKeySource
from cmlfs.model import open_model
from cmlfs.reader import ModelReader
from cmlfs.status import (
    MAX_CONNECTIONS,
    REQUEST_TIMEOUT,
    StatusServer,
    StatusSettings,
    parse_address,
    read_record,
)
from tests.conftest import daemon_pid, mounted, run_cli, write_sample_model
from tests.deploy.conftest import http_get, metrics, status_url, wait_for
from tests.e2e.stores_servers import blob_of

pytestmark = pytest.mark.fuse

SECRET_NAME = "very-secret-model-name"


@pytest.fixture
def model(tmp_path: Path):
    """(store, key file, contents) of a sample model with a recognisable name."""
    contents = write_sample_model(tmp_path / "src")
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    store = tmp_path / "store"
    run_cli("encrypt", tmp_path / "src", store, "--key-file", key, "--model-name", SECRET_NAME)
    return store, key, contents


def test_health_readiness_and_metrics_follow_reads(model, tmp_path):
    store, key, contents = model
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        url = status_url(mnt)
        assert http_get(url + "/healthz") == (200, "ok\n")
        assert http_get(url + "/readyz") == (200, "ready\n")
        before = metrics(url)
        assert before["cmlfs_ready"] == 1
        assert before["cmlfs_read_bytes_total"] == 0
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
        after = metrics(url)
        size = len(contents["model.safetensors"])
        assert after["cmlfs_read_bytes_total"] == size
        assert after["cmlfs_decrypted_bytes_total"] >= size
        assert after["cmlfs_decrypted_chunks_total"] >= 6
        assert after["cmlfs_cache_misses_total"] >= 1
        assert after["cmlfs_cache_bytes"] >= size
        assert after["cmlfs_store_requests_total"] >= 1
        assert after["cmlfs_read_duration_seconds_count"] >= 1
        assert (
            after["cmlfs_store_errors_total"] == after["cmlfs_authentication_failures_total"] == 0
        )


def test_metrics_and_status_never_show_keys_names_or_contents(model, tmp_path):
    store, key, contents = model
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        for path in contents:
            (mnt / path).read_bytes()
        _, text = http_get(status_url(mnt) + "/metrics")
        shown = text + run_cli("status", mnt).stdout
    key_bytes = key.read_bytes()
    for secret in (key_bytes.hex(), key_bytes.hex().upper(), SECRET_NAME, "safetensors", "vocab"):
        assert secret not in shown
    assert contents["config.json"].decode().strip() not in shown


def test_cmlfs_status_reports_for_a_person_and_exits_by_readiness(model, tmp_path):
    store, key, _ = model
    mnt = tmp_path / "mnt"
    with mounted(store, mnt, "--key-file", key, "--http", "127.0.0.1:0"):
        (mnt / "config.json").read_bytes()
        result = run_cli("status", mnt)
        assert "ready:           yes" in result.stdout
        assert f"pid {daemon_pid(mnt)}" in result.stdout
        for label in ("read:", "decrypted:", "cache:", "store:", "authentication:"):
            assert label in result.stdout
        assert "0 retries" in result.stdout
        explicit = run_cli("status", mnt, "--http", status_url(mnt))
        assert "ready:           yes" in explicit.stdout
    gone = run_cli("status", mnt, check=False)
    assert gone.returncode == 1
    assert "not mounted" in gone.stdout
    assert read_record(Path("/run/cmlfs"), mnt) is None, "the record outlived the mount"


def test_status_without_http_says_how_to_get_it(model, tmp_path):
    store, key, _ = model
    with mounted(store, tmp_path / "mnt", "--key-file", key) as mnt:
        result = run_cli("status", mnt, check=False)
    assert result.returncode == 1
    assert "--http" in result.stdout


@pytest.mark.expect_log("event=(chunk_rejected|integrity_failed)")
def test_authentication_failures_are_counted(model, tmp_path):
    store, key, contents = model
    blob = store / "blobs" / blob_of(store, key, "model.safetensors")
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        data = bytearray(blob.read_bytes())
        data[-100] ^= 1  # inside the last chunk
        blob.write_bytes(bytes(data))
        with open(mnt / "model.safetensors", "rb") as f, pytest.raises(OSError):
            f.seek(len(contents["model.safetensors"]) - 50)
            f.read(50)
        assert metrics(status_url(mnt))["cmlfs_authentication_failures_total"] >= 1


def test_store_retries_are_counted(model, tmp_path, nginx, proxy):
    store, key, contents = model
    served = nginx.root / "retry-model"
    subprocess.run(["cp", "-r", str(store), str(served)], check=True)
    blob = blob_of(store, key, "model.safetensors")
    proxy.inject("503", path=blob, times=2)
    url = f"{proxy.url}/retry-model"
    with mounted(url, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
        assert metrics(status_url(mnt))["cmlfs_store_retries_total"] >= 2
        assert "retries" in run_cli("status", mnt).stdout


def test_store_retries_of_workers_are_counted(model, tmp_path, nginx, proxy):
    """With --workers, reads are retried in the worker processes, the manifest's read in the
    supervisor that serves /metrics before it forks them: each retry is counted once."""
    store, key, contents = model
    served = nginx.root / "retry-workers-model"
    subprocess.run(["cp", "-r", str(store), str(served)], check=True)
    blob = blob_of(store, key, "model.safetensors")
    proxy.inject("503", path="retry-workers-model/manifest.cmlfs", times=1)
    proxy.inject("503", path=blob, times=3)
    url = f"{proxy.url}/retry-workers-model"
    args = ("--key-file", key, "--workers", "2", "--http", "127.0.0.1:0")
    with mounted(url, tmp_path / "mnt", *args) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
        assert [s.fault for s in proxy.requests("retry-workers-model") if s.fault] == ["503"] * 4
        assert metrics(status_url(mnt))["cmlfs_store_retries_total"] == 4
        assert "4 retries" in run_cli("status", mnt).stdout


def test_a_busy_port_refuses_the_mount_before_mounting(model, tmp_path):
    store, key, _ = model
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        result = run_cli(
            "mount", store, mnt, "--key-file", key, "--http", f"127.0.0.1:{port}", check=False
        )
    assert result.returncode == 1
    assert "cannot serve status" in result.stderr
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize("bad", ["9100", "host:", ":9100", "127.0.0.1:99999", "127.0.0.1:x"])
def test_bad_http_addresses_are_refused(bad):
    with pytest.raises(ValueError):
        parse_address(bad)


def test_ipv6_addresses_parse():
    assert parse_address("[::1]:9100") == ("::1", 9100)


def test_hostile_requests_do_not_disturb_the_server(model, tmp_path):
    store, key, _ = model
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        url = status_url(mnt)
        host, port = url.removeprefix("http://").split(":")
        answers = []
        for request in (
            b"POST /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x00\xff garbage\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
            b"GET /readyz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        ):
            with socket.create_connection((host, int(port)), timeout=10) as s:
                try:
                    s.sendall(request)
                    answers.append(s.recv(100))
                except ConnectionResetError:  # closed with our unread bytes in its buffer
                    answers.append(b"reset")
        assert answers[0].startswith(b"HTTP/1.1 405")
        assert answers[1].startswith(b"HTTP/1.1 404")
        assert answers[2].startswith(b"HTTP/1.1 400")
        assert answers[3] == b"reset" or answers[3].startswith(b"HTTP/1.1 431")  # not parsed
        assert answers[4].startswith(b"HTTP/1.1 400")
        with socket.create_connection((host, int(port)), timeout=10) as idle:
            assert http_get(url + "/healthz")[0] == 200  # an idle client blocks nobody
            idle.sendall(b"GET")
        head = http_get(url + "/readyz")
        assert head[0] == 200


def test_readiness_fails_fast_when_the_mount_hangs(model, tmp_path):
    """A daemon that stops answering makes /readyz say no within the probe timeout."""
    store, key, _ = model
    with mounted(store, tmp_path / "mnt", "--key-file", key) as mnt:
        server = _status_server(store, key, mnt)
        pid = daemon_pid(mnt)

        async def probe() -> list[tuple[int, bytes, float]]:
            server.notifier(lambda error: None)(None)
            results = []
            for _ in range(2):
                started = time.monotonic()
                response = await server.respond(b"GET", b"/readyz")
                results.append((response.status, response.body, time.monotonic() - started))
            return results

        try:
            assert trio.run(server.respond, b"GET", b"/healthz").status == 200
            os.kill(pid, signal.SIGSTOP)
            (first, second) = trio.run(probe)
        finally:
            os.kill(pid, signal.SIGCONT)
            server.close()
        assert first[0] == 503 and b"did not answer" in first[1] and first[2] < 5
        assert second[0] == 503 and second[2] < 5  # a hung probe does not pile up threads
        wait_for(lambda: os.statvfs(mnt) is not None, what="the mount to answer again")


def _status_server(store: Path, key: Path, mountpoint: Path) -> StatusServer:
    """A status server in this process, over a real reader of the model."""
    opened, manifest, model_key = open_model(str(store), FileKeySource(key))
    return StatusServer(
        StatusSettings("127.0.0.1", 0), mountpoint, ModelReader(manifest, opened, model_key)
    )


def test_readiness_says_no_before_the_mount_and_when_nothing_is_mounted(model, tmp_path):
    store, key, _ = model
    empty = tmp_path / "empty"
    empty.mkdir()
    server = _status_server(store, key, empty)
    try:
        early = trio.run(server.respond, b"GET", b"/readyz")
        server.notifier(lambda error: None)(None)
        unmounted = trio.run(server.respond, b"GET", b"/readyz")
    finally:
        server.close()
    assert early.status == 503 and b"not up yet" in early.body
    assert unmounted.status == 503 and b"nothing is mounted" in unmounted.body
    for body in (early.body, unmounted.body):  # whoever reaches the port learns no path
        assert os.fsencode(tmp_path) not in body and b"empty" not in body


def _hold(address: tuple[str, int], partial: bytes) -> socket.socket:
    """A connection that sent ``partial`` (maybe nothing) and waits."""
    held = socket.create_connection(address, timeout=10)
    if partial:
        held.sendall(partial)
    return held


def _closed_by_the_server(held: socket.socket) -> bool:
    held.setblocking(False)
    try:
        return held.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_probes_answer_within_a_second_while_idle_and_slowloris_clients_hold_connections(
    model, tmp_path
):
    """Regression: 16 idle connections made /readyz fail (Kubernetes would have restarted a
    healthy pod). 64 silent and 64 trickling clients fill the connection limit; probes with
    the kubelet's default 1 s timeout still get their answer, and every held connection is
    closed within its deadline."""
    store, key, _ = model
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        url = status_url(mnt)
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        opened = time.monotonic()
        held = [_hold(address, b"") for _ in range(64)]
        held += [_hold(address, b"GET /readyz HTTP/1.1\r\nHost: x\r\nX-") for _ in range(64)]
        try:
            for round_ in range(4):
                for slow in held[64:]:
                    with contextlib.suppress(OSError):
                        slow.sendall(b"a")  # one more byte, never the end of the head
                assert http_get(url + "/readyz", timeout=1.0) == (200, "ready\n"), round_
                code, text = http_get(url + "/metrics", timeout=1.0)
                assert code == 200 and "cmlfs_ready 1.0" in text
                time.sleep(0.5)
            wait_for(
                lambda: all(_closed_by_the_server(h) for h in held),
                timeout=REQUEST_TIMEOUT + 5,
                what="the server to close every held connection",
            )
            assert time.monotonic() - opened < REQUEST_TIMEOUT + 5
        finally:
            for h in held:
                h.close()


def test_beyond_the_limit_the_oldest_silent_client_makes_room(model, tmp_path):
    """The count of connections is bounded: one more than the limit closes the oldest client
    that has not sent its request head, not the newcomer."""
    store, key, _ = model
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--http", "127.0.0.1:0") as mnt:
        url = status_url(mnt)
        host, port = url.removeprefix("http://").split(":")
        held = [_hold((host, int(port)), b"") for _ in range(MAX_CONNECTIONS + 3)]
        try:
            assert http_get(url + "/healthz", timeout=1.0) == (200, "ok\n")
            wait_for(
                lambda: all(_closed_by_the_server(h) for h in held[:4]),
                timeout=2,
                what="the four oldest silent clients to be closed",
            )
            assert not any(_closed_by_the_server(h) for h in held[4:])
        finally:
            for h in held:
                h.close()
