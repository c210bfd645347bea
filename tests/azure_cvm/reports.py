"""Synthetic hardware reports for the paravisor and metadata stand-ins.

- SNP attestation report v3 (AMD SEV-SNP ABI, layout as sev's
  ``AttestationReport`` and ``cmlfs/keys/attesters/configfs_tsm.py``), Milan
  family/model, VMPL 0, signed by the test VCEK: ECDSA P-384 over SHA-384 of
  bytes 0..0x2A0, r and s little-endian in 72-byte fields at 0x2A0.
- TD report (1024 bytes: REPORTMACSTRUCT, TEE_TCB_INFO, reserved, TDINFO), as
  azure-cvm-tooling ``az-cvm-vtpm/src/tdx/mod.rs``; the MAC is not computed.
- TD quote v4 (Intel TDX DCAP quote format): header, 584-byte body taken from the
  TD report, ECDSA P-256 quote signature by an attestation key, certification
  data type 6 (QE report, its PCK signature, QE auth data, then type 5: PCK chain).
- HCL report (azure-cvm-tooling ``az-cvm-vtpm/src/hcl/mod.rs``).
"""

import hashlib
import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from cmlfs.keys.rcar import b64url_encode
from tests.azure_cvm.chains import CHIP_ID, TCB

HCL_TYPES = {"snp": 2, "tdx": 4}


def hcl_report(kind: str, hw_report: bytes, var_data: bytes) -> bytes:
    header = b"HCLA" + struct.pack(
        "<7I", 1 if kind == "snp" else 2, 32 + 1184 + 20 + len(var_data), 2, 0, 0, 0, 0
    )
    igvm = struct.pack("<5I", 20 + len(var_data), 1, HCL_TYPES[kind], 1, len(var_data))
    return header + hw_report.ljust(1184, b"\0") + igvm + var_data


def var_data(ak_modulus: bytes, user_data: bytes) -> bytes:
    """The paravisor's JSON (AK only: swtpm's 2 KiB NV limit leaves no room for the EK)."""
    doc = {
        "keys": [
            {
                "kid": "HCLAkPub",
                "key_ops": ["sign"],
                "kty": "RSA",
                "e": "AQAB",
                "n": b64url_encode(ak_modulus),
            }
        ],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True},
        "user-data": user_data.ljust(64, b"\0").hex().upper(),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def snp_report(report_data: bytes, vcek_key: ec.EllipticCurvePrivateKey, vmpl: int = 0) -> bytes:
    report = bytearray(1184)
    tcb = bytes([TCB["bootloader"], TCB["tee"], 0, 0, 0, 0, TCB["snp"], TCB["microcode"]])
    struct.pack_into("<IIQ", report, 0, 3, 1, 0x30000)
    struct.pack_into("<II", report, 0x30, vmpl, 1)
    for offset in (0x38, 0x180, 0x1E0, 0x1F0):
        report[offset : offset + 8] = tcb
    report[0x50:0x90] = report_data.ljust(64, b"\0")
    report[0x90:0xC0] = hashlib.sha384(b"launch measurement").digest()
    report[0x188:0x18B] = bytes([0x19, 0x01, 0x01])
    report[0x1A0:0x1E0] = CHIP_ID
    sign_snp(report, vcek_key)
    return bytes(report)


def sign_snp(report: bytearray, vcek_key: ec.EllipticCurvePrivateKey) -> None:
    r, s = decode_dss_signature(vcek_key.sign(bytes(report[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    report[0x2A0:0x2E8] = r.to_bytes(72, "little")
    report[0x2E8:0x330] = s.to_bytes(72, "little")


def td_report(report_data: bytes) -> bytes:
    mac_struct = bytes([0x81, 0, 0, 0]).ljust(128, b"\0") + report_data.ljust(64, b"\0")
    tee_tcb_info = b"\x01" * 8 + bytes(range(16)) + hashlib.sha384(b"seam").digest()
    td_info = bytes(16) + hashlib.sha384(b"mrtd").digest()
    return mac_struct.ljust(256, b"\0") + tee_tcb_info.ljust(256, b"\0") + td_info.ljust(512, b"\0")


def td_quote(report: bytes, pck_key: ec.EllipticCurvePrivateKey, pck_chain: bytes) -> bytes:
    """A v4 TD quote for ``report`` signed by a fresh attestation key certified by the PCK."""
    tcb, info = report[256:495], report[512:1024]
    # tee_tcb_svn, mrseam, mrsignerseam, seam_attributes | td_attributes, xfam, mrtd,
    # mrconfigid, mrowner, mrownerconfig, rtmr0-3 | report_data
    body = tcb[8:128] + info[0:400] + report[128:192]
    header = struct.pack("<HHIHH", 4, 2, 0x81, 0, 0) + bytes(16) + bytes(20)
    attestation_key = ec.generate_private_key(ec.SECP256R1())
    numbers = attestation_key.public_key().public_numbers()
    raw_key = numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big")
    auth_data = os.urandom(32)
    qe_report = bytearray(384)
    qe_report[320:352] = hashlib.sha256(raw_key + auth_data).digest()
    qe_signature = raw_signature(pck_key, bytes(qe_report))
    inner = struct.pack("<HI", 5, len(pck_chain)) + pck_chain
    qe_data = (
        bytes(qe_report) + qe_signature + struct.pack("<H", len(auth_data)) + auth_data + inner
    )
    certification = struct.pack("<HI", 6, len(qe_data)) + qe_data
    signature_data = raw_signature(attestation_key, header + body) + raw_key + certification
    return header + body + struct.pack("<I", len(signature_data)) + signature_data


def raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")
