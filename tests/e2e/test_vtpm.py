"""Azure vTPM attestation against a software TPM: attesters, dev-kbs's checks, real mounts.

swtpm plays the vTPM (AK provisioned at 0x81000003), ``tests/azure_cvm/paravisor.py``
plays the paravisor as a ``cmd:`` TCTI in front of it, and a loopback server plays
the metadata service; the AMD and Intel roots are test chains given to dev-kbs by
option. Every TPM command is real (TPM2_NV_DefineSpace/Write/Read, TPM2_Quote,
TPM2_PCR_Read through tpm2-tss); every refusal is one line naming the failed step.
"""

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tpm2_pytss import ESYS_TR

from cmlfs.devkbs.verify import VerifyError
from cmlfs.devkbs.vtpm import TrustRoots, verify_vtpm
from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters import select_attester, tpm
from cmlfs.keys.attesters.hcl import b64url_any, b64url_padded, parse_hcl_report
from cmlfs.keys.base import KeySettings
from tests.azure_cvm import reports
from tests.azure_cvm.chains import load_key, make_chains
from tests.azure_cvm.vtpm import MetadataService, provision, start_swtpm
from tests.conftest import mounted, tree_digests
from tests.e2e.kbs_servers import start_dev_kbs
from tests.e2e.test_key_release import assert_refused, pin, publish, try_mount

DIGEST = hashlib.sha384(b"runtime data").digest()
KINDS = ("snp", "tdx")


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    return make_chains(tmp_path_factory.mktemp("chains"))


@pytest.fixture(scope="module")
def roots(chains) -> TrustRoots:
    return TrustRoots.load(chains.amd_chain, chains.intel_root)


@pytest.fixture(scope="module")
def metadata(chains):
    service = MetadataService(chains).start()
    yield service
    service.stop()


@pytest.fixture(scope="module", params=KINDS)
def cvm(request, tmp_path_factory, chains, metadata):
    """(kind, swtpm, settings of the matching attester) for an SNP or a TDX CVM."""
    kind = request.param
    swtpm = start_swtpm(tmp_path_factory.mktemp(f"swtpm-{kind}"))
    provision(swtpm, kind, chains.folder)
    settings = KeySettings(
        attester=f"az-{kind}-vtpm",
        tpm_tcti=swtpm.paravisor_tcti(kind, chains.folder),
        metadata_url=metadata.url,
        vtpm_report_wait=0,
        tsm_report_root=Path("/nonexistent/tsm"),
    )
    yield kind, swtpm, settings
    swtpm.stop()


@pytest.fixture(scope="module")
def evidence(cvm) -> dict:
    settings = cvm[2]
    return json.loads(json.dumps(select_attester(settings).evidence(DIGEST)))


def with_settings(settings: KeySettings, **changes) -> KeySettings:
    return KeySettings(**{**settings.__dict__, **changes})


# --- the evidence, field by field -----------------------------------------------------------

# From trustee deps/verifier/src/az_snp_vtpm/compat.rs (EvidenceV2, TpmQuote) and
# deps/verifier/src/az_tdx_vtpm/compat.rs (EvidenceV2): serde field names and encodings.
EVIDENCE_V2_FIELDS = {
    "snp": {"version": int, "tpm_quote": dict, "hcl_report": "b64url", "vcek": "b64url"},
    "tdx": {"version": int, "tpm_quote": dict, "hcl_report": "b64url", "td_quote": "b64url"},
}
TPM_QUOTE_FIELDS = {"signature": "hex", "message": "hex", "pcrs": "hex-list"}


# Real az-snp-vtpm evidence from Trustee's tests (tests/vectors/azure/README.md).
REAL_SNP_EVIDENCE = Path(__file__).parent.parent / "vectors" / "azure" / "snp-evidence-v2.json"


def test_evidence_matches_the_reference_structs_field_by_field(cvm, evidence):
    kind = cvm[0]
    assert list(evidence) == list(EVIDENCE_V2_FIELDS[kind])  # serde order
    if kind == "snp":  # the same members, order and encodings as evidence from Azure
        real = json.loads(REAL_SNP_EVIDENCE.read_text())
        assert list(evidence) == list(real)
        assert list(evidence["tpm_quote"]) == list(real["tpm_quote"])
    assert evidence["version"] == 2
    for name, shape in EVIDENCE_V2_FIELDS[kind].items():
        if shape == "b64url":  # padded URL-safe, as serde_with Base64<UrlSafe> writes
            value = evidence[name]
            assert "+" not in value and "/" not in value and len(value) % 4 == 0
            assert b64url_padded(b64url_any(value, name, ValueError)) == value
    quote = evidence["tpm_quote"]
    assert list(quote) == list(TPM_QUOTE_FIELDS)
    assert len(bytes.fromhex(quote["signature"])) == 256  # raw RSASSA, not TPMT_SIGNATURE
    assert quote["signature"] == quote["signature"].lower()
    assert bytes.fromhex(quote["message"])[:6] == bytes.fromhex("ff5443478018")  # quote
    assert len(quote["pcrs"]) == 24 and all(len(bytes.fromhex(p)) == 32 for p in quote["pcrs"])
    report = parse_hcl_report(b64url_any(evidence["hcl_report"], "r", ValueError), ValueError)
    assert report.report_type == kind and report.raw[:4] == b"HCLA"
    assert json.loads(report.var_data)["user-data"] == (DIGEST + bytes(16)).hex().upper()


# --- dev-kbs's checks: accepted as made, each tampering refused -------------------------------


def test_dev_kbs_verifier_accepts_the_attesters_evidence(cvm, evidence, roots):
    kind, _, _ = cvm
    claims = verify_vtpm(f"az-{kind}-vtpm", evidence, DIGEST, roots)
    assert claims["report_data"] == DIGEST.hex()
    assert set(claims["tpm"]) == {f"pcr{i:02}" for i in range(24)}


def refused(kind: str, evidence: dict, roots: TrustRoots, needle: str, digest=DIGEST) -> None:
    with pytest.raises(VerifyError, match=needle):
        verify_vtpm(f"az-{kind}-vtpm", evidence, digest, roots)


def test_quote_with_other_extra_data_is_refused(cvm, evidence, roots):
    kind, swtpm, _ = cvm
    other = copy.deepcopy(evidence)
    quote = tpm.quote(swtpm.tcti, hashlib.sha384(b"other").digest())  # signed by the same AK
    other["tpm_quote"] = {
        "signature": quote.signature.hex(),
        "message": quote.message.hex(),
        "pcrs": [p.hex() for p in quote.pcrs],
    }
    refused(kind, other, roots, "nonce doesn't match")
    refused(kind, evidence, roots, "nonce doesn't match", hashlib.sha384(b"x").digest())


def test_tampered_pcr_is_refused(cvm, evidence, roots):
    tampered = copy.deepcopy(evidence)
    tampered["tpm_quote"]["pcrs"][7] = "ab" * 32  # swtpm PCRs are zero or all-FF
    refused(cvm[0], tampered, roots, "Digest of PCRs does not match")
    fewer = copy.deepcopy(evidence)
    fewer["tpm_quote"]["pcrs"].pop()
    refused(cvm[0], fewer, roots, "selects other PCRs")


def _with_report(evidence: dict, raw: bytes) -> dict:
    return {**evidence, "hcl_report": b64url_padded(raw)}


def test_variable_data_not_bound_by_the_hardware_report_is_refused(cvm, evidence, roots):
    raw = b64url_any(evidence["hcl_report"], "r", ValueError)
    tampered = raw.replace(b'"tpm-enabled":true', b'"tpm-enabled":1234')
    assert tampered != raw
    refused(cvm[0], _with_report(evidence, tampered), roots, "variable data digest")


def test_quote_by_a_key_that_is_not_the_reports_ak_is_refused(cvm, evidence, roots):
    other_ak = rsa.generate_private_key(65537, 2048)
    message = bytes.fromhex(evidence["tpm_quote"]["message"])
    forged = copy.deepcopy(evidence)
    signature = other_ak.sign(message, padding.PKCS1v15(), hashes.SHA256())
    forged["tpm_quote"]["signature"] = signature.hex()
    refused(cvm[0], forged, roots, "not signed by the AK")


def test_report_of_another_request_fails_the_user_data_check(cvm, roots):
    kind, _, settings = cvm
    first = select_attester(settings).evidence(hashlib.sha384(b"first").digest())
    second = select_attester(settings).evidence(DIGEST)
    # the first request's report (and TD quote): genuine and self-bound, but stale
    mixed = {**first, "tpm_quote": second["tpm_quote"]}
    refused(kind, json.loads(json.dumps(mixed)), roots, "User-data")


def test_hardware_chain_to_another_root_is_refused(cvm, evidence, tmp_path):
    other = make_chains(tmp_path / "other")
    kind = cvm[0]
    needle = "not signed by the ASK" if kind == "snp" else "does not end in the configured"
    refused(kind, evidence, TrustRoots.load(other.amd_chain, other.intel_root), needle)
    refused(kind, evidence, TrustRoots(), "no (AMD chain|Intel root) configured")


def test_snp_report_signature_and_reserved_bytes_are_checked(roots, evidence, cvm, chains):
    if cvm[0] != "snp":
        pytest.skip("SNP only")
    raw = bytearray(b64url_any(evidence["hcl_report"], "r", ValueError))
    raw[0x20 + 0x90] ^= 1  # measurement: report_data (the binding) unchanged
    refused("snp", _with_report(evidence, bytes(raw)), roots, "SNP report signature")
    raw[0x20 + 0x90] ^= 1
    hardware = bytearray(raw[0x20 : 0x20 + 1184])
    hardware[0x200] = 1  # reserved in a version-3 report, then signed by the VCEK
    reports.sign_snp(hardware, load_key(chains.vcek_key))
    raw[0x20 : 0x20 + 1184] = hardware
    refused("snp", _with_report(evidence, bytes(raw)), roots, "non-zero reserved bytes")


# --- the attesters refuse bad inputs, one line naming the step -------------------------------


def attest_error(settings: KeySettings) -> str:
    with pytest.raises(KeySourceError) as info:
        select_attester(settings).evidence(os.urandom(48))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_auto_picks_the_vtpm_by_its_report_type(cvm):
    kind, _, settings = cvm
    assert select_attester(with_settings(settings, attester="auto")).tee == f"az-{kind}-vtpm"


def test_auto_without_any_tee_lists_what_it_looked_for(tmp_path):
    settings = KeySettings(tsm_report_root=tmp_path / "tsm", tpm_tcti="device:/dev/no-such-tpm")
    with pytest.raises(KeySourceError) as info:
        select_attester(settings)
    message = str(info.value)
    for needle in ("configfs-tsm", str(tmp_path / "tsm"), "Azure vTPM", "/dev/no-such-tpm"):
        assert needle in message
    assert "\n" not in message and "sample proves nothing" in message


def test_attester_refusals_name_the_step(cvm, metadata, tmp_path):
    kind, swtpm, settings = cvm
    other = "tdx" if kind == "snp" else "snp"
    cases = {
        "/dev/no-such-tpm does not exist (not a VM with a vTPM?)": {
            "tpm_tcti": "device:/dev/no-such-tpm"
        },
        f"is a {kind.upper()} report, not {other.upper()}": {"attester": f"az-{other}-vtpm"},
        # straight to swtpm: nobody renews the boot report
        "stale report": {"tpm_tcti": swtpm.tcti},
        "metadata service: cannot reach": {"metadata_url": "http://127.0.0.1:9"},
    }
    for needle, changes in cases.items():
        assert needle in attest_error(with_settings(settings, **changes))
    for mode, needle in (("garbage", "is not JSON"), ("error", "answered HTTP 500")):
        metadata.mode = mode
        try:
            assert needle in attest_error(settings)
        finally:
            metadata.mode = "ok"


def test_vtpm_without_hcl_report_or_ak_is_refused(tmp_path, chains):
    bare = start_swtpm(tmp_path / "bare")
    try:
        settings = KeySettings(attester="az-snp-vtpm", tpm_tcti=bare.tcti, vtpm_report_wait=0)
        assert "no HCL report: NV index 0x01400001 is not defined" in attest_error(settings)
        with pytest.raises(KeySourceError, match="no attestation key at persistent handle 0x81"):
            tpm.quote(bare.tcti, DIGEST)
        provision(bare, "snp", chains.folder)
        parav = with_settings(settings, tpm_tcti=bare.paravisor_tcti("snp", chains.folder))
        with_ak = attest_error(with_settings(parav, metadata_url="http://127.0.0.1:9"))
        assert "metadata service" in with_ak  # got past the TPM steps
    finally:
        bare.stop()


def test_the_paravisor_stand_in_ignores_requests_the_paravisor_would(cvm):
    _, swtpm, settings = cvm
    log = swtpm.folder / "paravisor.log"
    before = tpm.read_hcl_report(swtpm.tcti)
    with tpm._esapi(settings.tpm_tcti, "test") as ctx:
        tpm._write_report_request(ctx, os.urandom(65))  # longer than user-data holds
    assert tpm.read_hcl_report(swtpm.tcti) == before
    assert log.read_text().splitlines()[-1].endswith("index is 65 bytes (1 to 64)")
    report = tpm.request_hcl_report(settings.tpm_tcti, os.urandom(48), 0)
    assert report != before
    with tpm._esapi(settings.tpm_tcti, "test") as ctx:  # a write of part of the index
        index = ctx.tr_from_tpmpublic(0x01400002)
        ctx.nv_write(index, os.urandom(16), 0, auth_handle=ESYS_TR.OWNER)
    assert tpm.read_hcl_report(swtpm.tcti) == report
    assert log.read_text().splitlines()[-1].endswith("does not cover the whole index")


# --- end to end: cmlfs mount -> dev-kbs verifies -> key released -> files match ---------------


@pytest.mark.fuse
def test_mount_with_the_vtpm_attester_and_policy_by_tee(
    cvm, chains, metadata, sample_model, key_file, tmp_path
):
    kind, _, settings = cvm
    roots = ["--amd-chain", chains.amd_chain, "--intel-root", chains.intel_root]
    kbs = start_dev_kbs(tmp_path / "kbs", *map(str, roots))
    try:
        src, _ = sample_model
        store = publish(kbs, src, tmp_path / "store", key_file)
        attest = [
            "--insecure-kbs-http", "--attester", f"az-{kind}-vtpm", "--tpm-tcti", settings.tpm_tcti,
            "--metadata-url", metadata.url, "--vtpm-report-wait", "0", *pin(key_file),
        ]  # fmt: skip
        allow_this = {"effect": "allow", "tee": f"az-{kind}-vtpm", "resource": "default/*"}
        kbs.set_policy({"default": "deny", "rules": [allow_this]}, tmp_path)
        with mounted(store, tmp_path / "mnt", *attest) as mnt:
            assert tree_digests(mnt) == tree_digests(src)
        other = "az-tdx-vtpm" if kind == "snp" else "az-snp-vtpm"
        kbs.set_policy({"default": "deny", "rules": [{**allow_this, "tee": other}]}, tmp_path)
        # auto finds the vTPM (no configfs-tsm) and attests: the broker's policy refuses
        auto = [*attest, "--attester", "auto", "--tsm-root", "/nonexistent/tsm"]
        assert_refused(try_mount(store, tmp_path / "mnt", *auto), tmp_path / "mnt", "PolicyDeny")
        no_tpm = [*attest, "--tpm-tcti", "device:/dev/no-such-tpm"]
        assert_refused(
            try_mount(store, tmp_path / "mnt", *no_tpm), tmp_path / "mnt", "no TPM at device:"
        )
        metadata_down = [*attest, "--metadata-url", "http://127.0.0.1:9"]
        assert_refused(
            try_mount(store, tmp_path / "mnt", *metadata_down),
            tmp_path / "mnt",
            "from the metadata service: cannot reach http://127.0.0.1:9",
        )
    finally:
        kbs.server.stop()
    unverified = start_dev_kbs(tmp_path / "kbs-no-roots")
    try:
        store = publish(unverified, src, tmp_path / "store2", key_file)
        assert_refused(
            try_mount(store, tmp_path / "mnt", *attest),
            tmp_path / "mnt",
            "AttestationError",
            "AMD chain" if kind == "snp" else "Intel root",
        )
    finally:
        unverified.server.stop()
