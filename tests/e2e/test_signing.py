"""Publisher signatures end to end: cmlfs sign and model_signing's own CLI accept each other's
signatures over a store; mounts with --trust-publisher read the plaintext through a real FUSE
mount from a folder, HTTP (nginx), S3 (moto) and OCI (docker-registry); a key holder's
re-encryption, a missing, malformed or changed signature, a format 1 store and an older
version are refused with one line and nothing mounted."""

import base64
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cmlfs.mountpoint import mount_entry
from cmlfs.signature import SIGNATURE_MEDIA_TYPE, SIGNATURE_NAME
from cmlfs.stores.oci import OCI_MANIFEST
from tests.conftest import force_unmount, mounted, run_cli, tree_digests, write_sample_model
from tests.e2e.stores_servers import S3_BUCKET, assert_reads_back
from tests.signing_helpers import der_fingerprint, ec_pair

pytestmark = pytest.mark.fuse

MODEL_SIGNING = str(Path(sys.executable).parent / "model_signing")


@pytest.fixture
def publisher(tmp_path: Path) -> tuple[Path, Path]:
    return ec_pair(tmp_path, "publisher")


@pytest.fixture
def signed_model(sample_model, key_file, publisher, tmp_path):
    """(src, contents, store, key file) of a sample model encrypted and signed in one step,
    sealed as version 1.2.0."""
    src, contents = sample_model
    store = tmp_path / "store"
    out = run_cli(
        "encrypt",
        src,
        store,
        "--key-file",
        key_file,
        "--model-version",
        "1.2.0",
        "--sign-key",
        publisher[0],
    ).stdout
    assert f"with key {der_fingerprint(publisher[1])}" in out
    return src, contents, store, key_file


def model_signing_verify(store: Path, public: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            MODEL_SIGNING,
            "verify",
            "key",
            store,
            "--signature",
            store / SIGNATURE_NAME,
            "--public_key",
            public,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def refused_mount(store, mnt: Path, *args, env=None) -> str:
    """The one error line of a mount that must be refused, with nothing left mounted."""
    mnt.mkdir(exist_ok=True)
    try:
        result = run_cli("mount", store, mnt, *args, check=False, env=env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1, result.stderr
        assert lines[0].startswith("cmlfs: error: ")
        assert mount_entry(mnt) is None
        return lines[0]
    finally:
        force_unmount(mnt)


def test_cmlfs_signature_is_accepted_by_model_signing_and_by_a_trusting_mount(
    signed_model, publisher, tmp_path
):
    src, contents, store, key = signed_model
    checked = model_signing_verify(store, publisher[1])
    assert checked.returncode == 0 and "Verification succeeded" in checked.stdout, checked
    trust = ("--trust-publisher", publisher[1], "--min-model-version", "1.2")
    with mounted(store, tmp_path / "mnt", "--key-file", key, *trust) as mnt:
        assert_reads_back(mnt, src, contents)
    assert "ok:" in run_cli("verify", store, "--key-file", key, *trust).stdout
    inspected = run_cli("inspect", store).stdout
    assert f"model.sig by key {der_fingerprint(publisher[1])}" in inspected


def test_a_store_signed_by_model_signing_mounts_with_trust(encrypted_model, publisher, tmp_path):
    src, _, store, key = encrypted_model
    subprocess.run(
        [
            MODEL_SIGNING,
            "sign",
            "key",
            store,
            "--private_key",
            publisher[0],
            "--signature",
            store / SIGNATURE_NAME,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    trust = ("--trust-publisher", publisher[1])
    with mounted(store, tmp_path / "mnt", "--key-file", key, *trust) as mnt:
        assert tree_digests(mnt) == tree_digests(src)


def test_a_key_holders_re_encryption_signed_with_another_key_is_refused(
    signed_model, publisher, tmp_path
):
    """Whoever holds the model key can seal other plaintext under it; with the publisher's
    signature required, neither their own signature nor the publisher's old one passes."""
    *_, store, key = signed_model
    forged_src = tmp_path / "forged-model"
    write_sample_model(forged_src, seed=99)
    forged = tmp_path / "forged"
    attacker = ec_pair(tmp_path, "attacker")
    run_cli("encrypt", forged_src, forged, "--key-file", key, "--model-version", "9")
    run_cli("sign", forged, "--key", attacker[0])
    args = ("--key-file", key, "--trust-publisher", publisher[1])
    line = refused_mount(forged, tmp_path / "mnt", *args)
    assert f"another key, {der_fingerprint(attacker[1])}" in line
    assert der_fingerprint(publisher[1]) in line

    (forged / SIGNATURE_NAME).write_bytes((store / SIGNATURE_NAME).read_bytes())
    line = refused_mount(forged, tmp_path / "mnt", *args)
    assert "is not the one publisher" in line and "signed" in line
    # without --trust-publisher the forgery is served: the signature is what stops it
    with mounted(forged, tmp_path / "mnt2", "--key-file", key) as mnt:
        assert tree_digests(mnt) == tree_digests(forged_src)


def _payload_changed(data: bytes) -> bytes:
    bundle = json.loads(data)
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["resources"].reverse()
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return json.dumps(bundle).encode()


SIGNATURE_CASES = {
    "missing": (None, "model.sig is missing"),
    "malformed": (lambda data: data[: len(data) // 2], "malformed"),
    "empty": (lambda data: b"", "malformed"),
    "payload changed": (_payload_changed, "does not verify with the trusted publisher"),
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_a_missing_malformed_or_changed_signature_refuses_the_mount(
    signed_model, publisher, tmp_path, case
):
    *_, store, key = signed_model
    change, needle = SIGNATURE_CASES[case]
    signature = store / SIGNATURE_NAME
    if change is None:
        signature.unlink()
    else:
        signature.write_bytes(change(signature.read_bytes()))
    args = ("--key-file", key, "--trust-publisher", publisher[1])
    assert needle in refused_mount(store, tmp_path / "mnt", *args)


def test_a_format_1_store_is_refused_with_trust(sample_model, key_file, publisher, tmp_path):
    src, _ = sample_model
    store = tmp_path / "store"
    result = run_cli(
        "encrypt", src, store, "--key-file", key_file, "--format", "1", "--sign-key", publisher[0]
    )
    assert "cannot be mounted with --trust-publisher" in result.stderr
    args = ("--key-file", key_file, "--trust-publisher", publisher[1])
    assert "format 1 store" in refused_mount(store, tmp_path / "mnt", *args)


def test_min_model_version_refuses_older_and_unordered_versions(signed_model, tmp_path):
    src, _, store, key = signed_model
    line = refused_mount(store, tmp_path / "mnt", "--key-file", key, "--min-model-version", "1.10")
    assert "version 1.2.0 is older than --min-model-version 1.10" in line
    with mounted(store, tmp_path / "mnt", "--key-file", key, "--min-model-version", "1.2.0.0"):
        pass
    unversioned = tmp_path / "unversioned"
    run_cli("encrypt", src, unversioned, "--key-file", key, "--model-version", "2024-12-07")
    args = ("--key-file", key, "--min-model-version", "1")
    line = refused_mount(unversioned, tmp_path / "mnt", *args)
    assert "'2024-12-07' is not a dotted number" in line
    usage = run_cli("mount", store, tmp_path / "mnt", "--min-model-version", "v1", check=False)
    assert usage.returncode == 2 and "not a dotted number" in usage.stderr


def test_push_carries_the_signature_to_every_store_kind(
    signed_model, publisher, nginx, s3_server, registry, tmp_path
):
    _, contents, store, key = signed_model
    trust = ("--key-file", key, "--trust-publisher", publisher[1])
    folder = nginx.root / tmp_path.name
    run_cli("push", store, folder)
    assert model_signing_verify(folder, publisher[1]).returncode == 0
    s3 = f"s3://{S3_BUCKET}/models/{tmp_path.name}"
    run_cli("push", store, s3, env=s3_server.env)
    repository = f"signed/{tmp_path.name.lower()}"
    oci_out = run_cli("push", store, registry.ref(f"{repository}:v1"), "--insecure-http")
    oci = oci_out.stdout.split("mount with: cmlfs mount ")[1].split()[0]
    digest = oci.rpartition("@")[2]
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repository}/manifests/{digest}",
        headers={"Accept": OCI_MANIFEST},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        layers = json.loads(answer.read())["layers"]
    assert [layer["mediaType"] for layer in layers].count(SIGNATURE_MEDIA_TYPE) == 1

    for where, extra, env in (
        (folder, (), None),
        (nginx.url(tmp_path.name), (), None),
        (s3, (), s3_server.env),
        (oci, ("--insecure-http",), None),
    ):
        with mounted(where, tmp_path / "mnt", *trust, *extra, env=env) as mnt:
            assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]

    # a signature by another key, of the same size, replaces the old one on the next push
    attacker = ec_pair(tmp_path, "attacker")
    run_cli("sign", store, "--key", attacker[0])
    run_cli("push", store, s3, env=s3_server.env)
    line = refused_mount(s3, tmp_path / "mnt", *trust, env=s3_server.env)
    assert der_fingerprint(attacker[1]) in line


def test_verify_without_a_key_checks_every_object_against_the_signature(
    signed_model, publisher, nginx, tmp_path
):
    """`cmlfs verify --trust-publisher` with no key hashes every signed object (from a folder
    and over HTTP) and names the first that differs; the sealed version needs the key."""
    *_, store, _ = signed_model
    served = nginx.root / tmp_path.name
    run_cli("push", store, served)
    for where in (store, nginx.url(tmp_path.name)):
        out = run_cli("verify", where, "--trust-publisher", publisher[1]).stdout
        assert f"match the digests signed by {der_fingerprint(publisher[1])}" in out
    blob = sorted((served / "blobs").iterdir())[-1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    trust = ("--trust-publisher", publisher[1])
    result = run_cli("verify", nginx.url(tmp_path.name), *trust, check=False)
    assert result.returncode != 0 and f"blobs/{blob.name}: its SHA-256 differs" in result.stderr
    result = run_cli("verify", store, *trust, "--min-model-version", "1", check=False)
    assert result.returncode != 0 and "needs the key" in result.stderr


def test_sign_refuses_a_folder_with_stray_files(encrypted_model, publisher):
    *_, store, _ = encrypted_model
    (store / "blobs" / ".leftover.partial").write_bytes(b"x")
    result = run_cli("sign", store, "--key", publisher[0], check=False)
    assert result.returncode != 0 and "not store objects" in result.stderr
    assert not (store / SIGNATURE_NAME).exists()
    assert len(result.stderr.strip().splitlines()) == 1
