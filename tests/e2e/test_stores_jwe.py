"""JWE model folders from network stores: S3 (moto), one .jwe file over HTTP (nginx), an
artifact of files in an OCI registry (docker-registry)."""

import errno
import hashlib
import json
import os
from urllib.parse import urljoin

import pytest
import requests
from jwcrypto import jwk

from cmlfs.format.jwe import CHUNK_BYTES
from cmlfs.mountpoint import mount_entry
from tests.conftest import mounted, run_cli
from tests.e2e.stores_servers import S3_BUCKET
from tests.jwe_helpers import make_jwe

pytestmark = pytest.mark.fuse


@pytest.fixture
def jwe_key(tmp_path):
    key = jwk.JWK.generate(kty="oct", size=256)
    path = tmp_path / "key.jwk"
    path.write_text(key.export())
    return key, path


@pytest.mark.expect_log(
    "event=file_refused path=README.md", "event=read_failed .*replaced since it was first read"
)
def test_jwe_folder_in_s3(s3_server, jwe_key, tmp_path):
    key, key_file = jwe_key
    contents = {
        "config.json": b'{"a": 1}',
        "weights/model.safetensors": os.urandom(2 * CHUNK_BYTES + 77),
    }
    client = s3_server.client()
    prefix = f"jwe/{tmp_path.name}"
    for name, data in contents.items():
        client.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/{name}.jwe", Body=make_jwe(data, key))
    client.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/README.md", Body=b"plain")
    url = f"s3://{S3_BUCKET}/{prefix}"
    args = ("--key-file", key_file, "--cache-size", "1M")
    with mounted(url, tmp_path / "mnt", *args, env=s3_server.env) as mnt:
        assert (mnt / "weights/model.safetensors").read_bytes() == contents[
            "weights/model.safetensors"
        ]
        assert sorted(os.listdir(mnt)) == ["config.json", "weights"]  # README.md: not JWE
        # config.json authenticated before the mount was ready and was never read: the
        # object replaced now (same size, another JWE under the same key) reads EIO.
        replacement = make_jwe(b'{"a": 2}', key)
        client.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/config.json.jwe", Body=replacement)
        with pytest.raises(OSError) as raised:
            (mnt / "config.json").read_bytes()
        assert raised.value.errno == errno.EIO


def test_one_jwe_file_over_http(nginx, jwe_key, tmp_path):
    key, key_file = jwe_key
    data = os.urandom(CHUNK_BYTES + 5)
    folder = nginx.root / tmp_path.name
    folder.mkdir()
    path = folder / "model.safetensors.jwe"
    path.write_bytes(make_jwe(data, key, alg="dir"))
    url = nginx.url(f"{tmp_path.name}/model.safetensors.jwe")
    with mounted(url, tmp_path / "mnt", "--key-file", key_file) as mnt:
        assert os.listdir(mnt) == ["model.safetensors"]
        assert (mnt / "model.safetensors").read_bytes() == data
    tampered = bytearray(path.read_bytes())
    tampered[-30] ^= 1  # in the ciphertext, just before the tag
    path.write_bytes(bytes(tampered))
    result = run_cli("mount", url, tmp_path / "mnt", "--key-file", key_file, check=False)
    assert result.returncode != 0 and "no file of the model could be authenticated" in result.stderr
    assert mount_entry(tmp_path / "mnt") is None
    folder_url = nginx.url(tmp_path.name)  # neither a cmlfs store nor one .jwe file
    result = run_cli("mount", folder_url, tmp_path / "mnt", "--key-file", key_file, check=False)
    assert result.returncode != 0 and "cannot list a folder" in result.stderr


def push_files(registry, repo_tag: str, files: dict[str | None, bytes]) -> None:
    """An artifact of files as ``oras push`` makes it (oras-project/oras-go
    content/file: one layer per file, mediaType application/vnd.oci.image.layer.v1.tar,
    annotated with its name; the empty config), through the distribution API. A file
    named None is a layer without a name, as an image's."""
    repo, _, tag = repo_tag.partition(":")
    base = f"http://{registry.host}/v2/{repo}"

    def upload(data: bytes) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        start = requests.post(f"{base}/blobs/uploads/", timeout=10)
        location = urljoin(base, start.headers["Location"])
        separator = "&" if "?" in location else "?"
        done = requests.put(f"{location}{separator}digest={digest}", data=data, timeout=30)
        assert done.status_code == 201, done.text
        return {"digest": digest, "size": len(data)}

    layers = [
        {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            **upload(data),
            **({"annotations": {"org.opencontainers.image.title": name}} if name else {}),
        }
        for name, data in files.items()
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.unknown.artifact.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", **upload(b"{}")},
        "layers": layers,
    }
    answer = requests.put(
        f"{base}/manifests/{tag}",
        data=json.dumps(manifest),
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    )
    assert answer.status_code == 201, answer.text


def test_jwe_files_in_an_oci_artifact(registry, jwe_key, tmp_path):
    key, key_file = jwe_key
    data = os.urandom(CHUNK_BYTES + 3)
    repo_tag = f"jwe/{tmp_path.name.lower()}:v1"
    push_files(registry, repo_tag, {"model.safetensors.jwe": make_jwe(data, key)})
    ref = registry.ref(repo_tag)
    args = ("--key-file", key_file, "--insecure-http")
    with mounted(ref, tmp_path / "mnt", *args) as mnt:
        assert os.listdir(mnt) == ["model.safetensors"]
        assert (mnt / "model.safetensors").read_bytes() == data
    store = tmp_path / "store"
    run_cli("import", ref, store, *args)
    with mounted(store, tmp_path / "mnt", "--key-file", key_file) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == data
    untitled = f"jwe/{tmp_path.name.lower()}-image:v1"
    push_files(registry, untitled, {None: b"a tar layer"})
    result = run_cli("mount", registry.ref(untitled), tmp_path / "mnt", *args, check=False)
    assert result.returncode != 0 and "carries no file name" in result.stderr
    dotdot = f"jwe/{tmp_path.name.lower()}-dotdot:v1"
    push_files(registry, dotdot, {"../escape.jwe": make_jwe(data, key)})
    result = run_cli("mount", registry.ref(dotdot), tmp_path / "mnt", *args, check=False)
    assert result.returncode != 0 and "invalid file name" in result.stderr
