"""EC publisher keys for signing tests, written as model_signing and openssl expect them."""

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.kbs_helpers import write_key_pair


def ec_pair(folder: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """(private PEM, public PEM) of a new EC key (P-256 unless ``curve``)."""
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    write_key_pair(ec.generate_private_key(curve or ec.SECP256R1()), private, public)
    return private, public


def der_fingerprint(public: Path) -> str:
    """SHA-256 of the public key's DER, as ``openssl pkey -pubin -outform DER | sha256sum``."""
    key = serialization.load_pem_public_key(public.read_bytes())
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()
