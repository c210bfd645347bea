"""dev-kbs verifier for Azure vTPM evidence (``az-snp-vtpm``, ``az-tdx-vtpm``), version 2.

The checks of Trustee's ``deps/verifier/src/az_snp_vtpm/mod.rs`` and
``az_tdx_vtpm/mod.rs``, in their order:

1. the TPM quote is signed (RSASSA-SHA256) by the AK in the HCL report's variable data;
2. the quote's extraData equals the runtime-data digest;
3. SHA-256 over the listed PCR values equals the quote's PCR digest (dev-kbs
   also requires the quote to select exactly those SHA-256 PCRs, 0 to n-1);
4. the hardware report binds the variable data: SNP report_data[0:32], or the
   TD quote's report_data[0:32], equals SHA-256(variable data);
5. the variable data's ``user-data`` begins with the digest;
6. the hardware report is genuine: the SNP report against ``--amd-chain``
   (``amd.py``), the TD quote against ``--intel-root`` (``intel.py``).

Stricter than Trustee where it costs nothing: only version 2 (Trustee still
reads versions 0 and 1, and skips check 5 for them), exactly the documented
members. Init-data (PCR8) is not supported by dev-kbs (refused at /attest).
"""

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from cmlfs.devkbs import amd, intel
from cmlfs.devkbs.verify import VerifyError
from cmlfs.keys.attesters.hcl import (
    EVIDENCE_VERSION,
    ak_public_key,
    b64url_any,
    parse_hcl_report,
    user_data,
)

TEES = {"az-snp-vtpm": ("snp", "vcek"), "az-tdx-vtpm": ("tdx", "td_quote")}
_SNP_REPORT_DATA = 0x50
_TPM_GENERATED = 0xFF544347
_TPM_ST_ATTEST_QUOTE = 0x8018
_TPM_ALG_SHA256 = 0x000B
MAX_PCRS = 24


@dataclass(frozen=True)
class TrustRoots:
    """The vendor roots dev-kbs checks hardware reports against (set by its options)."""

    amd_chain: amd.AmdChain | None = None
    intel_root: x509.Certificate | None = None

    @classmethod
    def load(cls, amd_chain: Path | None, intel_root: Path | None) -> "TrustRoots":
        """ValueError or OSError for a file that is not what its option expects."""
        return cls(
            amd.load_amd_chain(amd_chain) if amd_chain else None,
            intel.load_intel_root(intel_root) if intel_root else None,
        )


def verify_vtpm(tee: str, evidence: object, expected: bytes, roots: TrustRoots) -> dict:
    """Claims of valid ``tee`` evidence over ``expected``; VerifyError naming the failed check."""
    kind, hardware_field = TEES[tee]
    doc = _evidence(evidence, hardware_field)
    message, signature, pcrs = _tpm_quote(doc["tpm_quote"])
    report = parse_hcl_report(b64url_any(doc["hcl_report"], "hcl_report", VerifyError), VerifyError)
    if report.report_type != kind:
        raise VerifyError(f"HCL report is of type {report.report_type}, not {kind}")
    hardware = b64url_any(doc[hardware_field], hardware_field, VerifyError)
    try:
        ak_public_key(report, VerifyError).verify(
            signature, message, padding.PKCS1v15(), hashes.SHA256()
        )
    except InvalidSignature:
        raise VerifyError("vTPM quote is not signed by the AK in the HCL report") from None
    attest = _attest(message)
    if not hmac.compare_digest(bytes(attest.extraData), expected):
        raise VerifyError("TPM quote nonce doesn't match expected report_data")
    _check_pcrs(attest, pcrs)
    if kind == "snp":
        bound = report.hw_report[_SNP_REPORT_DATA : _SNP_REPORT_DATA + 32]
    else:
        td_report_data = intel.verify_td_quote(hardware, roots.intel_root)
        bound = td_report_data[:32]
    if not hmac.compare_digest(bound, report.var_data_sha256()):
        raise VerifyError("HCL variable data digest doesn't match the hardware report data")
    if not user_data(report, VerifyError).startswith(expected):
        raise VerifyError("User-data in HCL variable data doesn't match report_data")
    claims = amd.verify_snp(report.hw_report, hardware, roots.amd_chain) if kind == "snp" else {}
    return {
        **claims,
        "tpm": {f"pcr{i:02}": pcr.hex() for i, pcr in enumerate(pcrs)},
        "init_data": pcrs[8].hex() if len(pcrs) > 8 else "",
        "report_data": bytes(attest.extraData).hex(),
    }


def _evidence(evidence: object, hardware_field: str) -> dict:
    members = {"version", "tpm_quote", "hcl_report", hardware_field}
    if not isinstance(evidence, dict) or set(evidence) != members:
        raise VerifyError(f"evidence must have exactly {sorted(members)}")
    if evidence["version"] != EVIDENCE_VERSION or isinstance(evidence["version"], bool):
        raise VerifyError(f"evidence version {evidence['version']!r} is not 2")
    return evidence


def _tpm_quote(quote: object) -> tuple[bytes, bytes, list[bytes]]:
    if not isinstance(quote, dict) or set(quote) != {"signature", "message", "pcrs"}:
        raise VerifyError("tpm_quote must have exactly signature, message, pcrs")
    pcrs = quote["pcrs"]
    if not isinstance(pcrs, list) or not 0 < len(pcrs) <= MAX_PCRS:
        raise VerifyError(f"tpm_quote pcrs must be a list of 1 to {MAX_PCRS} values")
    values = [_hex(p, "a PCR value") for p in pcrs]
    if any(len(v) != 32 for v in values):
        raise VerifyError("a PCR value is not 32 bytes (SHA-256)")
    return _hex(quote["message"], "message"), _hex(quote["signature"], "signature"), values


def _hex(text: object, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > 8192:
        raise VerifyError(f"tpm_quote {what} is not a hex string")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise VerifyError(f"tpm_quote {what} is not hex") from None


def _attest(message: bytes):
    try:
        from tpm2_pytss import TPMS_ATTEST
    except ImportError:
        raise VerifyError("dev-kbs needs tpm2-pytss to read TPM quotes") from None
    try:
        attest, used = TPMS_ATTEST.unmarshal(message)
    except Exception:
        raise VerifyError("TPM quote message is not a TPMS_ATTEST") from None
    if used != len(message) or attest.magic != _TPM_GENERATED:
        raise VerifyError("TPM quote message is not a TPM-generated TPMS_ATTEST")
    if attest.type != _TPM_ST_ATTEST_QUOTE:
        raise VerifyError("TPM attestation is not a quote")
    return attest


def _check_pcrs(attest, pcrs: list[bytes]) -> None:
    selection = attest.attested.quote.pcrSelect
    wanted = sum(1 << i for i in range(len(pcrs)))
    if selection.count != 1 or selection.pcrSelections[0].hash != _TPM_ALG_SHA256:
        raise VerifyError("TPM quote does not select one SHA-256 PCR bank")
    item = selection.pcrSelections[0]
    bits = int.from_bytes(bytes(item.pcrSelect)[: item.sizeofSelect], "little")
    if bits != wanted:
        raise VerifyError("TPM quote selects other PCRs than the evidence lists")
    digest = hashlib.sha256(b"".join(pcrs)).digest()
    if not hmac.compare_digest(digest, bytes(attest.attested.quote.pcrDigest)):
        raise VerifyError("Digest of PCRs does not match digest in Quote")
