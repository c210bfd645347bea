"""S3 stores: push to and mount from a real S3-compatible server (moto in server mode)."""

import pytest

from tests.conftest import mounted, read_in_pieces, run_cli, tree_digests, worker_pids
from tests.e2e.stores_servers import (
    S3_BUCKET,
    assert_reads_back,
)

pytestmark = pytest.mark.fuse


@pytest.fixture
def pushed(encrypted_model, s3_server, tmp_path):
    """(src, contents, local store, key, s3 url, prefix) of a model pushed to S3."""
    src, contents, store, key = encrypted_model
    prefix = f"models/{tmp_path.name}"
    url = f"s3://{S3_BUCKET}/{prefix}"
    out = run_cli("push", store, url, env=s3_server.env).stdout
    assert "11 objects uploaded, 0 already there" in out
    assert f"mount with: cmlfs mount {url}/ MOUNTPOINT" in out
    return src, contents, store, key, url, prefix


def test_push_resumes_and_mount_reads_back(pushed, s3_server, tmp_path):
    src, contents, store, key, url, _ = pushed
    again = run_cli("push", store, url, env=s3_server.env).stdout
    assert "1 objects uploaded, 10 already there" in again
    with mounted(url, tmp_path / "mnt", "--key-file", key, env=s3_server.env) as mnt:
        assert_reads_back(mnt, src, contents)
    inspected = run_cli("inspect", url, env=s3_server.env).stdout
    assert "blobs:       10" in inspected
    assert "ok:" in run_cli("verify", url, "--key-file", key, env=s3_server.env).stdout


def test_workers_read_back_from_s3(pushed, s3_server, tmp_path):
    """Workers close the S3 client's connections they inherited; botocore opens new ones at
    the next request, and every byte reads back."""
    src, contents, _, key, url, _ = pushed
    args = ("--key-file", key, "--workers", "2")
    with mounted(url, tmp_path / "mnt", *args, env=s3_server.env) as mnt:
        assert len(worker_pids(mnt)) == 2
        for name, data in contents.items():
            assert read_in_pieces(mnt / name, len(data)) == data
        assert tree_digests(mnt) == tree_digests(src)


def test_missing_credentials_fail_with_one_line(pushed, s3_server):
    *_, key, url, _ = pushed
    env = {k: v for k, v in s3_server.env.items() if not k.startswith("AWS_SECRET")}
    env.pop("AWS_ACCESS_KEY_ID")
    result = run_cli("verify", url, "--key-file", key, env=env, check=False)
    assert result.returncode == 1
    assert "no AWS credentials" in result.stderr and "Traceback" not in result.stderr
