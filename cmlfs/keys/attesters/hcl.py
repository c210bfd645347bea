"""Azure HCL reports and version-2 vTPM evidence: layouts and strict parsing, no I/O.

On Azure confidential VMs a paravisor (the HCL) owns the hardware report. A
guest asks for one by writing its report data to the vTPM's NV index
``0x01400002``; the paravisor then puts an *HCL report* at ``0x01400001``:

    0x000  header, 32 bytes ("HCLA", version, report_size, request_type, status, reserved)
    0x020  hardware report, 1184 bytes (SNP attestation report, or a 1024-byte TD report)
    0x4C0  IGVM request data: data_size, version, report_type (2 SNP, 4 TDX),
           report_data_hash_type (1 SHA-256), variable_data_size (u32 LE each)
    0x4D4  variable data: JSON with "keys" (the vTPM's AK as JWK kid "HCLAkPub", ...),
           "vm-configuration" and "user-data" (hex of the guest's report data, padded)

The hardware report's report_data starts with SHA-256(variable data), so the
AK and the user-data are bound to the TEE. Layout from azure-cvm-tooling
``az-cvm-vtpm/src/hcl/mod.rs``; the evidence JSON from guest-components
``attestation-agent/attester/src/az_snp_vtpm/mod.rs`` and ``az_tdx_vtpm/mod.rs``.
Both the attesters and dev-kbs's verifier parse with these functions.
"""

import base64
import hashlib
import struct
from dataclasses import dataclass
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from cmlfs.errors import CmlfsError
from cmlfs.format.strictjson import loads_strict
from cmlfs.keys.rcar import b64url_decode

HCL_REPORT_NV_INDEX = 0x01400001
REPORT_REQUEST_NV_INDEX = 0x01400002
AK_HANDLE = 0x81000003
QUOTE_PCRS = tuple(range(24))  # SHA-256 bank
EVIDENCE_VERSION = 2

HEADER_MAGIC = b"HCLA"
HW_REPORT_OFFSET = 0x20
HW_REPORT_LEN = 1184
IGVM_OFFSET = HW_REPORT_OFFSET + HW_REPORT_LEN  # 0x4C0
VAR_DATA_OFFSET = IGVM_OFFSET + 20  # 0x4D4
TD_REPORT_LEN = 1024
REPORT_TYPES = {2: "snp", 4: "tdx"}
HASH_SHA256 = 1
MAX_HCL_REPORT = 64 * 1024
AK_KEY_ID = "HCLAkPub"

E = TypeVar("E", bound=CmlfsError)


@dataclass(frozen=True)
class HclReport:
    raw: bytes
    report_type: str  # "snp" or "tdx"
    hw_report: bytes  # 1184-byte SNP report, or 1024-byte TD report
    var_data: bytes

    def var_data_sha256(self) -> bytes:
        return hashlib.sha256(self.var_data).digest()


def parse_hcl_report(data: bytes, error: type[E]) -> HclReport:
    """An HCL report as the verifiers read it; ``error`` for anything out of shape."""
    if len(data) > MAX_HCL_REPORT:
        raise error(f"HCL report is larger than {MAX_HCL_REPORT} bytes")
    if len(data) < VAR_DATA_OFFSET:
        raise error(f"HCL report is {len(data)} bytes, shorter than its fixed part")
    if data[: len(HEADER_MAGIC)] != HEADER_MAGIC:  # the verifiers skip it; every report has it
        raise error('HCL report does not begin with "HCLA": not an HCL report')
    _data_size, _version, report_type, hash_type, var_size = struct.unpack_from(
        "<5I", data, IGVM_OFFSET
    )
    if report_type not in REPORT_TYPES:
        raise error(f"HCL report type {report_type} is neither SNP (2) nor TDX (4)")
    if hash_type != HASH_SHA256:
        raise error(f"HCL report hash type {hash_type} is not SHA-256 (1)")
    if var_size > len(data) - VAR_DATA_OFFSET:
        raise error("HCL report variable data runs past the end of the report")
    kind = REPORT_TYPES[report_type]
    hw_len = TD_REPORT_LEN if kind == "tdx" else HW_REPORT_LEN
    return HclReport(
        raw=data,
        report_type=kind,
        hw_report=data[HW_REPORT_OFFSET : HW_REPORT_OFFSET + hw_len],
        var_data=data[VAR_DATA_OFFSET : VAR_DATA_OFFSET + var_size],
    )


def var_data_json(report: HclReport, error: type[E]) -> dict:
    doc = loads_strict(report.var_data, "HCL variable data", error)
    if not isinstance(doc, dict):
        raise error("HCL variable data is not a JSON object")
    return doc


def user_data(report: HclReport, error: type[E]) -> bytes:
    """The variable data's ``user-data`` (hex, either case) as bytes."""
    value = var_data_json(report, error).get("user-data")
    if not isinstance(value, str):
        raise error('HCL variable data has no "user-data" string')
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise error('HCL "user-data" is not hex') from None


def ak_public_key(report: HclReport, error: type[E]) -> rsa.RSAPublicKey:
    """The vTPM attestation key from the variable data (JWK ``kid`` "HCLAkPub", RSA, e AQAB).

    Every key in the list must parse, as the reference verifier deserializes them all.
    """
    keys = var_data_json(report, error).get("keys")
    if not isinstance(keys, list) or not keys:
        raise error('HCL variable data has no "keys" list')
    found = None
    for jwk in keys:
        key = _rsa_jwk(jwk, error)
        if jwk.get("kid") == AK_KEY_ID:
            if found is not None:
                raise error(f"HCL variable data has two {AK_KEY_ID} keys")
            found = key
    if found is None:
        raise error(f"HCL variable data has no {AK_KEY_ID} key")
    return found


def _rsa_jwk(jwk: object, error: type[E]) -> rsa.RSAPublicKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or jwk.get("e") != "AQAB":
        raise error('an HCL key is not an RSA JWK with "e": "AQAB"')
    modulus = int.from_bytes(b64url_decode(jwk.get("n", ""), "HCL key modulus", error), "big")
    if not 2048 <= modulus.bit_length() <= 4096:
        raise error("an HCL key's modulus is not 2048 to 4096 bits")
    try:
        return rsa.RSAPublicNumbers(65537, modulus).public_key()
    except ValueError:
        raise error("an HCL key is not a valid RSA key") from None


def b64url_padded(data: bytes) -> str:
    """base64url with ``=`` padding, as serde_with's ``Base64<UrlSafe>`` writes it."""
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64url_any(text: object, what: str, error: type[E]) -> bytes:
    """base64url with or without ``=`` padding; ``+`` and ``/`` refused (the reference reads so)."""
    if not isinstance(text, str):
        raise error(f"{what} is not a string")
    body = text.rstrip("=")
    if len(text) - len(body) > 2 or (body != text and len(text) % 4):
        raise error(f"{what} is not base64url")
    return b64url_decode(body, what, error)


def vtpm_evidence(
    message: bytes, signature: bytes, pcrs: list[bytes], hcl_report: bytes, **hardware: bytes
) -> dict:
    """The version-2 evidence: ``hardware`` is ``vcek=DER`` (SNP) or ``td_quote=bytes`` (TDX)."""
    ((name, value),) = hardware.items()
    return {
        "version": EVIDENCE_VERSION,
        "tpm_quote": {
            "signature": signature.hex(),
            "message": message.hex(),
            "pcrs": [pcr.hex() for pcr in pcrs],
        },
        "hcl_report": b64url_padded(hcl_report),
        name: b64url_padded(value),
    }
