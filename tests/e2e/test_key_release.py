"""Key release end to end: cmlfs dev-kbs, kbs:// and cdh:// sources, real mounts, bad inputs.

Every refusal must end the mount command with one line naming the cause and
leave nothing mounted; after the runs, no file or log outside the key file and
the broker's repository holds the key in any encoding.
"""

import base64
import os
import subprocess
from pathlib import Path

import pytest
from jwcrypto import jwk

from cmlfs.format.keys import key_id
from cmlfs.mountpoint import mount_entry
from tests.conftest import daemon_pid, mounted, run_cli, tree_digests, write_sample_model
from tests.e2e.kbs_servers import DevKbsProcess, HostileKbs, kbs_error, start_dev_kbs
from tests.e2e.stores_servers import free_port
from tests.fake_configfs_tsm import running_fake_tsm
from tests.jwe_helpers import make_jwe
from tests.kbs_helpers import ed25519_pair

pytestmark = pytest.mark.fuse
SAMPLE_ATTESTER = pytest.mark.expect_log("event=sample_attester")  # the daemon warns of it


def error_lines(stderr: str) -> list[str]:
    """stderr without the CLI's warnings (e.g. the one --attester sample always prints)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("cmlfs: warning:")]


def assert_refused(result: subprocess.CompletedProcess, mountpoint: Path, *needles: str) -> None:
    assert result.returncode != 0
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cmlfs: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert mount_entry(mountpoint) is None


def try_mount(store: Path, mountpoint: Path, *args: str | os.PathLike):
    mountpoint.mkdir(exist_ok=True)
    return run_cli("mount", store, mountpoint, *args, check=False, timeout=120)


def publish(kbs: DevKbsProcess, src: Path, store: Path, key_file: Path) -> Path:
    """Encrypt ``src`` with its key URI on ``kbs`` and register a key bundle pinning it."""
    transport = ["--kbs-ca", str(kbs.ca)] if kbs.ca else ["--insecure-kbs-http"]
    run_cli(
        "encrypt", src, store, "--key-file", key_file, "--key-uri", kbs.uri(), "--register",
        *transport,
    )  # fmt: skip
    return store


SAMPLE_PLAIN_HTTP = ("--attester", "sample", "--insecure-kbs-http")


def pin(key_file: Path) -> list[str]:
    """Options that pin the model's key id, as an operator does to use the store's key URI."""
    return ["--key-id", key_id(key_file.read_bytes())]


def encodings(key: bytes) -> list[bytes]:
    return [
        key,
        key.hex().encode(),
        key.hex().upper().encode(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key).rstrip(b"="),
    ]


def assert_key_nowhere(root: Path, key: bytes, *allowed: Path) -> None:
    """No file under ``root`` except ``allowed`` ones holds the key (raw, hex or base64)."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink() or any(path.is_relative_to(a) for a in allowed):
            continue
        data = path.read_bytes()
        found += [str(path) for needle in encodings(key) if needle in data]
    assert not found, f"key material found in {found}"


@SAMPLE_ATTESTER
@pytest.mark.parametrize("tee_key", ["ec", "rsa"])
def test_release_through_dev_kbs_ends_in_a_real_mount(
    dev_kbs, sample_model, key_file, tmp_path, tee_key
):
    src, _ = sample_model
    store = publish(dev_kbs, src, tmp_path / "store", key_file)
    log = tmp_path / "mount.log"
    args = [*dev_kbs.client_args(), *pin(key_file), "--tee-key", tee_key, "--log-file", log]
    with mounted(store, tmp_path / "mnt", *args) as mnt:  # the key URI comes from the manifest
        assert tree_digests(mnt) == tree_digests(src)
        proc = Path(f"/proc/{daemon_pid(mnt)}")
        key = key_file.read_bytes()
        for needle in encodings(key):
            assert needle not in (proc / "cmdline").read_bytes()
            assert needle not in (proc / "environ").read_bytes()
    assert "event=kbs_attested" in log.read_text()
    run_cli("verify", store, *dev_kbs.client_args(), *pin(key_file))
    dev_kbs.server.stop()  # flush the broker's log before scanning it
    assert_key_nowhere(tmp_path, key, key_file, dev_kbs.repository)


@SAMPLE_ATTESTER
def test_tls_verified_with_the_private_ca_and_refused_without(
    dev_kbs_tls, sample_model, key_file, tmp_path
):
    src, _ = sample_model
    store = publish(dev_kbs_tls, src, tmp_path / "store", key_file)
    with mounted(store, tmp_path / "mnt", *dev_kbs_tls.client_args(), *pin(key_file)) as mnt:
        assert tree_digests(mnt) == tree_digests(src)
    result = try_mount(store, tmp_path / "mnt", "--attester", "sample", *pin(key_file))
    assert_refused(result, tmp_path / "mnt", "TLS failure", "CERTIFICATE_VERIFY_FAILED")


def test_plain_http_broker_needs_insecure_http(dev_kbs, sample_model, key_file, tmp_path):
    src, _ = sample_model
    store = publish(dev_kbs, src, tmp_path / "store", key_file)
    result = try_mount(store, tmp_path / "mnt", "--attester", "sample", *pin(key_file))
    assert_refused(result, tmp_path / "mnt", f"TLS failure talking to https://{dev_kbs.address}")


@SAMPLE_ATTESTER
def test_policy_denial_refuses_the_mount_with_the_brokers_reason(
    dev_kbs, sample_model, key_file, tmp_path
):
    src, _ = sample_model
    store = publish(dev_kbs, src, tmp_path / "store", key_file)
    dev_kbs.set_policy({"default": "deny"}, tmp_path)
    result = try_mount(store, tmp_path / "mnt", *dev_kbs.client_args(), *pin(key_file))
    assert_refused(result, tmp_path / "mnt", "PolicyDeny: Access denied by policy")
    only_tdx = {"effect": "allow", "tee": "tdx", "resource": "default/*"}
    dev_kbs.set_policy({"default": "deny", "rules": [only_tdx]}, tmp_path)
    assert_refused(
        try_mount(store, tmp_path / "mnt", *dev_kbs.client_args(), *pin(key_file)), tmp_path / "mnt"
    )
    only_sample = {**only_tdx, "tee": ["sample"]}
    dev_kbs.set_policy({"default": "deny", "rules": [only_sample]}, tmp_path)
    with mounted(store, tmp_path / "mnt", *dev_kbs.client_args(), *pin(key_file)) as mnt:
        assert tree_digests(mnt) == tree_digests(src)


@SAMPLE_ATTESTER
def test_a_different_manifest_than_the_pinned_one_is_refused(
    dev_kbs, sample_model, key_file, tmp_path
):
    src, _ = sample_model
    publish(dev_kbs, src, tmp_path / "store", key_file)
    other = tmp_path / "model-v2"
    write_sample_model(other, seed=2)
    store2 = tmp_path / "store-v2"  # same key, same key URI, not registered
    run_cli("encrypt", other, store2, "--key-file", key_file, "--key-uri", dev_kbs.uri())
    result = try_mount(store2, tmp_path / "mnt", *dev_kbs.client_args(), *pin(key_file))
    assert_refused(result, tmp_path / "mnt", "not the one the released key bundle pins")
    # registering the raw key (no pin) releases it for any manifest sealed with it
    run_cli("key", "register", dev_kbs.uri(), "--key-file", key_file, "--insecure-kbs-http")
    with mounted(store2, tmp_path / "mnt", *dev_kbs.client_args(), *pin(key_file)) as mnt:
        assert tree_digests(mnt) == tree_digests(other)


def test_missing_and_malformed_resources(dev_kbs, encrypted_model, tmp_path):
    _, _, store, key_file = encrypted_model
    mnt = tmp_path / "mnt"
    args = [*dev_kbs.client_args(), *pin(key_file)]
    result = try_mount(store, mnt, "--key-uri", dev_kbs.uri("default/model/absent"), *args)
    assert_refused(result, mnt, "PluginInternalError", "no such resource")
    short = dev_kbs.repository / "default" / "model" / "short"
    short.parent.mkdir(parents=True)
    short.write_bytes(os.urandom(31))
    result = try_mount(store, mnt, "--key-uri", dev_kbs.uri("default/model/short"), *args)
    assert_refused(result, mnt, "neither a raw 32-byte key nor a cmlfs key bundle")
    (short.parent / "wrong").write_bytes(os.urandom(32))
    result = try_mount(store, mnt, "--key-uri", dev_kbs.uri("default/model/wrong"), *args)
    assert_refused(result, mnt, "wrong key")


def test_unreachable_broker(encrypted_model, tmp_path):
    _, _, store, key_file = encrypted_model
    uri = f"kbs://127.0.0.1:{free_port()}/default/model/demo"
    result = try_mount(
        store, tmp_path / "mnt", "--key-uri", uri, *SAMPLE_PLAIN_HTTP, *pin(key_file)
    )
    assert_refused(result, tmp_path / "mnt", "cannot reach http://127.0.0.1:")


def _auth_reply(hostile: HostileKbs, reply) -> str:
    hostile.routes[("POST", "/kbs/v0/auth")] = lambda body: reply
    return f"kbs://{hostile.address}/default/model/demo"


VERSION_MISMATCH = kbs_error(
    401,
    "AttestationError",
    "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: "
    "expect =0.5.0 while the request is 0.4.0",
)


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        (lambda h: _auth_reply(h, VERSION_MISMATCH), "Version Mismatch: expect =0.5.0"),
        (lambda h: _auth_reply(h, (200, b'{"nonce": ')), "challenge is not valid JSON"),
        (lambda h: _auth_reply(h, (200, b" " * (2 << 20))), "larger than 1048576 bytes"),
        (lambda h: _auth_reply(h, (503, b"busy")), "HTTP 503"),
        (lambda h: _auth_reply(h, (401, b"<html>")), "HTTP 401"),
        (
            lambda h: h.answer_resource("a/b/c", lambda h: (200, b"{" + b" " * 70000 + b"}")),
            "larger than 65536 bytes",
        ),
        (
            lambda h: h.answer_resource("a/b/c", lambda h: (200, b'{"protected":1}')),
            "not a flattened JWE",
        ),
        (
            lambda h: h.answer_resource("a/b/c", lambda h: h.jwe_to_another_key(os.urandom(32))),
            "does not open with this release's key",
        ),
        (
            lambda h: h.answer_resource("a/b/c", lambda h: h.jwe_to_client(b'{"key":1}')),
            "neither a raw 32-byte key nor a cmlfs key bundle",
        ),
        (
            lambda h: h.answer_resource("a/b/c", lambda h: kbs_error(404, "PluginNotFound", "x")),
            "PluginNotFound",
        ),
    ],
)
def test_misbehaving_broker(hostile_kbs, encrypted_model, tmp_path, script, needle):
    _, _, store, key_file = encrypted_model
    uri = script(hostile_kbs)
    result = try_mount(
        store, tmp_path / "mnt", "--key-uri", uri, *SAMPLE_PLAIN_HTTP, *pin(key_file)
    )
    assert_refused(result, tmp_path / "mnt", needle)


@SAMPLE_ATTESTER
def test_a_valid_jwe_from_the_hostile_broker_still_needs_the_right_key(
    hostile_kbs, encrypted_model, tmp_path
):
    _, contents, store, key_file = encrypted_model
    uri = hostile_kbs.answer_resource("a/b/c", lambda h: h.jwe_to_client(key_file.read_bytes()))
    args = ["--key-uri", uri, *SAMPLE_PLAIN_HTTP, *pin(key_file)]
    with mounted(store, tmp_path / "mnt", *args) as mnt:
        assert (mnt / "config.json").read_bytes() == contents["config.json"]


def test_no_tee_means_no_release_without_asking_for_sample(dev_kbs, encrypted_model, tmp_path):
    _, _, store, key_file = encrypted_model
    uri = ["--key-uri", dev_kbs.uri(), "--insecure-kbs-http", *pin(key_file)]
    result = try_mount(store, tmp_path / "mnt", *uri, "--tsm-root", tmp_path / "no-configfs")
    assert_refused(result, tmp_path / "mnt", "configfs-tsm is not available")
    fake = tmp_path / "tsm"
    fake.mkdir()
    with running_fake_tsm(fake, "tdx_guest", empty_outblob=True):
        result = try_mount(store, tmp_path / "mnt", *uri, "--attester", "tdx", "--tsm-root", fake)
    assert_refused(result, tmp_path / "mnt", "empty outblob")
    with running_fake_tsm(fake, "tdx_guest"):
        result = try_mount(store, tmp_path / "mnt", *uri, "--tsm-root", fake)
    assert_refused(result, tmp_path / "mnt", "no verifier for tdx evidence")


def test_data_hub_source(cdh, encrypted_model, tmp_path):
    _, contents, store, key_file = encrypted_model
    cdh.routes[("GET", "/cdh/resource/default/model/demo")] = lambda body: (
        200,
        key_file.read_bytes(),
    )
    cdh.routes[("GET", "/cdh/resource/default/model/denied")] = lambda body: (
        500,
        b"rpc error: code = Internal desc = get resource failed: Access denied by policy",
    )
    uri = f"cdh://{cdh.address}/default/model/demo"
    with mounted(store, tmp_path / "mnt", "--key-uri", uri) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
    assert cdh.requests == [("GET", "/cdh/resource/default/model/demo")]
    uri = f"cdh://{cdh.address}/default/model/denied"
    result = try_mount(store, tmp_path / "mnt", "--key-uri", uri)
    assert_refused(result, tmp_path / "mnt", "HTTP 500: rpc error", "Access denied by policy")


def test_data_hub_default_address_and_loopback_rule(encrypted_model, tmp_path):
    _, _, store, _ = encrypted_model
    result = try_mount(store, tmp_path / "mnt", "--key-uri", "cdh://192.0.2.1:8006/a/b/c")
    assert_refused(result, tmp_path / "mnt", "not loopback")
    result = run_cli("inspect", store, "--key-uri", "cdh:///a/b/c", check=False)
    assert "127.0.0.1:8006" in result.stderr and result.returncode != 0


def test_kbs_resource_id_goes_through_the_data_hub(cdh, encrypted_model, tmp_path):
    """``kbs:///REPO/TYPE/TAG`` (no host), as CoCo and KServe write it: the data hub at
    --cdh-address, or at $CDH_ADDR in KServe's form."""
    _, contents, store, key_file = encrypted_model
    cdh.routes[("GET", "/cdh/resource/default/model/demo")] = lambda body: (
        200,
        key_file.read_bytes(),
    )
    uri = ("--key-uri", "kbs:///default/model/demo")
    with mounted(store, tmp_path / "mnt", *uri, "--cdh-address", cdh.address) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == contents["model.safetensors"]
    env = {**os.environ, "CDH_ADDR": f"http://{cdh.address}"}
    with mounted(store, tmp_path / "mnt", *uri, env=env) as mnt:
        assert (mnt / "config.json").read_bytes() == contents["config.json"]
    assert cdh.requests == [("GET", "/cdh/resource/default/model/demo")] * 2
    result = try_mount(store, tmp_path / "mnt", *uri, "--cdh-address", "192.0.2.1:8006")
    assert_refused(result, tmp_path / "mnt", "not loopback")
    result = try_mount(store, tmp_path / "mnt", "--key-uri", "kbs:///default/model")
    assert_refused(result, tmp_path / "mnt", "kbs:///REPO/TYPE/TAG")


def test_jwe_folder_with_its_key_from_the_data_hub(cdh, tmp_path):
    """A KServe confidential model folder and its broker resource as they are: a JWK."""
    key = jwk.JWK.generate(kty="oct", size=256)
    folder = tmp_path / "model"
    folder.mkdir()
    data = os.urandom(100_000)
    (folder / "model.safetensors.jwe").write_bytes(make_jwe(data, key))
    cdh.routes[("GET", "/cdh/resource/default/model/jwk")] = lambda body: (
        200,
        key.export().encode(),
    )
    uri = ("--key-uri", "kbs:///default/model/jwk", "--cdh-address", cdh.address)
    with mounted(folder, tmp_path / "mnt", *uri) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == data
    # Imported with the same resource, which the store records: the owner's broker
    # resource and policy stay, and a mount pinned by key id alone finds them.
    store = tmp_path / "store"
    run_cli("import", folder, store, *uri)
    key_id_line = next(
        line for line in run_cli("inspect", store).stdout.splitlines() if "key id" in line
    )
    pinned = ("--key-id", key_id_line.split()[-1], "--cdh-address", cdh.address)
    with mounted(store, tmp_path / "mnt", *pinned) as mnt:
        assert (mnt / "model.safetensors").read_bytes() == data


@SAMPLE_ATTESTER
def test_jwe_folder_with_its_key_from_a_kbs(dev_kbs_tls, tmp_path):
    """The KServe key resource (a JWK) released by a broker after attestation (over verified
    TLS: a JWE folder has no key id to pin, so a plain-HTTP broker is refused for it)."""
    dev_kbs = dev_kbs_tls
    key = jwk.JWK.generate(kty="oct", size=256)
    folder = tmp_path / "model"
    folder.mkdir()
    data = os.urandom(50_000)
    (folder / "config.json.jwe").write_bytes(make_jwe(data, key, alg="dir"))
    resource = dev_kbs.repository / "default/kserve/model-key"
    resource.parent.mkdir(parents=True)
    resource.write_text(key.export())
    uri = ("--key-uri", dev_kbs.uri("default/kserve/model-key"), *dev_kbs.client_args())
    with mounted(folder, tmp_path / "mnt", *uri) as mnt:
        assert (mnt / "config.json").read_bytes() == data


def test_fake_data_hub_answers_only_loopback_get(cdh):
    """The stand-in is as strict as guest-components' api-server-rest (router.rs)."""
    import requests

    cdh.routes[("GET", "/cdh/resource/a/b/c")] = lambda body: (200, b"k")
    port = cdh.address.rpartition(":")[2]
    assert requests.get(f"http://127.0.0.1:{port}/cdh/resource/a/b/c", timeout=5).content == b"k"
    assert (
        requests.post(f"http://127.0.0.1:{port}/cdh/resource/a/b/c", timeout=5).status_code == 405
    )
    others = [
        a
        for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
        if ":" not in a
    ]
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address")
    answer = requests.get(f"http://{others[0]}:{port}/cdh/resource/a/b/c", timeout=5)
    assert (answer.status_code, answer.content) == (403, b"Forbidden")


def test_key_file_uri_with_a_tee_attester_warns(encrypted_model):
    _, _, store, key_file = encrypted_model
    result = run_cli("inspect", store, "--key-uri", f"file://{key_file}", "--attester", "tdx")
    assert "event=key_file_in_tee" in result.stderr and "development only" in result.stderr


def test_register_needs_a_kbs_uri_and_an_admin_key_when_configured(
    tmp_path, key_file, sample_model
):
    admin, admin_public = ed25519_pair(tmp_path, "admin")
    kbs = start_dev_kbs(tmp_path / "kbs", "--admin-public-key", str(admin_public))
    try:
        result = run_cli(
            "key",
            "register",
            kbs.uri(),
            "--key-file",
            key_file,
            "--insecure-kbs-http",
            check=False,
        )
        # Trustee answers a refused admin token on a plugin path as AdminAuthInitialization
        assert result.returncode != 0 and "AdminAuthInitialization" in result.stderr
        assert "refused the admin request" in result.stderr
        run_cli(
            "key", "register", kbs.uri(), "--key-file", key_file, "--insecure-kbs-http",
            "--admin-key", admin,
        )  # fmt: skip
        assert (kbs.repository / "default/model/demo").read_bytes() == key_file.read_bytes()
        result = run_cli("key", "register", "cdh:///a/b/c", "--key-file", key_file, check=False)
        assert "needs a kbs://" in result.stderr
    finally:
        kbs.server.stop()


# --- dev-kbs cannot become a production key dispenser by one flag --------------------------


def test_dev_kbs_refuses_a_non_loopback_address_without_the_loud_option(tmp_path):
    _, admin_public = ed25519_pair(tmp_path, "admin")
    (tmp_path / "repo").mkdir()
    result = run_cli(
        "dev-kbs", "--repository", tmp_path / "repo", "--listen", "0.0.0.0:0",
        "--admin-public-key", admin_public, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "refusing to listen on 0.0.0.0" in result.stderr
    assert "--insecure-dev-listen-anywhere" in result.stderr


def test_dev_kbs_says_it_is_for_development_on_its_stderr(tmp_path):
    """A plain warning line on the terminal, not only a log event (a log can go elsewhere)."""
    kbs = start_dev_kbs(tmp_path / "kbs")
    kbs.server.stop()
    lines = kbs.server.log.read_text().splitlines()
    assert any(
        line.startswith("WARNING: cmlfs dev-kbs is for DEVELOPMENT AND TESTS ONLY")
        for line in lines
    ), lines


def test_dev_kbs_anywhere_and_admin_tokens_with_issuer_and_audience(tmp_path, key_file):
    """--insecure-dev-listen-anywhere serves every address, says so, and still checks admins
    the way a Trustee identity provider entry with issuer and audience does."""
    admin, admin_public = ed25519_pair(tmp_path, "admin")
    kbs = start_dev_kbs(
        tmp_path / "kbs", "--insecure-dev-listen-anywhere", "--admin-public-key", admin_public,
        "--admin-issuer", "idp", "--admin-audience", "kbs", host="0.0.0.0",
    )  # fmt: skip
    try:
        register = ["key", "register", kbs.uri(), "--key-file", key_file, "--insecure-kbs-http"]
        result = run_cli(*register, "--admin-key", admin, check=False)
        assert result.returncode == 1 and "Cannot verify token" in result.stderr
        assert "--admin-issuer" in result.stderr and result.stderr.count("\n") == 1
        run_cli(*register, "--admin-key", admin, "--admin-issuer", "idp", "--admin-audience", "kbs")
        assert (kbs.repository / "default/model/demo").read_bytes() == key_file.read_bytes()
        result = run_cli(*register, "--admin-issuer", "idp", check=False)
        assert result.returncode == 1 and "go with --admin-key" in result.stderr
    finally:
        kbs.server.stop()
    assert "WARNING: serving 0.0.0.0 to other machines" in kbs.server.log.read_text()
