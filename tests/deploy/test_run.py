"""`cmlfs run`: mount, run the server as a child, forward signals, unmount, pass its status on."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmlfs.mountpoint import mount_entry
from tests.conftest import force_unmount, run_cli, sha256_file, write_sample_model
from tests.deploy.conftest import children_of, stop, wait_for
from tests.signing_helpers import ec_pair

pytestmark = pytest.mark.fuse


@pytest.fixture
def model(tmp_path: Path):
    """(store, key file, source folder) of the sample model; the mountpoint is cleaned up."""
    write_sample_model(tmp_path / "src")
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", tmp_path / "src", tmp_path / "store", "--key-file", key)
    (tmp_path / "mnt").mkdir()
    yield tmp_path / "store", key, tmp_path / "src"
    force_unmount(tmp_path / "mnt")


def _run_args(store: Path, key: Path, mnt: Path, *server: str) -> list[str]:
    return [
        "run",
        "--store",
        str(store),
        "--mount",
        str(mnt),
        "--key-file",
        str(key),
        "--",
        *server,
    ]


def _server(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


def test_the_server_reads_the_mount_and_its_exit_status_is_returned(model, tmp_path):
    store, key, src = model
    mnt, report = tmp_path / "mnt", tmp_path / "seen.json"
    server = _server(
        f"""
        import hashlib, json, os, pathlib, sys
        root = pathlib.Path({str(mnt)!r})
        seen = {{str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in root.rglob("*") if p.is_file()}}
        pathlib.Path({str(report)!r}).write_text(json.dumps(seen))
        sys.exit(7)
        """
    )
    result = run_cli(*_run_args(store, key, mnt, *server), check=False)
    assert result.returncode == 7, result.stderr
    expected = {str(p.relative_to(src)): sha256_file(p) for p in src.rglob("*") if p.is_file()}
    assert json.loads(report.read_text()) == expected
    assert mount_entry(mnt) is None
    assert "event=server_started" in result.stderr and "event=unmounted" in result.stderr


def test_sigterm_is_forwarded_once_and_the_mount_outlives_the_server(model, tmp_path):
    store, key, _ = model
    mnt, log = tmp_path / "mnt", tmp_path / "server.log"
    server = _server(
        f"""
        import os, pathlib, signal, sys, time
        log = pathlib.Path({str(log)!r})
        def on_term(signum, frame):
            # the mount must still answer while the server shuts down
            ok = os.path.exists({str(mnt / "config.json")!r})
            log.write_text(log.read_text() + f"term mounted={{ok}}\\n")
            sys.exit(42)
        signal.signal(signal.SIGTERM, on_term)
        log.write_text("started\\n")
        while True:
            time.sleep(0.1)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cmlfs", *_run_args(store, key, mnt, *server)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: log.exists() and "started" in log.read_text(), what="the server")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == 42, err
    assert log.read_text() == "started\nterm mounted=True\n"
    assert mount_entry(mnt) is None


def test_a_server_killed_by_a_signal_gives_128_plus_n(model, tmp_path):
    store, key, _ = model
    result = run_cli(
        *_run_args(store, key, tmp_path / "mnt", "sh", "-c", "kill -KILL $$"), check=False
    )
    assert result.returncode == 128 + signal.SIGKILL
    assert mount_entry(tmp_path / "mnt") is None


def test_a_failed_mount_never_starts_the_server(model, tmp_path):
    store, _, _ = model
    wrong = tmp_path / "wrong.key"
    run_cli("keygen", "--out", wrong)
    marker = tmp_path / "server-ran"
    result = run_cli(*_run_args(store, wrong, tmp_path / "mnt", "touch", str(marker)), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("cmlfs: error: ")
    assert not marker.exists()
    assert mount_entry(tmp_path / "mnt") is None


def test_run_with_a_trusted_publisher_starts_the_server_only_on_a_signed_store(model, tmp_path):
    """In-container mode checks the signature as a mount does: unsigned, the server never
    runs; signed by the publisher, it reads the plaintext."""
    store, key, src = model
    private, public = ec_pair(tmp_path, "publisher")
    marker = tmp_path / "server-ran"
    args = _run_args(store, key, tmp_path / "mnt", "touch", str(marker))
    args[args.index("--") : args.index("--")] = ["--trust-publisher", str(public)]
    result = run_cli(*args, check=False)
    assert result.returncode == 1 and "model.sig is missing" in result.stderr
    assert not marker.exists() and mount_entry(tmp_path / "mnt") is None
    run_cli("sign", store, "--key", private)
    args[args.index("--") + 1 :] = [
        "cmp",
        str(tmp_path / "mnt" / "config.json"),
        str(src / "config.json"),
    ]
    assert run_cli(*args, check=False).returncode == 0
    assert mount_entry(tmp_path / "mnt") is None


def test_a_missing_command_gives_127_and_unmounts(model, tmp_path):
    store, key, _ = model
    result = run_cli(*_run_args(store, key, tmp_path / "mnt", "no-such-server-cmd"), check=False)
    assert result.returncode == 127
    assert "cmlfs: error: no-such-server-cmd: command not found" in result.stderr
    assert mount_entry(tmp_path / "mnt") is None


def test_no_command_is_an_error(model, tmp_path):
    store, key, _ = model
    result = run_cli(*_run_args(store, key, tmp_path / "mnt"), check=False)
    assert result.returncode == 1
    assert "give the server command after --" in result.stderr


def test_losing_the_daemon_stops_the_server_and_clears_the_mount(model, tmp_path):
    store, key, _ = model
    mnt, pid_file = tmp_path / "mnt", tmp_path / "server.pid"
    server = _server(
        f"""
        import os, pathlib, time
        pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))
        time.sleep(60)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cmlfs", *_run_args(store, key, mnt, *server)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the server")
        server_pid = int(pid_file.read_text())
        daemon = next(pid for pid in children_of(process.pid) if pid != server_pid)
        os.kill(daemon, signal.SIGKILL)
        _, err = process.communicate(timeout=60)
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == 1, err
    assert "event=mount_lost" in err
    assert mount_entry(mnt) is None
    with pytest.raises(ProcessLookupError):
        os.kill(server_pid, 0)


def test_status_server_runs_in_run_mode(model, tmp_path):
    store, key, _ = model
    mnt = tmp_path / "mnt"
    result = run_cli(
        "run", "--store", store, "--mount", mnt, "--key-file", key, "--http", "127.0.0.1:0",
        "--", sys.executable, "-m", "cmlfs", "status", mnt,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ready:           yes" in result.stdout
    assert mount_entry(mnt) is None


@pytest.mark.parametrize("command", ["run", "status"])
def test_new_commands_explain_themselves(command):
    result = run_cli(command, "--help")
    assert f"usage: cmlfs {command}" in result.stdout
    assert "--http" in result.stdout
