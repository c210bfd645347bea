"""OCI stores: push to and mount from Debian's docker-registry (distribution), anonymous
over plain HTTP and with htpasswd basic auth over TLS."""

import json
import os
import re
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cmlfs.errors import StoreError
from cmlfs.stores.base import StoreSettings
from cmlfs.stores.oci import ARTIFACT_TYPE, OCI_MANIFEST, OciStore
from tests.conftest import mounted, run_cli
from tests.e2e.stores_servers import assert_reads_back

pytestmark = pytest.mark.fuse

_REFERENCE = re.compile(r"mount with: cmlfs mount (oci://\S+@sha256:[0-9a-f]{64}) MOUNTPOINT")


def push(store, dest, *args, env=None) -> tuple[str, str]:
    """(digest reference printed by push, its whole output)."""
    out = run_cli("push", store, dest, *args, env=env).stdout
    match = _REFERENCE.search(out)
    assert match, out
    return match.group(1), out


def test_anonymous_push_resume_mount_by_digest_and_tag(encrypted_model, registry, tmp_path):
    src, contents, store, key = encrypted_model
    tag_ref = registry.ref(f"models/{tmp_path.name.lower()}:v1")
    digest_ref, out = push(store, tag_ref, "--insecure-http")
    assert "11 objects uploaded, 0 already there" in out
    again, out = push(store, tag_ref, "--insecure-http")
    assert again == digest_ref and "0 objects uploaded, 11 already there" in out

    digest = digest_ref.rpartition("@")[2]
    request = urllib.request.Request(
        f"http://{registry.host}/v2/models/{tmp_path.name.lower()}/manifests/{digest}",
        headers={"Accept": OCI_MANIFEST},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        image = json.loads(answer.read())
    assert image["artifactType"] == ARTIFACT_TYPE and len(image["layers"]) == 11

    with mounted(digest_ref, tmp_path / "mnt", "--key-file", key, "--insecure-http") as mnt:
        assert_reads_back(mnt, src, contents)
    with mounted(tag_ref, tmp_path / "mnt2", "--key-file", key, "--insecure-http") as mnt:
        assert (mnt / "config.json").read_bytes() == contents["config.json"]
    inspected = run_cli("inspect", digest_ref, "--insecure-http").stdout
    assert "blobs:       10" in inspected
    assert "ok:" in run_cli("verify", tag_ref, "--key-file", key, "--insecure-http").stdout


def test_plain_http_registry_needs_the_insecure_flag(encrypted_model, registry, tmp_path):
    *_, store, _ = encrypted_model
    result = run_cli("push", store, registry.ref("models/refused:v1"), check=False)
    assert result.returncode == 1 and "cmlfs: error:" in result.stderr


def test_tls_and_basic_auth_registry(encrypted_model, secure_registry, tmp_path):
    src, contents, store, key = encrypted_model
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(secure_registry.ca_file)}
    auth = ("--registry-auth-file", secure_registry.auth_file)
    ref = secure_registry.ref("private/model:v1")

    denied = run_cli("push", store, ref, env=env, check=False)
    assert denied.returncode == 1 and "needs credentials" in denied.stderr
    untrusted = run_cli("push", store, ref, *auth, check=False)
    assert untrusted.returncode == 1 and "TLS handshake failed" in untrusted.stderr

    digest_ref, _ = push(store, ref, *auth, env=env)
    with mounted(digest_ref, tmp_path / "mnt", "--key-file", key, *auth, env=env) as mnt:
        assert_reads_back(mnt, src, contents)
    log = run_cli("verify", digest_ref, "--key-file", key, *auth, env=env)
    assert "ok:" in log.stdout and "s3cret" not in log.stdout + log.stderr


def test_an_upload_location_that_is_not_a_url_is_a_store_error(tmp_path):
    """A registry is hostile input too: a Location such as "https://[x" must not crash."""

    class Registry(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # no blob there yet
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:  # start an upload, at a location that is no URL
            self.send_response(202)
            self.send_header("Location", "https://[broken/upload")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    blob = tmp_path / "blob"
    blob.write_bytes(b"ciphertext")
    try:
        store = OciStore(
            f"oci://127.0.0.1:{server.server_address[1]}/model:v1",
            StoreSettings(insecure_http=True, attempts=1),
        )
        with pytest.raises(StoreError, match="invalid upload location"):
            store.put(f"blobs/{'ab' * 32}", blob, lambda n: None)
    finally:
        server.shutdown()
        server.server_close()
