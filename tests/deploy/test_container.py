"""The sidecar image: lint, contents, and real containers under podman.

Two containers share a host folder the way a pod shares an emptyDir: the sidecar gets it with
``rshared`` propagation (Kubernetes ``Bidirectional``) and mounts the model on a subdirectory;
the consumer gets it with ``rslave`` (``HostToContainer``) and only reads.
"""

import json
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cmlfs.mountpoint import mount_entry
from tests.conftest import run_cli, tree_digests, write_sample_model
from tests.deploy.conftest import ROOT, podman, tool, wait_for

pytestmark = pytest.mark.fuse

IMAGE_USER = 10001
DIGESTS = (
    "import hashlib, json, pathlib, sys; root = pathlib.Path(sys.argv[1]); "
    "print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() "
    "for p in sorted(root.rglob('*')) if p.is_file()}))"
)
# As root, as the chart runs the sidecar: this VM's /dev/fuse is mode 0600 (no udev), so the
# image's own user could mount only where the node's /dev/fuse is 0666, as on most distributions.
FUSE = ["--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "--user", "0"]


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [tool("hadolint"), str(ROOT / "container" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(store, folder with the key, source digests)."""
    root = tmp_path_factory.mktemp("image-model")
    write_sample_model(root / "src")
    keys = root / "keys"
    keys.mkdir()
    key = keys / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", root / "src", root / "store", "--key-file", key)
    return root / "store", keys, tree_digests(root / "src")


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A host folder on a shared mount (what an emptyDir is to the pod's containers)."""
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    subprocess.run(["mount", "--make-rshared", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--recursive", "--lazy", str(folder)], check=False)


def _start_sidecar(name: str, image: str, store: Path, keys: Path, shared: Path) -> None:
    podman(
        "run", "--detach", "--name", name, *FUSE,
        "--volume", f"{shared}:/data:rshared",
        "--volume", f"{store}:/store:ro",
        "--volume", f"{keys}:/keys:ro",
        "--env", "CMLFS_STORE=/store", "--env", "CMLFS_MOUNT=/data/model",
        "--env", "CMLFS_HTTP=127.0.0.1:9100",
        image, "--key-file", "/keys/model.key",
    )  # fmt: skip


def _ready(name: str) -> bool:
    return podman("exec", name, "cmlfs", "status", "/data/model", check=False).returncode == 0


def _consumer_digests(name: str) -> dict[str, str]:
    return json.loads(podman("exec", name, "python3", "-c", DIGESTS, "/data/model").stdout)


def test_the_image_holds_fuse3_and_cmlfs_only_and_runs_as_a_user(image):
    script = (
        "id -u; cmlfs --version; command -v fusermount3; "
        "command -v gcc cc pkg-config pip3 || echo no-build-tools; "
        "dpkg -s libfuse3-dev >/dev/null 2>&1 || echo no-dev-packages"
    )
    result = podman("run", "--rm", "--entrypoint", "sh", image, "-c", script)
    lines = result.stdout.split()
    assert lines[0] == str(IMAGE_USER)
    assert "/usr/bin/fusermount3" in lines
    assert "no-build-tools" in lines and "no-dev-packages" in lines


def test_a_consumer_container_reads_the_sidecars_mount_and_survives_its_restart(
    image, model, shared, containers
):
    store, keys, expected = model
    containers.extend(["cmlfs-sidecar", "cmlfs-consumer"])
    _start_sidecar("cmlfs-sidecar", image, store, keys, shared)
    wait_for(lambda: _ready("cmlfs-sidecar"), timeout=60, what="the sidecar's mount")
    podman(
        "run", "--detach", "--name", "cmlfs-consumer",
        "--volume", f"{shared}:/data:rslave", "--entrypoint", "sleep", image, "infinity",
    )  # fmt: skip
    started = podman("inspect", "--format", "{{.State.StartedAt}}", "cmlfs-consumer").stdout
    assert _consumer_digests("cmlfs-consumer") == expected

    podman("kill", "--signal", "KILL", "cmlfs-sidecar")
    dead = podman("exec", "cmlfs-consumer", "cat", "/data/model/config.json", check=False)
    assert dead.returncode != 0  # the daemon is gone: ENOTCONN, never stale bytes

    podman("start", "cmlfs-sidecar")
    wait_for(lambda: _ready("cmlfs-sidecar"), timeout=60, what="the remount")
    assert _consumer_digests("cmlfs-consumer") == expected
    again = podman("inspect", "--format", "{{.State.StartedAt}}", "cmlfs-consumer").stdout
    assert again == started, "the consumer was restarted"
    logs = podman("logs", "cmlfs-sidecar").stderr
    assert "event=stale_mount_cleared" in logs and "Traceback" not in logs

    podman("stop", "--time", "20", "cmlfs-sidecar")
    state = podman("inspect", "--format", "{{.State.ExitCode}}", "cmlfs-sidecar").stdout
    assert state.strip() == "0"
    assert mount_entry(shared / "model") is None  # SIGTERM unmounted, everywhere
    listing = podman("exec", "cmlfs-consumer", "ls", "-A", "/data/model").stdout
    assert listing.strip() == ""


def test_cmlfs_run_in_a_container_passes_the_exit_status_and_unmounts(image, model):
    store, keys, expected = model
    script = (
        f'python3 -c "{DIGESTS}" /tmp/model; '
        "grep -q ' /tmp/model .* - fuse.cmlfs ' /proc/self/mountinfo && exit 3"
    )
    result = podman(
        "run", "--rm", *FUSE,
        "--volume", f"{store}:/store:ro", "--volume", f"{keys}:/keys:ro",
        "--entrypoint", "sh", image, "-c",
        "cmlfs run --store /store --mount /tmp/model --key-file /keys/model.key -- "
        f"sh -c {shlex.quote(script)}; "
        "status=$?; grep -c fuse.cmlfs /proc/self/mountinfo; exit $status",
        check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    digests, mounts_after = result.stdout.strip().splitlines()
    assert json.loads(digests) == expected
    assert mounts_after == "0"
