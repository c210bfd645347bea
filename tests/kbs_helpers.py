"""Helpers shared by the key-release tests of several tiers."""

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def ed25519_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """(private PEM, public PEM) of a new Ed25519 admin key, as files in ``folder``."""
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    write_key_pair(ed25519.Ed25519PrivateKey.generate(), private, public)
    return private, public


def write_key_pair(key, private: Path, public: Path) -> None:
    """``key`` as an unencrypted PKCS#8 PEM at ``private``, its public key (SPKI PEM) at
    ``public``."""
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
