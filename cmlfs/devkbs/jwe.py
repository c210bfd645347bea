"""dev-kbs side of the resource response: a flattened JWE to the TEE's public key.

Built by hand with ``cryptography`` (not jwcrypto, which the client uses), in
the exact shape Trustee's KBS emits: compact protected header with ``alg``,
``enc`` and, for ECDH-ES, ``epk`` with sorted keys; A256GCM over a random
32-byte CEK; AAD = the protected header's base64url text; no ``aad`` member.
"""

import json
import os
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from cmlfs.errors import CmlfsError
from cmlfs.keys.rcar import b64url_decode, b64url_encode

ENC = "A256GCM"
_CURVES = {"P-256": (ec.SECP256R1(), 32), "P-521": (ec.SECP521R1(), 66)}


class JweError(CmlfsError):
    """The TEE public key cannot be used (unsupported alg, curve or malformed)."""


def encrypt_to(tee_pubkey: object, payload: bytes) -> dict:
    """A flattened JWE of ``payload`` for ``tee_pubkey`` (a JWK from the runtime data)."""
    if not isinstance(tee_pubkey, dict):
        raise JweError("TEE public key is not a JWK object")
    alg = tee_pubkey.get("alg")
    cek = os.urandom(32)
    if tee_pubkey.get("kty") == "EC" and alg == "ECDH-ES+A256KW":
        header, encrypted_key = _ecdh_es_a256kw(tee_pubkey, cek)
    elif tee_pubkey.get("kty") == "RSA" and alg == "RSA-OAEP-256":
        header = {"alg": alg, "enc": ENC}
        encrypted_key = _rsa_public(tee_pubkey).encrypt(
            cek,
            padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
        )
    else:
        raise JweError(f"unsupported TEE key algorithm {alg!r}")
    protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, payload, protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(sealed[:-16]),
        "tag": b64url_encode(sealed[-16:]),
    }


def _ecdh_es_a256kw(jwk: dict, cek: bytes) -> tuple[dict, bytes]:
    curve_name = jwk.get("crv")
    if curve_name not in _CURVES:
        raise JweError(f"unsupported curve {curve_name!r}")
    curve, size = _CURVES[curve_name]
    x = b64url_decode(jwk.get("x", ""), "EC x", JweError)
    y = b64url_decode(jwk.get("y", ""), "EC y", JweError)
    if len(x) != size or len(y) != size:
        raise JweError(f"EC coordinates are not {size} bytes")
    try:
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except ValueError:
        raise JweError("EC point is not on the curve") from None
    ephemeral = ec.generate_private_key(curve)
    shared = ephemeral.exchange(ec.ECDH(), peer)
    alg = b"ECDH-ES+A256KW"
    other_info = struct.pack(">I", len(alg)) + alg + struct.pack(">III", 0, 0, 256)
    kek = ConcatKDFHash(hashes.SHA256(), 32, other_info).derive(shared)
    numbers = ephemeral.public_key().public_numbers()
    epk = {
        "crv": curve_name,
        "kty": "EC",
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
    }
    return {"alg": "ECDH-ES+A256KW", "enc": ENC, "epk": epk}, aes_key_wrap(kek, cek)


def _rsa_public(jwk: dict) -> rsa.RSAPublicKey:
    n = int.from_bytes(b64url_decode(jwk.get("n", ""), "RSA n", JweError), "big")
    e = int.from_bytes(b64url_decode(jwk.get("e", ""), "RSA e", JweError), "big")
    if n.bit_length() < 2048:
        raise JweError("RSA key shorter than 2048 bits")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise JweError("RSA key is invalid") from None
