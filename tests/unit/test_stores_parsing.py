"""Strict parsing of what network stores are told by users and servers (hostile input)."""

import base64
import json

import pytest

from cmlfs.errors import StoreError
from cmlfs.stores import open_store
from cmlfs.stores.base import ObjectChanged, StoreSettings, parse_header
from cmlfs.stores.http import (
    CachedEnvironmentSession,
    etag_matches,
    parse_content_range,
    safe_url,
)
from cmlfs.stores.oci import (
    ARTIFACT_TYPE,
    BLOB_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    OCI_MANIFEST,
    load_credentials,
    parse_challenge,
    parse_image_manifest,
    parse_reference,
)
from cmlfs.stores.s3 import parse_s3_url

HEX = "ab" * 32
DIGEST = "sha256:" + HEX


def test_oci_references():
    ref = parse_reference("oci://127.0.0.1:5000/models/demo:v1")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "127.0.0.1:5000",
        "models/demo",
        "v1",
        None,
    )
    assert parse_reference("oci://ghcr.io/org/m").tag == "latest"
    pinned = parse_reference(f"oci://reg.example/org/m@{DIGEST}")
    assert pinned.digest == DIGEST and str(pinned) == f"oci://reg.example/org/m@{DIGEST}"


@pytest.mark.parametrize(
    "url",
    [
        "oci://registry-only",
        "oci://reg/Upper/case:v1",
        "oci://reg/repo:bad tag",
        "oci://reg/repo@sha256:short",
        "oci://reg/repo@md5:" + "a" * 32,
        "oci://user@reg/repo:v1",
        "oci://reg/../x:v1",
    ],
)
def test_bad_oci_references_are_refused(url):
    with pytest.raises(StoreError):
        parse_reference(url)


def _image(**overrides) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": DIGEST, "size": 2},
        "layers": [
            {"mediaType": MANIFEST_MEDIA_TYPE, "digest": "sha256:" + "cd" * 32, "size": 100},
            {"mediaType": BLOB_MEDIA_TYPE, "digest": DIGEST, "size": 5000},
        ],
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_image_manifest_maps_layers_to_store_names():
    objects = parse_image_manifest(_image())
    assert sorted(objects) == [f"blobs/{HEX}", "manifest.cmlfs"]
    assert objects[f"blobs/{HEX}"].size == 5000


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        _image(schemaVersion=1),
        _image(artifactType="application/vnd.other"),
        _image(layers=[]),
        _image(layers=[{"mediaType": BLOB_MEDIA_TYPE, "digest": DIGEST, "size": 1}]),
        _image(layers=[{"mediaType": MANIFEST_MEDIA_TYPE, "digest": DIGEST, "size": -1}]),
        _image(layers=[{"mediaType": MANIFEST_MEDIA_TYPE, "digest": DIGEST, "size": True}]),
        _image(layers=[{"mediaType": MANIFEST_MEDIA_TYPE, "digest": "sha512:" + HEX, "size": 1}]),
        _image(layers=[{"mediaType": "application/x-other", "digest": DIGEST, "size": 1}]),
        _image(layers=[{"mediaType": MANIFEST_MEDIA_TYPE, "digest": DIGEST, "size": 1 << 40}]),
        _image(layers=[{"mediaType": MANIFEST_MEDIA_TYPE, "digest": DIGEST, "size": 1}] * 2),
        b'{"schemaVersion": 2, "schemaVersion": 2}',
        b"[" * 100_000 + b"]" * 100_000,
        b" " * (5 * 1024 * 1024),
    ],
)
def test_hostile_image_manifests_are_refused(body):
    with pytest.raises(StoreError):
        parse_image_manifest(body)


def test_content_range_must_name_exactly_the_bytes_asked():
    assert parse_content_range("bytes 10-19/100", 10, 10, 100) == 100
    for value in (None, "bytes 10-19/*", "bytes 11-20/100", "bytes 10-18/100", "items 10-19/100"):
        with pytest.raises(StoreError):
            parse_content_range(value, 10, 10, None)
    with pytest.raises(ObjectChanged):
        parse_content_range("bytes 10-19/101", 10, 10, 100)


def test_store_session_reads_the_environment_once_per_origin(monkeypatch, tmp_path):
    """Proxies and CA bundle variables still apply (per origin, NO_PROXY honoured), but are
    read once: later changes to the environment do not reach an origin already seen."""
    bundle = tmp_path / "ca.pem"
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    session = CachedEnvironmentSession()

    def settings(url: str) -> dict:
        return session.merge_environment_settings(url, {}, True, None, None)

    proxied, direct = settings("http://store.example/a"), settings("http://direct.example/a")
    assert proxied["proxies"]["http"] == "http://proxy.example:3128"
    assert "http" not in direct["proxies"]
    assert proxied["verify"] == str(bundle)
    proxied["proxies"]["http"] = "http://changed.example"  # a caller's copy, not the cache
    monkeypatch.setenv("HTTP_PROXY", "http://other.example:3128")
    assert settings("http://store.example/b")["proxies"]["http"] == "http://proxy.example:3128"
    assert settings("http://new.example/")["proxies"]["http"] == "http://other.example:3128"
    explicit = session.merge_environment_settings(
        "http://store.example/", {"http": "x"}, True, None, None
    )
    assert explicit["proxies"]["http"] == "x"


def test_etags_compare_weakly():
    assert etag_matches('"a"', 'W/"a"') and etag_matches('"a"', None)
    assert not etag_matches('"a"', '"b"')


def test_www_authenticate_challenges():
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="a:b:pull"'
    )
    assert scheme == "bearer" and params["service"] == "registry.example"
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
    for bad in ("", "Bearer realm=unquoted", 'Bearer realm="x" junk'):
        with pytest.raises(StoreError):
            parse_challenge(bad)


def test_registry_credentials_from_an_auth_file(tmp_path):
    path = tmp_path / "auth.json"
    token = base64.b64encode(b"user:pa:ss").decode()
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://[broken": {"auth": token},  # names no registry: skipped
                    "https://reg.example:5000/v2/": {"auth": token},
                    "other.example": {"username": "u", "password": "p"},
                }
            }
        )
    )
    assert load_credentials(path, "reg.example:5000") == ("user", "pa:ss")
    assert load_credentials(path, "other.example") == ("u", "p")
    assert load_credentials(path, "absent.example") is None
    assert load_credentials(None, "reg.example:5000") is None
    path.write_text('{"auths": {"reg.example": {"auth": "!!!"}}}')
    with pytest.raises(StoreError) as refused:
        load_credentials(path, "reg.example")
    assert "!!!" not in str(refused.value)


def test_store_headers_are_checked_and_never_echoed():
    assert parse_header("Authorization: Bearer abc") == ("Authorization", "Bearer abc")
    for bad in ("no colon secret-token", "Bad Name: x", "X-A: a\r\nX-B: b"):
        with pytest.raises(StoreError) as refused:
            parse_header(bad)
        assert "secret" not in str(refused.value)


def test_urls_for_messages_drop_credentials_and_queries():
    assert safe_url("https://u:p@host:8443/a/b?sig=secret#x") == "https://host:8443/a/b"


def test_s3_urls():
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ("s3:///prefix", "s3://bucket/../x", "s3://user@bucket/x"):
        with pytest.raises(StoreError):
            parse_s3_url(bad)


def test_open_store_dispatch(tmp_path):
    assert open_store(str(tmp_path)).describe() == str(tmp_path)
    assert open_store(f"file://{tmp_path}").describe() == str(tmp_path)
    assert open_store("https://h.example/m?sig=s").describe() == "https://h.example/m"
    with pytest.raises(StoreError):
        open_store("ftp://h/m")
    with pytest.raises(StoreError, match="insecure-http"):
        open_store("http://h.example/m", StoreSettings(headers=(("X-Token", "t"),)))
    with pytest.raises(StoreError):
        open_store("https://user:pw@h.example/m")


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"AWS_PROFILE": "nope"}, "The config profile (nope) could not be found"),
        ({"AWS_ACCESS_KEY_ID": "AKIDONLY"}, "missing: AWS_SECRET_ACCESS_KEY"),
        ({"AWS_DEFAULT_REGION": "bad region!"}, "region_name 'bad region!'"),
        ({"AWS_ENDPOINT_URL": "http://u:pw-s3cret@bad host"}, "invalid endpoint URL"),
    ],
)
def test_an_aws_configuration_boto3_refuses_is_one_store_error(monkeypatch, variables, reason):
    """Not a botocore traceback; an endpoint is never echoed (it may carry credentials)."""
    pytest.importorskip("boto3")
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreError, match=r"^AWS configuration refused: ") as caught:
        open_store("s3://bucket/prefix", StoreSettings())
    assert reason in str(caught.value) and "s3cret" not in str(caught.value)
