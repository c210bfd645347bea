"""A key is never taken on the word of an unauthenticated channel (issue 16, item 1 and 7).

The attack: whoever can make a store and answer for the broker on a plain-HTTP path hands
the daemon a key of their own for a model of their own, and the model server reads the
attacker's plaintext. Each test runs the real CLI and, where a mount could happen, a real
FUSE mount; a refusal is one line, nothing mounted, and the fake broker never asked.
"""

import os
from pathlib import Path

import pytest

from cmlfs.format.keys import key_id
from tests.conftest import mounted, run_cli, write_sample_model
from tests.e2e.kbs_servers import HostileKbs
from tests.e2e.test_key_release import assert_refused, pin, publish, try_mount
from tests.system_ca import in_system_store, without_ca_variables

pytestmark = pytest.mark.fuse

PLAIN_BROKER = ("--attester", "sample", "--insecure-kbs-http")


def attacker_store(tmp_path: Path, hostile: HostileKbs) -> tuple[Path, Path, str]:
    """(store, key file, key URI): the attacker's model, sealed with the attacker's key, whose
    envelope names the attacker's broker; that broker hands the key to anyone who asks."""
    src, key, store = tmp_path / "evil-model", tmp_path / "evil.key", tmp_path / "evil-store"
    write_sample_model(src, seed=7)
    (src / "config.json").write_text('{"attacker": true}')
    run_cli("keygen", "--out", key)
    uri = hostile.answer_resource("default/model/demo", lambda h: h.jwe_to_client(key.read_bytes()))
    run_cli("encrypt", src, store, "--key-file", key, "--key-uri", uri)
    return store, key, uri


@pytest.mark.expect_log("event=sample_attester")
def test_a_fake_plain_http_broker_cannot_get_its_model_mounted(hostile_kbs, key_file, tmp_path):
    store, evil_key, uri = attacker_store(tmp_path, hostile_kbs)
    mnt = tmp_path / "mnt"
    # The operator asked for plain HTTP to the broker but pinned nothing: refused before any
    # request, the one line names --key-id.
    result = try_mount(store, mnt, "--key-uri", uri, *PLAIN_BROKER)
    assert_refused(result, mnt, "plain HTTP", "--key-id")
    assert hostile_kbs.requests == []
    # Pinned to the owner's model: the attacker's store is sealed for another key id.
    result = try_mount(store, mnt, "--key-uri", uri, *PLAIN_BROKER, *pin(key_file))
    assert_refused(result, mnt, f"not the pinned {key_id(key_file.read_bytes())}")
    assert hostile_kbs.requests == []
    # The store's own key URI under the owner's pin: the same refusal.
    result = try_mount(store, mnt, *PLAIN_BROKER, *pin(key_file))
    assert_refused(result, mnt, "sealed for key id")
    assert hostile_kbs.requests == []
    # The control: pinned to the model the store really holds, the same broker's key mounts it,
    # so the refusals above come from the pin and nothing else.
    with mounted(store, mnt, "--key-uri", uri, *PLAIN_BROKER, *pin(evil_key)) as root:
        assert (root / "config.json").read_text() == '{"attacker": true}'


def test_plain_http_to_stores_never_downgrades_the_broker(hostile_kbs, tmp_path):
    """--insecure-http is for stores and registries; a kbs:// broker is still reached over TLS."""
    store, evil_key, uri = attacker_store(tmp_path, hostile_kbs)
    mnt = tmp_path / "mnt"
    for pinned in ([], pin(evil_key)):
        args = ["--key-uri", uri, "--attester", "sample", "--insecure-http", *pinned]
        result = try_mount(store, mnt, *args)
        assert_refused(result, mnt, f"TLS failure talking to https://{hostile_kbs.address}")
        assert "--insecure-kbs-http" in result.stderr
    assert hostile_kbs.requests == []


def test_a_data_hub_off_loopback_needs_the_pin_too(encrypted_model, tmp_path):
    _, _, store, _ = encrypted_model
    result = try_mount(
        store, tmp_path / "mnt", "--key-uri", "cdh://192.0.2.1:8006/a/b/c", "--insecure-kbs-http"
    )
    assert_refused(result, tmp_path / "mnt", "data hub cdh://192.0.2.1:8006/a/b/c", "--key-id")


@pytest.mark.expect_log("event=sample_attester")
def test_the_broker_named_by_the_store_is_logged(dev_kbs, sample_model, key_file, tmp_path):
    src, _ = sample_model
    store = publish(dev_kbs, src, tmp_path / "store", key_file)
    log = tmp_path / "mount.log"
    args = [*dev_kbs.client_args(), *pin(key_file), "--log-file", log]
    with mounted(store, tmp_path / "mnt", *args):
        pass
    text = log.read_text()
    assert f'event=key_uri_from_store source="key broker {dev_kbs.uri()}"' in text


def test_the_sample_attester_warns_on_the_clis_stderr(dev_kbs, sample_model, key_file, tmp_path):
    src, _ = sample_model
    store = publish(dev_kbs, src, tmp_path / "store", key_file)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_cli("mount", store, mnt, *dev_kbs.client_args(), *pin(key_file))
    try:
        assert "cmlfs: warning: --attester sample proves nothing" in result.stderr
    finally:
        run_cli("umount", mnt)


def test_a_key_file_on_a_tee_machine_is_warned_about(encrypted_model):
    _, _, store, key_file = encrypted_model
    result = run_cli("inspect", store, "--key-file", key_file, "--attester", "tdx")
    assert "event=key_file_in_tee" in result.stderr and "development only" in result.stderr


def test_broker_commands_name_the_new_switch_for_the_old_one(key_file, tmp_path):
    result = run_cli(
        "key", "register", "kbs://127.0.0.1:1/a/b/c", "--key-file", key_file, "--insecure-http",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--insecure-http no longer reaches key brokers: give --insecure-kbs-http" in (
        result.stderr
    )


@pytest.fixture
def ca_in_the_system_store(dev_kbs_tls):
    """The dev broker's private CA installed in the system trust store for the test only."""
    with in_system_store(dev_kbs_tls.ca, dev_kbs_tls.address.replace(":", "-")):
        yield dev_kbs_tls


@pytest.mark.expect_log("event=sample_attester")
def test_a_private_ca_only_in_the_system_store_is_trusted(
    ca_in_the_system_store, sample_model, key_file, tmp_path
):
    """No --kbs-ca: the broker's certificate is checked against the system trust store
    (update-ca-certificates), not against the certifi bundle requests carries."""
    kbs = ca_in_the_system_store
    src, _ = sample_model
    store = publish(kbs, src, tmp_path / "store", key_file)
    # OpenSSL's compiled-in default, not a CA variable of this environment, finds the store
    env = without_ca_variables(dict(os.environ))
    with mounted(store, tmp_path / "mnt", "--attester", "sample", *pin(key_file), env=env) as mnt:
        assert (mnt / "config.json").read_bytes() == (src / "config.json").read_bytes()


def test_a_jwe_model_folder_never_takes_a_key_over_plain_http(hostile_kbs, tmp_path):
    """A JWE folder has no key id to pin, so no plain-HTTP key source is accepted for it."""
    folder = tmp_path / "jwe-folder"
    folder.mkdir()
    (folder / "config.json.jwe").write_text("eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0....")
    uri = hostile_kbs.answer_resource("a/b/c", lambda h: h.jwe_to_client(bytes(32)))
    result = try_mount(folder, tmp_path / "mnt", "--key-uri", uri, *PLAIN_BROKER)
    assert_refused(result, tmp_path / "mnt", "no key id to pin")
    assert hostile_kbs.requests == []
