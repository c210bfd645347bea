"""Fixtures shared by every tier: sample models, the CLI, and real mounts with cleanup."""

import hashlib
import itertools
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from cmlfs.mountpoint import mount_entry
from tests.logcheck import WATCH, LogWatch, unexpected


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def tree_digests(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``root``."""
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def write_sample_model(root: Path, seed: int = 1) -> dict[str, bytes]:
    """A small model folder covering the awkward cases; returns path -> content."""
    rng = __import__("random").Random(seed)
    chunk = 64 * 1024
    contents = {
        "config.json": b'{"model_type": "demo", "hidden_size": 64}\n',
        "model.safetensors": rng.randbytes(5 * chunk + 123),
        "exact-chunk.bin": rng.randbytes(chunk),
        "chunk-plus-one.bin": rng.randbytes(chunk + 1),
        "chunk-minus-one.bin": rng.randbytes(chunk - 1),
        "one-byte": b"x",
        "empty.txt": b"",
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(2000)),
        "deep/a/b/c/d/e/f/leaf.bin": rng.randbytes(3000),
        "ünïcödé/модель 日本.bin": rng.randbytes(70000),
    }
    for rel, data in contents.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty-folder").mkdir()
    return contents


def run_cli(*args: str | os.PathLike, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmlfs ARGS`` as a user would, capturing output."""
    result = subprocess.run(
        [sys.executable, "-m", "cmlfs", *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=kwargs.pop("timeout", 300),
        **kwargs,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"cmlfs {' '.join(map(str, args))} exited {result.returncode}: {result.stderr}"
        )
    return result


def force_unmount(mountpoint: Path) -> None:
    while mount_entry(mountpoint) is not None:
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        time.sleep(0.05)


@contextmanager
def mounted(
    store: Path | str,
    mountpoint: Path,
    *args: str | os.PathLike,
    env: dict[str, str] | None = None,
) -> Iterator[Path]:
    """A background ``cmlfs mount`` (``env``: the daemon's environment); always unmounted
    afterwards, even if the test failed. The daemon's log (its ``--log-file``, one next to
    the mountpoint if none is given) is checked by the log checker (tests/logcheck.py)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log_file = _log_file_of(args)
    if log_file is None:
        log_file = mountpoint.with_name(f"{mountpoint.name}.daemon.log")
        args = (*args, "--log-file", log_file)
    WATCH.watch(log_file)
    daemons: dict[int, int] = {}
    try:
        run_cli("mount", store, mountpoint, *args, env=env)
        assert mount_entry(mountpoint) is not None
        daemons = serving_pids(mountpoint)
        yield mountpoint
    finally:
        force_unmount(mountpoint)
        _wait_gone(daemons, timeout=5)
        WATCH.finished(log_file)


def _log_file_of(args: tuple) -> Path | None:
    for option, value in itertools.pairwise(args):
        if option == "--log-file":
            return Path(value)
    return None


def _wait_gone(pids: dict[int, int], timeout: float) -> None:
    """Until the processes ``pids`` have exited (their last log lines are written)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if proc_stat(pid)[0] == "Z":
                    break
            except OSError:
                break
            time.sleep(0.02)


@pytest.fixture(scope="session", autouse=True)
def _log_watch() -> Iterator[LogWatch]:
    """The log checker's handler on the root logger, from the first test to the last."""
    root = logging.getLogger()
    root.addHandler(WATCH)
    yield WATCH
    root.removeHandler(WATCH)
    left = WATCH.drain()
    if left:
        pytest.fail("warnings or errors logged after the last test:\n" + "\n".join(map(str, left)))


@pytest.fixture(autouse=True)
def _check_logs(request: pytest.FixtureRequest, _log_watch: LogWatch) -> Iterator[None]:
    """Fail the test when a warning or an error it did not expect was logged (marker
    ``expect_log``; see tests/logcheck.py)."""
    yield
    marks = list(request.node.iter_markers("expect_log"))
    patterns = [p for mark in marks for p in mark.args]
    optional = {p for mark in marks if mark.kwargs.get("optional") for p in mark.args}
    left, missing = unexpected(_log_watch.drain(), patterns)
    missing = [p for p in missing if p not in optional]
    problems = [f"unexpected: {entry}" for entry in left]
    problems += [f"expected but never logged: {pattern!r}" for pattern in missing]
    if problems:
        pytest.fail("log check:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.key"
    run_cli("keygen", "--out", path)
    return path


@pytest.fixture
def sample_model(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path / "model"
    return src, write_sample_model(src)


@pytest.fixture
def encrypted_model(tmp_path: Path, sample_model, key_file: Path):
    """(source folder, contents, store folder, key file) of an encrypted sample model."""
    src, contents = sample_model
    store = tmp_path / "store"
    run_cli("encrypt", src, store, "--key-file", key_file)
    return src, contents, store, key_file


def daemon_pid(mountpoint: Path) -> int:
    """The pid of the cmlfs daemon serving ``mountpoint`` (with ``--workers``, the supervisor)."""
    pids = serving_pids(mountpoint)
    supervisors = [pid for pid, parent in pids.items() if parent not in pids]
    if len(supervisors) != 1:
        raise AssertionError(f"no single cmlfs daemon serves {mountpoint}: {pids}")
    return supervisors[0]


def worker_pids(mountpoint: Path) -> list[int]:
    """The worker processes of a ``--workers`` mount (children of its daemon)."""
    pids = serving_pids(mountpoint)
    return sorted(pid for pid, parent in pids.items() if parent in pids)


def serving_pids(mountpoint: Path) -> dict[int, int]:
    """pid -> parent pid of every process that names ``mountpoint`` on its command line and
    holds /dev/fuse open (the CLI that started the daemon has exited)."""
    target = os.fsencode(str(mountpoint))
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"cmlfs" in argv and target in argv and _holds_fuse_device(proc):
                found[int(proc.name)] = int(proc_stat(int(proc.name))[1])
        except OSError:
            continue
    return found


def read_in_pieces(path: Path, size: int, piece: int = 64 * 1024) -> bytes:
    """The whole file by pread of ``piece`` bytes, from 8 threads at once (several
    requests in flight, so every worker process of a mount gets some)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with ThreadPoolExecutor(8) as pool:
            parts = pool.map(lambda o: os.pread(fd, piece, o), range(0, size, piece))
            return b"".join(parts)
    finally:
        os.close(fd)


def proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...: proc(5) field 3
    on is index 0 on)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _holds_fuse_device(proc: Path) -> bool:
    return any(os.readlink(fd) == "/dev/fuse" for fd in (proc / "fd").iterdir())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def imported_modules(importtime_stderr: str) -> set[str]:
    """The modules a process run with ``-X importtime`` (``PYTHONPROFILEIMPORTTIME=1``)
    imported, read from its stderr."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:") and not line.endswith("| imported package")
    }


# Stacks a command loads only when it needs them (benchmarks/RESULTS.md, "Lazy imports"):
# key release, HTTP, metrics, the vTPM, S3, progress bars.
ON_DEMAND_MODULES = (
    "jwcrypto",
    "rfc8785",
    "cmlfs.keys.kbs",
    "cmlfs.keys.rcar",
    "requests",
    "urllib3",
    "cmlfs.keys.transport",
    "prometheus_client",
    "cmlfs.status",
    "tpm2_pytss",
    "cmlfs.keys.attesters.azure_vtpm",
    "boto3",
    "botocore",
    "tqdm",
    # publisher signatures: only with --trust-publisher, sign or --sign-key
    "model_signing",
    "sigstore",
    "sigstore_models",
    "pydantic",
    "ecdsa",
)


def loaded_of(modules: set[str], roots: tuple[str, ...]) -> set[str]:
    """The members of ``modules`` that are one of ``roots`` or inside one of them."""
    return {m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)}
