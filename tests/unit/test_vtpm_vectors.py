"""dev-kbs's Azure vTPM checks on evidence from real Azure CVMs (tests/vectors/azure/README.md).

The SNP evidence is verified in full, against AMD's real Milan ASK/ARK: AK signature,
nonce, PCR digest, variable-data binding, user-data, VCEK chain, TCB and chip id, report
signature, VMPL. The real TD quote is verified against the root its own PCK chain ends in
(Intel's SGX Root CA; taken from the quote, so this checks the parsing and every signature,
not trust), and its report_data binds the real HCL report's variable data.
"""

import json
from pathlib import Path

import pytest
from cryptography import x509

from cmlfs.devkbs.amd import load_amd_chain
from cmlfs.devkbs.intel import verify_td_quote
from cmlfs.devkbs.verify import VerifyError
from cmlfs.devkbs.vtpm import TrustRoots, verify_vtpm
from cmlfs.keys.attesters.hcl import parse_hcl_report

VECTORS = Path(__file__).parent.parent / "vectors" / "azure"
# deps/verifier/src/az_snp_vtpm/mod.rs: EVIDENCE_V2_REPORT_DATA and EVIDENCE_V2_PCR0
REPORT_DATA = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9a"
    "a398f647caa2338748cd0fd9f5f819ef"
)
PCR0 = "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"


def snp_evidence() -> dict:
    return json.loads((VECTORS / "snp-evidence-v2.json").read_text())


def milan() -> TrustRoots:
    return TrustRoots(amd_chain=load_amd_chain(VECTORS / "amd-milan-ask-ark.pem"))


def test_real_snp_evidence_verifies_against_amds_milan_chain():
    claims = verify_vtpm("az-snp-vtpm", snp_evidence(), REPORT_DATA, milan())
    assert claims["report_data"] == REPORT_DATA.hex()
    assert claims["tpm"]["pcr00"] == PCR0
    assert claims["reported_tcb"]["snp"] == 24


def test_real_snp_evidence_is_refused_for_another_digest_or_another_chain(tmp_path):
    with pytest.raises(VerifyError, match="nonce doesn't match"):
        verify_vtpm("az-snp-vtpm", snp_evidence(), bytes(48), milan())
    with pytest.raises(VerifyError, match="no AMD chain configured"):
        verify_vtpm("az-snp-vtpm", snp_evidence(), REPORT_DATA, TrustRoots())
    with pytest.raises(VerifyError, match="HCL report is of type snp, not tdx"):
        evidence = {**snp_evidence(), "td_quote": snp_evidence()["vcek"]}
        del evidence["vcek"]
        verify_vtpm("az-tdx-vtpm", evidence, REPORT_DATA, milan())


def test_real_td_quote_verifies_and_binds_the_real_hcl_report():
    quote = (VECTORS / "tdx-td-quote.bin").read_bytes()
    pem = quote[quote.index(b"-----BEGIN CERTIFICATE-----") :].rstrip(b"\0")
    root = x509.load_pem_x509_certificates(pem)[-1]
    assert root.subject.rfc4514_string().endswith("CN=Intel SGX Root CA")
    report = parse_hcl_report((VECTORS / "tdx-hcl-report.bin").read_bytes(), ValueError)
    assert verify_td_quote(quote, root)[:32] == report.var_data_sha256()
    body_byte = bytearray(quote)
    body_byte[48 + 100] ^= 1
    with pytest.raises(VerifyError, match="not signed by its attestation key"):
        verify_td_quote(bytes(body_byte), root)
    padded_with_junk = quote + b"\x01"
    with pytest.raises(VerifyError, match="does not end the quote"):
        verify_td_quote(padded_with_junk, root)
