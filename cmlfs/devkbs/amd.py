"""dev-kbs: an SNP attestation report and its VCEK, against an AMD chain given by option.

The checks Trustee's ``deps/verifier/src/az_snp_vtpm/mod.rs`` (and ``snp/mod.rs``)
makes, with the ARK/ASK pair read from ``--amd-chain`` instead of AMD's built-in
certificates (tests cannot hold AMD's keys): ARK self-signed, ARK signs ASK,
ASK signs the VCEK (RSASSA-PSS for real AMD certificates), VCEK within its
validity period; the VCEK's TCB extensions equal the report's reported TCB and
its hwID the chip id (for a VCEK, not a VLEK); the VCEK's P-384 key signs
bytes 0..0x2A0 of the report, whose reserved bytes are zero; VMPL 0. The
chain file is what AMD's KDS serves at ``/vcek/v1/<product>/cert_chain``: the
ASK then the ARK, PEM.
"""

import datetime
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from cmlfs.devkbs.verify import VerifyError
from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters.configfs_tsm import snp_report_json

_AMD = "1.3.6.1.4.1.3704.1"
_TCB_OIDS = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8"}
_FMC_OID = "3.9"
_HW_ID_OID = "4"
_SIGNED_LEN = 0x2A0
# Reserved bytes of the signed part (SEV-SNP ABI, ATTESTATION_REPORT, versions 3 to 5).
# Trustee checks the signature over the report as the sev crate re-encodes it, with
# reserved bytes zero: a report carrying anything there fails there too.
_RESERVED = ((0x4C, 0x50), (0x18B, 0x1A0), (0x1EB, 0x1EC), (0x1EF, 0x1F0))
_RESERVED_TAIL = {3: 0x1F8, 4: 0x1F8, 5: 0x208}  # up to the signature; v5 adds mitigations


@dataclass(frozen=True)
class AmdChain:
    ask: x509.Certificate
    ark: x509.Certificate


def load_amd_chain(path: Path) -> AmdChain:
    """ASK then ARK from a PEM file (KDS's cert_chain), each signature checked now."""
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    if len(certs) != 2:
        raise ValueError(f"{path} must hold the ASK then the ARK, PEM")
    chain = AmdChain(ask=certs[0], ark=certs[1])
    try:
        chain.ark.verify_directly_issued_by(chain.ark)
        chain.ask.verify_directly_issued_by(chain.ark)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: the ARK does not sign itself and the ASK ({exc})") from None
    return chain


def verify_snp(report: bytes, vcek_der: bytes, chain: AmdChain | None) -> dict:
    """Claims of a genuine SNP report signed by a VCEK that chains to ``chain``."""
    if chain is None:
        raise VerifyError("no AMD chain configured (start dev-kbs with --amd-chain)")
    try:
        parsed = snp_report_json(report)
    except KeySourceError as exc:
        raise VerifyError(str(exc)) from None
    tail = (_RESERVED_TAIL[parsed["version"]], _SIGNED_LEN)
    if any(any(report[start:end]) for start, end in (*_RESERVED, tail)):
        raise VerifyError("SNP report has non-zero reserved bytes")
    vcek = _checked_vcek(vcek_der, chain)
    _check_tcb(vcek, parsed)
    r = int.from_bytes(bytes(parsed["signature"]["r"]), "little")
    s = int.from_bytes(bytes(parsed["signature"]["s"]), "little")
    try:
        vcek.public_key().verify(
            encode_dss_signature(r, s), report[:_SIGNED_LEN], ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        raise VerifyError("SNP report signature is not the VCEK's") from None
    if parsed["vmpl"] != 0:
        raise VerifyError(f"SNP report VMPL is {parsed['vmpl']}, not 0")
    return {
        "measurement": bytes(parsed["measurement"]).hex(),
        "reported_tcb": parsed["reported_tcb"],
        "report_data": bytes(parsed["report_data"]).hex(),
    }


def _checked_vcek(der: bytes, chain: AmdChain) -> x509.Certificate:
    try:
        with warnings.catch_warnings():  # AMD's VCEKs have serial numbers RFC 5280 disallows
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            vcek = x509.load_der_x509_certificate(der)
    except ValueError:
        raise VerifyError("VCEK is not a DER certificate") from None
    try:
        vcek.verify_directly_issued_by(chain.ask)
    except (InvalidSignature, ValueError, TypeError):
        raise VerifyError("VCEK is not signed by the ASK of the AMD chain") from None
    now = datetime.datetime.now(datetime.UTC)
    if not vcek.not_valid_before_utc <= now <= vcek.not_valid_after_utc:
        raise VerifyError("VCEK is outside its validity period")
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerifyError("VCEK key is not EC P-384")
    return vcek


def _check_tcb(vcek: x509.Certificate, parsed: dict) -> None:
    tcb = parsed["reported_tcb"]
    oids = dict(_TCB_OIDS)
    if tcb["fmc"] is not None:
        oids["fmc"] = _FMC_OID
    for field, suffix in oids.items():
        if _int_extension(vcek, f"{_AMD}.{suffix}") != tcb[field]:
            raise VerifyError(f"VCEK {field} SPL does not match the report's reported TCB")
    names = vcek.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names and names[0].value == "VCEK":
        hw_id = _extension(vcek, f"{_AMD}.{_HW_ID_OID}")
        if len(hw_id) != 64:  # newer VCEKs wrap it in a DER OCTET STRING
            hw_id = _der(hw_id, 0x04)
        if hw_id != bytes(parsed["chip_id"]):
            raise VerifyError("VCEK hwID does not match the report's chip id")


def _extension(cert: x509.Certificate, oid: str) -> bytes:
    try:
        return cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid)).value.value
    except (x509.ExtensionNotFound, AttributeError):
        raise VerifyError(f"VCEK has no extension {oid}") from None


def _int_extension(cert: x509.Certificate, oid: str) -> int:
    body = _der(_extension(cert, oid), 0x02)
    if not body or len(body) > 2 or (len(body) == 2 and body[0] != 0) or body[0] & 0x80:
        raise VerifyError(f"VCEK extension {oid} is not an integer 0 to 255")
    return int.from_bytes(body, "big")


def _der(value: bytes, tag: int) -> bytes:
    """The content of a short-form DER element with ``tag`` filling all of ``value``."""
    if len(value) < 2 or value[0] != tag or value[1] >= 0x80 or value[1] != len(value) - 2:
        raise VerifyError("VCEK extension is not the DER value expected")
    return value[2:]
