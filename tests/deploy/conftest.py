"""Deploy tier: the status server, `cmlfs run`, the Helm chart, and the sidecar image.

Tools come from scripts/deploy-setup.sh: helm (from a PyPI wheel, into the
virtualenv), kubernetes-validate, yamllint and hadolint (PyPI), buildah and
podman (Debian). The image tests use the image scripts/deploy-checks.sh builds.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stores_servers import fault_proxy, nginx, proxy  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cmlfs-model-server"
IMAGE = os.environ.get("CMLFS_TEST_IMAGE", "localhost/cmlfs:ci")


def tool(name: str) -> str:
    """A deploy tool from the virtualenv or PATH; fails the test with how to install it."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/deploy-setup.sh")
    return path


def kubernetes_validate(path: Path, kube: str) -> None:
    """Fail the test unless ``kubernetes-validate --strict`` accepts every object in ``path``
    for Kubernetes ``kube``."""
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", kube, "--quiet", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status_url(mountpoint: Path) -> str:
    """The status URL the daemon serving ``mountpoint`` recorded under /run/cmlfs."""
    from cmlfs.status import read_record

    record = read_record(Path("/run/cmlfs"), mountpoint)
    assert record is not None, f"no status record for {mountpoint}"
    return record["url"]


def metrics(url: str) -> dict[str, float]:
    """Unlabelled samples of /metrics, by name."""
    from prometheus_client.parser import text_string_to_metric_families

    code, text = http_get(url + "/metrics")
    assert code == 200
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def children_of(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(proc.name))
    return found


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# Rootful podman without a daemon: vfs storage, runc and cgroupfs work on these machines.
PODMAN = ["podman", "--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
# Containers get no network, and limits below this VM's hard limits (runc may not raise to them).
RUN_FLAGS = ["--network", "none", "--ulimit", "nofile=8192:8192", "--ulimit", "nproc=8192:8192"]


@pytest.fixture(scope="session")
def image() -> str:
    """The sidecar image built by scripts/deploy-checks.sh (container/build.sh)."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: run scripts/deploy-setup.sh")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.fail(f"image {IMAGE} is missing: run scripts/deploy-checks.sh")
    return IMAGE


def podman(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    flags = RUN_FLAGS if args[:1] == ("run",) else []
    result = subprocess.run(
        [*PODMAN, *args[:1], *flags, *args[1:]],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of containers a test starts; all are removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


def stop(process: subprocess.Popen, signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
