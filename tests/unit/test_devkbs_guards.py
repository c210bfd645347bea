"""dev-kbs cannot turn into a production key dispenser by accident.

It listens on loopback unless told, loudly, otherwise; its default policy is
Trustee's (trustee kbs/sample_policies/default.rego: no release to ``sample``
evidence) except for requests from loopback, where the development loop runs.
"""

import socket
from collections.abc import Iterator

import pytest
import requests

from cmlfs.devkbs import DevKbs, DevKbsConfig, DevKbsError
from cmlfs.devkbs.policy import DEFAULT_POLICY, PolicyError, parse_policy
from cmlfs.devkbs.server import KbsError
from cmlfs.keys.attesters import SampleAttester
from cmlfs.keys.base import KeySettings
from cmlfs.keys.kbs import BrokerError, KbsClient, TeeKeyPair
from cmlfs.keys.rcar import runtime_data_digest
from tests.kbs_helpers import ed25519_pair

SETTINGS = KeySettings(attester="sample", insecure_kbs_http=True)
PATH = "default/model/demo"
KEY = bytes(range(50, 82))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "kbs.example"])
def test_non_loopback_listening_needs_the_loud_option(tmp_path, host):
    _, public = ed25519_pair(tmp_path, "admin")
    config = DevKbsConfig(tmp_path, host=host, port=0, admin_public_key=public)
    with pytest.raises(DevKbsError, match="pass --insecure-dev-listen-anywhere") as refused:
        DevKbs(config)
    assert "\n" not in str(refused.value) and host in str(refused.value)


def _non_loopback_ipv4() -> str | None:
    """The source address this machine would use towards other hosts, if it has one.

    Connecting a UDP socket sends nothing; it only picks the route and its address.
    """
    for target in ("10.255.255.255", "192.0.2.255", "172.31.255.255"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((target, 9))
            except OSError:
                continue
            address = probe.getsockname()[0]
            if not address.startswith("127.") and address != "0.0.0.0":
                return address
    return None


@pytest.fixture
def exposed_kbs(tmp_path) -> Iterator[DevKbs]:
    """dev-kbs on every address, as ``--insecure-dev-listen-anywhere`` allows, default policy."""
    _, public = ed25519_pair(tmp_path, "admin")
    repository = tmp_path / "repository"
    repository.mkdir()
    config = DevKbsConfig(
        repository, host="0.0.0.0", port=0, admin_public_key=public, listen_anywhere=True
    )
    kbs = DevKbs(config).start()
    kbs.repository.write(PATH, KEY)
    yield kbs
    kbs.stop()


def _release(url: str) -> bytes:
    with KbsClient(url, SampleAttester(), SETTINGS, sleep=lambda s: None) as client:
        return client.get_resource(PATH)


def test_default_policy_denies_sample_evidence_from_other_machines(exposed_kbs):
    address = _non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    port = exposed_kbs.httpd.server_address[1]
    assert _release(f"http://127.0.0.1:{port}") == KEY  # the development loop still works
    with pytest.raises(BrokerError) as denied:
        _release(f"http://{address}:{port}")
    assert (denied.value.variant, denied.value.status) == ("PolicyDeny", 401)


def test_default_policy_decides_by_the_resource_requests_peer(devkbs):
    """The same check in-process, for machines without a second address."""
    devkbs.repository.write(PATH, KEY)
    session = _attested_session(devkbs)
    assert devkbs.policy is DEFAULT_POLICY
    assert devkbs.release(PATH, session, None, "127.0.0.1")["ciphertext"]
    with pytest.raises(KbsError) as denied:
        devkbs.release(PATH, session, None, "192.0.2.7")
    assert denied.value.variant == "PolicyDeny"
    # an operator's explicit policy decides instead (as loading allow_all.rego does in Trustee)
    devkbs.policy = parse_policy(b'{"default":"allow"}')
    assert devkbs.release(PATH, session, None, "192.0.2.7")["ciphertext"]


def _attested_session(kbs: DevKbs) -> str:
    http = requests.Session()
    auth = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
    nonce = http.post(f"{kbs.url}/kbs/v0/auth", json=auth).json()["nonce"]
    key = TeeKeyPair("ec").public_jwk
    evidence = SampleAttester().evidence(runtime_data_digest(nonce, key))
    attestation = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": key},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": ""},
    }
    assert http.post(f"{kbs.url}/kbs/v0/attest", json=attestation).ok
    return http.cookies["kbs-session-id"]


def test_default_policy_is_trustees_for_real_tees():
    for tee in ("tdx", "snp", "az-snp-vtpm"):
        assert DEFAULT_POLICY.allows(tee, PATH, loopback=False)
    assert not DEFAULT_POLICY.allows("sample", PATH, loopback=False)
    assert DEFAULT_POLICY.allows("sample", PATH, loopback=True)


def test_policy_rules_can_name_the_peer():
    policy = parse_policy(
        b'{"default":"deny","rules":[{"effect":"allow","tee":"*","resource":"*","peer":"loopback"}]}'
    )
    assert policy.allows("tdx", PATH, loopback=True)
    assert not policy.allows("tdx", PATH, loopback=False)
    with pytest.raises(PolicyError, match='"peer" must be'):
        parse_policy(
            b'{"default":"deny","rules":[{"effect":"allow","tee":"*","resource":"*","peer":"lan"}]}'
        )
