"""``--store-ca``: network stores whose TLS certificate a private CA signs (an OCI registry,
an HTTPS server, an S3 endpoint) are verified against that CA, and refused without it in one
line."""

import pytest

from tests.conftest import mounted, run_cli
from tests.e2e.stores_servers import S3_BUCKET, assert_reads_back, make_tls
from tests.e2e.test_stores_oci import push
from tests.e2e.test_stores_oci_token import no_credentials_env, one_error_line
from tests.system_ca import in_system_store, without_ca_variables

pytestmark = pytest.mark.fuse

TLS_REFUSAL = "TLS handshake failed: certificate verify failed"


def test_private_registry(encrypted_model, secure_registry, tmp_path):
    src, contents, store, key = encrypted_model
    env = no_credentials_env(tmp_path)
    auth = ("--registry-auth-file", secure_registry.auth_file)
    ca = ("--store-ca", secure_registry.ca_file)
    ref = secure_registry.ref(f"private/ca-{tmp_path.name.lower()}:v1")

    untrusted = one_error_line(run_cli("push", store, ref, *auth, env=env, check=False))
    assert TLS_REFUSAL in untrusted and "--store-ca" in untrusted

    digest_ref, _ = push(store, ref, *auth, *ca, env=env)
    assert "ok:" in run_cli("verify", digest_ref, "--key-file", key, *auth, *ca, env=env).stdout
    refused = run_cli("verify", digest_ref, "--key-file", key, *auth, env=env, check=False)
    assert TLS_REFUSAL in one_error_line(refused)

    # --store-ca wins over a CA bundle variable naming another CA
    (tmp_path / "other").mkdir()
    env["REQUESTS_CA_BUNDLE"] = str(make_tls(tmp_path / "other")[0])
    with mounted(digest_ref, tmp_path / "mnt", "--key-file", key, *auth, *ca, env=env) as mnt:
        assert_reads_back(mnt, src, contents)

    missing = ("--store-ca", tmp_path / "absent.pem")
    absent = one_error_line(run_cli("inspect", digest_ref, *auth, *missing, check=False))
    assert "CA file" in absent and "does not exist" in absent


def test_https_server(encrypted_model, nginx_tls, tmp_path):
    src, contents, store, key = encrypted_model
    run_cli("push", store, nginx_tls.root / tmp_path.name)
    url = nginx_tls.url(tmp_path.name)
    env = no_credentials_env(tmp_path)

    refused = run_cli("verify", url, "--key-file", key, env=env, check=False)
    assert TLS_REFUSAL in one_error_line(refused)
    ca = ("--store-ca", nginx_tls.ca_file)
    with mounted(url, tmp_path / "mnt", "--key-file", key, *ca, env=env) as mnt:
        assert_reads_back(mnt, src, contents)


def test_s3_endpoint(encrypted_model, s3_tls_server, tmp_path):
    src, contents, store, key = encrypted_model
    url = f"s3://{S3_BUCKET}/models/{tmp_path.name}"
    env = {**s3_tls_server.env}
    env.pop("AWS_CA_BUNDLE", None)
    ca = ("--store-ca", s3_tls_server.ca_file)

    refused = run_cli("push", store, url, env=env, check=False)
    assert TLS_REFUSAL in one_error_line(refused)
    assert "11 objects uploaded" in run_cli("push", store, url, *ca, env=env).stdout
    with mounted(url, tmp_path / "mnt", "--key-file", key, *ca, env=env) as mnt:
        assert_reads_back(mnt, src, contents)


def test_a_private_ca_only_in_the_system_store_is_trusted_by_stores(
    encrypted_model, nginx_tls, s3_tls_server, tmp_path
):
    """Without --store-ca or a CA variable, stores trust the system trust store (a CA
    installed with update-ca-certificates), as the key broker does, not certifi's bundle."""
    src, contents, store, key = encrypted_model
    run_cli("push", store, nginx_tls.root / tmp_path.name)
    url = nginx_tls.url(tmp_path.name)
    s3_url = f"s3://{S3_BUCKET}/models/system-ca-{tmp_path.name}"
    env = without_ca_variables(no_credentials_env(tmp_path))
    s3_env = without_ca_variables(s3_tls_server.env)
    with in_system_store(nginx_tls.ca_file, f"nginx-{nginx_tls.port}"):
        with in_system_store(s3_tls_server.ca_file, "moto"):
            assert "11 objects uploaded" in run_cli("push", store, s3_url, env=s3_env).stdout
            assert "ok:" in run_cli("verify", s3_url, "--key-file", key, env=s3_env).stdout
        with mounted(url, tmp_path / "mnt", "--key-file", key, env=env) as mnt:
            assert_reads_back(mnt, src, contents)
    refused = run_cli("verify", url, "--key-file", key, env=env, check=False)
    assert TLS_REFUSAL in one_error_line(refused)
