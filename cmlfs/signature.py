"""Publisher signatures in the OpenSSF model-signing format (PyPI ``model-signing``).

A signature is a Sigstore bundle holding a DSSE envelope over an in-toto statement that
lists the SHA-256 of every signed file by its relative path. cmlfs signs a store folder's
own objects (the sealed manifest and the blobs) with an EC private key, offline, and writes
the bundle into the store as ``SIGNATURE_NAME``, so ``model_signing verify key STORE
--signature STORE/model.sig --public_key PUB`` accepts the store unchanged.

A mount cannot hash every blob before serving, and need not: the bundle's signature is
checked with the trusted public key, and then one listed digest, the sealed manifest's, is
compared with the manifest the store holds. In format 2 the manifest binds every record of
every blob through its hash lists, which the reader checks lazily.

``model_signing`` (with sigstore and pydantic) is imported inside the functions: it costs
every other command half a second of start-up.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cmlfs.errors import CmlfsError, IntegrityError

SIGNATURE_NAME = "model.sig"  # model_signing's default name; left out of what it signs
SIGNATURE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
MAX_SIGNATURE_LEN = 64 * 1024 * 1024  # ~350k listed files; read whole, so bounded
MAX_PUBLIC_KEY_LEN = 64 * 1024


class SignatureError(IntegrityError):
    """A publisher signature is missing, malformed, or not made by the trusted key."""


class SigningError(CmlfsError):
    """A folder cannot be signed, or a signing or trusted key cannot be used (unreadable,
    not an EC P-256/384/521 PEM key)."""


@dataclass(frozen=True)
class PublisherKey:
    """A trusted publisher's public key: its PEM file and its fingerprint."""

    path: Path
    fingerprint: str  # "sha256:" + SHA-256 (hex) of the SubjectPublicKeyInfo DER
    hint: str  # what model_signing records in a bundle: SHA-256 (hex) of the key's PEM


def fingerprint(public_key: object) -> str:
    """``sha256:`` and the hex SHA-256 of a public key's DER SubjectPublicKeyInfo, as
    ``openssl pkey -pubin -outform DER | sha256sum`` prints it."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _key_hint(public_key: object) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    pem = public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]
    return hashlib.sha256(pem).hexdigest()


def _check_curve(public_key: object, path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name not in (
        "secp256r1",
        "secp384r1",
        "secp521r1",
    ):
        raise SigningError(f"{path}: model signing takes an EC P-256, P-384 or P-521 key")


def _read_pem(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PUBLIC_KEY_LEN + 1)
    except OSError as exc:
        raise SigningError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PUBLIC_KEY_LEN:
        raise SigningError(f"{path} is too large for a PEM key")
    return data


def load_publisher_key(path: Path) -> PublisherKey:
    """The trusted publisher's public key from a PEM file (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(_read_pem(path))
    except (ValueError, TypeError):
        raise SigningError(f"{path} is not a PEM public key") from None
    _check_curve(key, path)
    return PublisherKey(path, fingerprint(key), _key_hint(key))


def signing_key_fingerprint(path: Path) -> str:
    """Check an unencrypted EC private key in PEM before anything is signed with it; return
    the fingerprint of its public key (what ``--trust-publisher`` will be given)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(_read_pem(path), None)
    except TypeError:
        raise SigningError(f"{path} is encrypted: give an unencrypted PEM key") from None
    except ValueError:
        raise SigningError(f"{path} is not a PEM private key") from None
    _check_curve(key.public_key(), path)
    return fingerprint(key.public_key())


def sign_folder(folder: Path, private_key: Path) -> str:
    """Sign every file of ``folder`` (SHA-256 each, model_signing's ``files`` serialization)
    into ``folder/SIGNATURE_NAME``, replacing an older signature; return the fingerprint."""
    from model_signing import hashing, signing

    signer_fingerprint = signing_key_fingerprint(private_key)
    target = folder / SIGNATURE_NAME
    config = signing.Config().use_elliptic_key_signer(private_key=private_key)
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME]))
    partial = folder / f".{SIGNATURE_NAME}.partial"
    try:
        config.sign(folder, partial)
        partial.rename(target)
    except OSError as exc:
        raise SigningError(f"cannot sign {folder}: {exc.strerror or exc}") from None
    except ValueError as exc:  # model_signing refuses symbolic links and special files
        raise SigningError(f"cannot sign {folder}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return signer_fingerprint


def signed_digests(data: bytes, trusted: PublisherKey) -> dict[str, str]:
    """The files a signature lists (relative path -> SHA-256 hex), once the bundle is
    proved to be signed by ``trusted``; SignatureError otherwise, naming the key that did
    sign it when that is another one."""
    from cryptography.exceptions import InvalidSignature

    # The public verifying.Config re-hashes every file of a local folder, which a mount
    # must not do; its key verifier is the part that checks the bundle (pinned version).
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    bundle = _parse_bundle(data)
    hint = bundle.verification_material.public_key.hint
    if hint != trusted.hint:
        raise SignatureError(
            f"the signature is by another key, {_signer(bundle)}, not the trusted publisher "
            f"{trusted.fingerprint} (--trust-publisher)"
        )
    try:
        manifest = sign_ec_key.Verifier(trusted.path).verify(sign_sigstore_pb.Signature(bundle))
    except InvalidSignature:
        raise SignatureError(
            f"the signature does not verify with the trusted publisher {trusted.fingerprint}: "
            "changed after signing, or forged"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        # raised once the signature verified (media type and key hint are checked above): the
        # key vouches for who made the payload, not that it is a model-signing statement
        raise SignatureError(
            f"the payload signed by {trusted.fingerprint} is not a model-signing statement"
        ) from None
    if manifest.serialization_type.get("method") != "files":
        raise SignatureError("the signature lists file shards; sign whole files")
    digests: dict[str, str] = {}
    for descriptor in manifest.resource_descriptors():
        if descriptor.digest.algorithm == "sha256":
            digests[descriptor.identifier] = descriptor.digest.digest_hex
    return digests


def signer_of(data: bytes) -> str:
    """The fingerprint of the key that signed a bundle, without trusting it (shown by
    ``cmlfs inspect``)."""
    return _signer(_parse_bundle(data))


def _parse_bundle(data: bytes):  # -> sigstore_models.bundle.v1.Bundle
    """The bundle as model_signing 1.x writes it (strict: unknown fields refused), with one
    DSSE signature and a key hint; the payload is not parsed before it is verified."""
    from pydantic import ValidationError
    from sigstore_models.bundle.v1 import Bundle

    if len(data) > MAX_SIGNATURE_LEN:
        raise SignatureError(f"the signature is larger than {MAX_SIGNATURE_LEN} bytes")
    try:
        bundle = Bundle.from_json(data)
    except (ValidationError, ValueError, RecursionError):
        raise SignatureError("the signature is not a Sigstore bundle (malformed)") from None
    envelope = bundle.dsse_envelope
    if bundle.media_type != SIGNATURE_MEDIA_TYPE or envelope is None:
        raise SignatureError(f"the signature is not a {SIGNATURE_MEDIA_TYPE} DSSE bundle")
    material = bundle.verification_material.public_key
    if material is None or not material.hint:
        raise SignatureError(
            "the signature names no public key (a certificate or a pre-1.0 model_signing "
            "bundle): sign with cmlfs sign or model_signing sign key"
        )
    if len(envelope.signatures) != 1:
        raise SignatureError("the signature's envelope must hold exactly one signature")
    return bundle


def _signer(bundle) -> str:  # a sigstore_models Bundle
    """The fingerprint of the key that made the bundle's signature, recovered from the
    signature (ECDSA public key recovery) and picked by the bundle's key hint; the hint
    alone if no candidate matches it."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    from ecdsa import NIST256p, NIST384p, NIST521p, VerifyingKey
    from ecdsa.der import UnexpectedDER
    from ecdsa.errors import MalformedPointError
    from ecdsa.numbertheory import Error as NumberTheoryError
    from ecdsa.util import sigdecode_der
    from model_signing._signing.sign_sigstore_pb import pae

    envelope = bundle.dsse_envelope
    message = pae(envelope.payload)
    hint = bundle.verification_material.public_key.hint
    curves = ((NIST256p, hashlib.sha256), (NIST384p, hashlib.sha384), (NIST521p, hashlib.sha512))
    for curve, digest in curves:
        try:
            candidates = VerifyingKey.from_public_key_recovery(
                envelope.signatures[0].sig, message, curve, digest, sigdecode_der
            )
        except (UnexpectedDER, MalformedPointError, NumberTheoryError, ValueError):
            continue  # not a signature on this curve
        for candidate in candidates:
            key = load_der_public_key(candidate.to_der())
            if _key_hint(key) == hint:
                return fingerprint(key)
    return f"a key whose PEM has SHA-256 {hint}"
