"""dev-kbs: a TD quote (v4/v5, ECDSA P-256) checked against an Intel root given by option.

What Intel's DCAP quote verification library does for Trustee's ``az_tdx_vtpm``
verifier, up to collateral: the PCK certificate chain carried in the quote's
certification data (type 6 holding type 5, PEM: PCK, platform or processor CA,
root) ends in the root read from ``--intel-root`` (tests cannot hold Intel's
key), each certificate signed by the next and within its validity period; the
PCK key signs the QE report; the QE report's report_data is SHA-256(attestation
key || QE authentication data) followed by 32 zero bytes; the attestation key
signs the quote's header and body. Not done here (Trustee does, from Intel's
PCS): CRLs, TCB info and QE identity, so no TCB status is judged.
"""

import datetime
import hashlib
import struct
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from cmlfs.devkbs.verify import VerifyError

_HEADER_LEN = 48
_BODY_LEN = {2: 584, 3: 648}  # v5 body descriptor: TD 1.0, TD 1.5
_REPORT_DATA_IN_BODY = 520
_QE_REPORT_LEN = 384
_QE_REPORT_DATA = 320
_TDX_TEE_TYPE = 0x81
_ECDSA_P256 = 2
MAX_QUOTE = 64 * 1024


def load_intel_root(path: Path) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    if len(certs) != 1:
        raise ValueError(f"{path} must hold one root certificate, PEM")
    return certs[0]


class _Reader:
    def __init__(self, data: bytes, at: int) -> None:
        self.data, self.at = data, at

    def take(self, n: int, what: str) -> bytes:
        if self.at + n > len(self.data):
            raise VerifyError(f"TD quote is cut short in its {what}")
        piece = self.data[self.at : self.at + n]
        self.at += n
        return piece

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]


def verify_td_quote(quote: bytes, root: x509.Certificate | None) -> bytes:
    """The 64-byte report_data of a TD quote whose signatures chain to ``root``."""
    if root is None:
        raise VerifyError("no Intel root configured (start dev-kbs with --intel-root)")
    if len(quote) > MAX_QUOTE:
        raise VerifyError(f"TD quote is larger than {MAX_QUOTE} bytes")
    reader = _Reader(quote, 0)
    version, key_type, tee_type = struct.unpack("<HHI", reader.take(_HEADER_LEN, "header")[:8])
    if version not in (4, 5) or key_type != _ECDSA_P256 or tee_type != _TDX_TEE_TYPE:
        raise VerifyError(f"not a TDX ECDSA-P256 quote v4/v5 (version {version})")
    body_len = _BODY_LEN[2]
    if version == 5:
        body_type, body_len = reader.u16("body descriptor"), reader.u32("body descriptor")
        if _BODY_LEN.get(body_type) != body_len:
            raise VerifyError(f"TD quote body type {body_type} of {body_len} bytes is not TDX")
    body = reader.take(body_len, "body")
    signed = quote[: reader.at]
    end = reader.u32("signature length") + reader.at
    if end > len(quote) or any(quote[end:]):  # quotes from Azure come zero-padded
        raise VerifyError("TD quote signature data does not end the quote")
    reader.data = quote[:end]
    signature = reader.take(64, "signature")
    raw_key = reader.take(64, "attestation key")
    if reader.u16("certification type") != 6:
        raise VerifyError("TD quote certification data is not a QE report (type 6)")
    reader.u32("certification size")
    qe_report = reader.take(_QE_REPORT_LEN, "QE report")
    qe_signature = reader.take(64, "QE report signature")
    auth_data = reader.take(reader.u16("QE auth data"), "QE auth data")
    if reader.u16("PCK chain type") != 5:
        raise VerifyError("TD quote does not carry a PCK certificate chain (type 5)")
    pck = _checked_chain(reader.take(reader.u32("PCK chain size"), "PCK chain"), root)
    _verify(pck.public_key(), qe_signature, qe_report, "QE report is not signed by the PCK key")
    expected = hashlib.sha256(raw_key + auth_data).digest() + bytes(32)
    if qe_report[_QE_REPORT_DATA:] != expected:
        raise VerifyError("QE report does not bind the quote's attestation key")
    attestation_key = _p256(raw_key)
    _verify(attestation_key, signature, signed, "TD quote is not signed by its attestation key")
    return body[_REPORT_DATA_IN_BODY : _REPORT_DATA_IN_BODY + 64]


def _checked_chain(pem: bytes, root: x509.Certificate) -> x509.Certificate:
    try:
        chain = x509.load_pem_x509_certificates(pem.rstrip(b"\0"))
    except ValueError:
        raise VerifyError("TD quote PCK chain is not PEM certificates") from None
    if len(chain) < 2 or chain[-1] != root:
        raise VerifyError("TD quote PCK chain does not end in the configured Intel root")
    now = datetime.datetime.now(datetime.UTC)
    for cert, issuer in zip(chain, [*chain[1:], root], strict=True):
        try:
            cert.verify_directly_issued_by(issuer)
        except (InvalidSignature, ValueError, TypeError):
            raise VerifyError(
                "TD quote PCK chain has a certificate its issuer did not sign"
            ) from None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerifyError("TD quote PCK chain has a certificate outside its validity")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise VerifyError("PCK key is not EC P-256")
    return chain[0]


def _p256(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise VerifyError("TD quote attestation key is not a P-256 point") from None


def _verify(key, signature: bytes, data: bytes, failure: str) -> None:
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise VerifyError(failure) from None
