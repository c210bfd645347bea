"""OCI registries with bearer-token auth: Debian's docker-registry (distribution 2.8) with
``auth: token:`` trusting tests/oci_token_server.py, both over TLS from a private CA
(``--store-ca``)."""

import os
from pathlib import Path

import pytest
import requests

from cmlfs.stores.oci import OCI_MANIFEST
from tests.conftest import mount_entry, mounted, run_cli
from tests.e2e.stores_servers import (
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    TOKEN_READER,
    TOKEN_READER_PASSWORD,
    assert_reads_back,
)
from tests.e2e.test_stores_oci import push
from tests.oci_token_server import Grant

pytestmark = pytest.mark.fuse

_PUSHER = (REGISTRY_USER, REGISTRY_PASSWORD)


def no_credentials_env(tmp_path: Path) -> dict[str, str]:
    """The environment with no registry credentials and no CA bundle variable to fall back on."""
    env = {k: v for k, v in os.environ.items() if k not in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG")}
    env.pop("REQUESTS_CA_BUNDLE", None)
    env["DOCKER_CONFIG"] = str(tmp_path / "no-docker-config")
    return env


def one_error_line(result) -> str:
    """The single ``cmlfs: error:`` line a refused command prints."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("cmlfs: error: ")
    return lines[0]


def pusher_setup(token_registry, tmp_path) -> tuple[dict, tuple, tuple, str]:
    """(environment without stray credentials, --store-ca, the pusher's auth file option,
    a fresh tag) for one test."""
    env = no_credentials_env(tmp_path)
    ca = ("--store-ca", token_registry.registry.ca_file)
    pusher = ("--registry-auth-file", token_registry.auth_file(tmp_path, *_PUSHER))
    ref = token_registry.registry.ref(f"tokens/model:{tmp_path.name.lower()}")
    return env, ca, pusher, ref


def test_push_mount_and_verify_through_the_token_service(encrypted_model, token_registry, tmp_path):
    src, contents, store, key = encrypted_model
    env, ca, pusher, ref = pusher_setup(token_registry, tmp_path)

    digest_ref, out = push(store, ref, *pusher, *ca, env=env)
    assert "11 objects uploaded" in out
    push_grant = Grant(
        REGISTRY_USER, ("repository:tokens/model:pull,push",), (("tokens/model", ("pull", "push")),)
    )
    assert push_grant in token_registry.tokens.grants

    with mounted(digest_ref, tmp_path / "mnt", "--key-file", key, *pusher, *ca, env=env) as mnt:
        assert_reads_back(mnt, src, contents)
    pull_grant = Grant(
        REGISTRY_USER, ("repository:tokens/model:pull",), (("tokens/model", ("pull",)),)
    )
    assert pull_grant in token_registry.tokens.grants
    log = run_cli("verify", ref, "--key-file", key, *pusher, *ca, env=env)
    assert "ok:" in log.stdout and "s3cret" not in log.stdout + log.stderr


def test_token_service_refusals(encrypted_model, token_registry, tmp_path):
    _, _, store, key = encrypted_model
    env, ca, pusher, ref = pusher_setup(token_registry, tmp_path)
    digest_ref, _ = push(store, ref, *pusher, *ca, env=env)
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(*args):
        result = run_cli(
            "mount", digest_ref, mnt, "--key-file", key, *ca, *args, env=env, check=False
        )
        assert mount_entry(mnt) is None
        return one_error_line(result)

    anonymous = mount()
    assert "refused" in anonymous and "tokens/model" in anonymous, anonymous

    (tmp_path / "wrong").mkdir()
    wrong = token_registry.auth_file(tmp_path / "wrong", REGISTRY_USER, "not-the-password")
    refused = mount("--registry-auth-file", wrong)
    assert "refused a token (HTTP 401)" in refused and "not-the-password" not in refused

    reader = token_registry.auth_file(tmp_path, TOKEN_READER, TOKEN_READER_PASSWORD)
    other_repo = mount("--registry-auth-file", reader)  # reader may pull tokens/other only
    assert "refused" in other_repo and "tokens/model" in other_repo, other_repo
    assert (
        Grant(TOKEN_READER, ("repository:tokens/model:pull",), ()) in token_registry.tokens.grants
    )

    read_only = run_cli(
        "push",
        store,
        token_registry.registry.ref("tokens/other:v1"),
        "--registry-auth-file",
        reader,
        *ca,
        env=env,
        check=False,
    )
    assert "refused" in one_error_line(read_only)


def test_registry_refuses_a_token_for_another_repository(encrypted_model, token_registry, tmp_path):
    """The registry itself checks the ``access`` claim: a valid token for tokens/other does not
    open tokens/model."""
    _, _, store, _ = encrypted_model
    ca = str(token_registry.registry.ca_file)
    pusher = ("--registry-auth-file", token_registry.auth_file(tmp_path, *_PUSHER))
    tag = tmp_path.name.lower()
    for repository in ("tokens/model", "tokens/other"):
        push(store, token_registry.registry.ref(f"{repository}:{tag}"), *pusher, "--store-ca", ca)

    answer = requests.get(
        token_registry.tokens.realm,
        params={"service": "cmlfs-test-registry", "scope": "repository:tokens/other:pull"},
        auth=_PUSHER,
        verify=ca,
        timeout=10,
    )
    answer.raise_for_status()
    bearer = {"Authorization": f"Bearer {answer.json()['token']}", "Accept": OCI_MANIFEST}

    def manifest(repository: str) -> requests.Response:
        url = f"https://{token_registry.registry.host}/v2/{repository}/manifests/{tag}"
        return requests.get(url, headers=bearer, verify=ca, timeout=10)

    assert manifest("tokens/other").status_code == 200
    refused = manifest("tokens/model")
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
