"""Test certificate chains standing in for AMD's and Intel's, written to files.

AMD (shape of AMD KDS, as Trustee's ``deps/verifier/src/snp/mod.rs`` checks it):
ARK (RSA, self-signed) -> ASK (RSA) -> VCEK (EC P-384), every signature
RSASSA-PSS SHA-384; the VCEK carries the TCB extensions (OIDs
1.3.6.1.4.1.3704.1.3.{1,2,3,8}: bootloader, TEE, SNP, microcode SPL as DER
INTEGERs) and hwID (1.3.6.1.4.1.3704.1.4, the 64-byte chip id), CN "VCEK".
``amd-chain.pem`` holds ASK then ARK, as KDS's ``cert_chain`` answer does.

Intel (shape of the PCK chain in a TD quote's certification data): root CA ->
platform CA -> PCK certificate, EC P-256, ECDSA-SHA256. ``intel-root.pem`` is
the root dev-kbs trusts; ``pck-chain.pem`` is leaf, platform CA, root.

RSA keys are 2048 bits (AMD's are 4096) to keep the tests fast.
"""

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

AMD_OID = "1.3.6.1.4.1.3704.1"
TCB = {"bootloader": 4, "tee": 0, "snp": 22, "microcode": 213}
TCB_OIDS = {"bootloader": "3.1", "tee": "3.2", "snp": "3.3", "microcode": "3.8"}
CHIP_ID = bytes(range(64))


@dataclass(frozen=True)
class ChainFiles:
    folder: Path

    @property
    def amd_chain(self) -> Path:
        return self.folder / "amd-chain.pem"

    @property
    def vcek(self) -> Path:
        return self.folder / "vcek.pem"

    @property
    def vcek_key(self) -> Path:
        return self.folder / "vcek.key"

    @property
    def intel_root(self) -> Path:
        return self.folder / "intel-root.pem"

    @property
    def pck_chain(self) -> Path:
        return self.folder / "pck-chain.pem"

    @property
    def pck_key(self) -> Path:
        return self.folder / "pck.key"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: str, public_key, ca: bool) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _der_int(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def vcek_certificate(ask_key, vcek_key, tcb: dict[str, int], chip_id: bytes) -> x509.Certificate:
    builder = _builder("VCEK", "SEV-Milan", vcek_key.public_key(), ca=False)
    for field, suffix in TCB_OIDS.items():
        oid = x509.ObjectIdentifier(f"{AMD_OID}.{suffix}")
        builder = builder.add_extension(
            x509.UnrecognizedExtension(oid, _der_int(tcb[field])), False
        )
    hw_id = x509.ObjectIdentifier(f"{AMD_OID}.4")
    builder = builder.add_extension(x509.UnrecognizedExtension(hw_id, chip_id), False)
    return builder.sign(ask_key, hashes.SHA384(), rsa_padding=_pss())


def make_chains(folder: Path) -> ChainFiles:
    folder.mkdir(parents=True, exist_ok=True)
    files = ChainFiles(folder)
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    ark = _builder("ARK-Milan", "ARK-Milan", ark_key.public_key(), ca=True).sign(
        ark_key, hashes.SHA384(), rsa_padding=_pss()
    )
    ask = _builder("SEV-Milan", "ARK-Milan", ask_key.public_key(), ca=True).sign(
        ark_key, hashes.SHA384(), rsa_padding=_pss()
    )
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    vcek = vcek_certificate(ask_key, vcek_key, TCB, CHIP_ID)
    files.amd_chain.write_bytes(_pem(ask) + _pem(ark))
    files.vcek.write_bytes(_pem(vcek))
    files.vcek_key.write_bytes(_key_pem(vcek_key))

    root_key = ec.generate_private_key(ec.SECP256R1())
    platform_key = ec.generate_private_key(ec.SECP256R1())
    pck_key = ec.generate_private_key(ec.SECP256R1())
    root = _builder("Test SGX Root CA", "Test SGX Root CA", root_key.public_key(), True).sign(
        root_key, hashes.SHA256()
    )
    platform = _builder(
        "Test SGX PCK Platform CA", "Test SGX Root CA", platform_key.public_key(), True
    )
    platform = platform.sign(root_key, hashes.SHA256())
    pck = _builder(
        "Test SGX PCK Certificate", "Test SGX PCK Platform CA", pck_key.public_key(), False
    )
    pck = pck.sign(platform_key, hashes.SHA256())
    files.intel_root.write_bytes(_pem(root))
    files.pck_chain.write_bytes(_pem(pck) + _pem(platform) + _pem(root))
    files.pck_key.write_bytes(_key_pem(pck_key))
    return files


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), None)
