"""dev-kbs side of the RCAR bodies: the kbs-types 0.18 serde shapes, parsed as Trustee does.

``parse_request`` (/auth) and ``parse_attestation`` (/attest) accept exactly
what Trustee's serde deserialization accepts (required fields present with
their types; unknown fields ignored, as kbs-types does not deny them) and
raise ``BodyError`` with serde's kind of reason otherwise; the server answers
those as Trustee does, an ``AttestationError`` (never a ``SerdeError``). Where
dev-kbs is stricter than Trustee it says so: it takes no ``init-data`` and no
additional (device) evidence, which it cannot verify.
"""

import re
from dataclasses import dataclass

from cmlfs.errors import CmlfsError
from cmlfs.format.strictjson import loads_strict
from cmlfs.keys.rcar import PROTOCOL_VERSION, TEE_TYPES

# kbs-types TeePubKey (#[serde(tag = "kty")]): the fields each key type carries,
# which are also the only ones the runtime-data digest covers.
TEE_PUBKEY_FIELDS = {"EC": ("kty", "crv", "alg", "x", "y"), "RSA": ("kty", "alg", "n", "e")}
# semver 2.0 (Trustee parses the version with the semver crate before comparing).
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)


class BodyError(CmlfsError):
    """A request body Trustee would refuse; ``str`` is the reason."""


class VersionError(BodyError):
    """A /auth body whose protocol version is not "0.4.0"."""


@dataclass(frozen=True)
class AuthRequest:
    tee: str
    extra_params: object


@dataclass(frozen=True)
class Attestation:
    nonce: str
    tee_pubkey: dict  # only its key type's fields, as kbs-types re-serializes it
    primary_evidence: object
    additional_evidence: str


def parse_request(body: bytes) -> AuthRequest:
    """kbs-types ``Request``: ``{"version": str, "tee": Tee, "extra-params": any}``."""
    doc = _object(body, "Request")
    version = _field(doc, "version", str, "a string")
    tee = _field(doc, "tee", str, "a string")
    if tee not in TEE_TYPES:
        raise BodyError(f"unknown variant `{tee[:40]}` for field `tee`")
    extra_params = _field(doc, "extra-params", object, "any JSON value")
    if not _SEMVER.fullmatch(version):
        raise VersionError("failed to parse KBS version")
    if version != PROTOCOL_VERSION:
        raise VersionError(
            f"KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} "
            f"while the request is {version[:40]}"
        )
    return AuthRequest(tee, extra_params)


def parse_attestation(body: bytes) -> Attestation:
    """kbs-types ``Attestation``: ``init-data`` (optional), ``runtime-data``, ``tee-evidence``."""
    doc = _object(body, "Attestation")
    if doc.get("init-data") is not None:
        raise BodyError("init-data is not supported by dev-kbs (it could not verify it)")
    runtime = _field(doc, "runtime-data", dict, "an object (RuntimeData)")
    nonce = _field(runtime, "nonce", str, "a string")
    tee_pubkey = _tee_pubkey(_field(runtime, "tee-pubkey", dict, "an object (TeePubKey)"))
    evidence = _field(doc, "tee-evidence", dict, "an object (CompositeEvidence)")
    primary = _field(evidence, "primary_evidence", object, "any JSON value")
    additional = _field(evidence, "additional_evidence", str, "a string")
    _check_additional_evidence(additional)
    return Attestation(nonce, tee_pubkey, primary, additional)


def _object(body: bytes, what: str) -> dict:
    doc = loads_strict(body, what, BodyError)
    if not isinstance(doc, dict):
        raise BodyError(f"invalid type: expected struct {what}")
    return doc


def _field(doc: dict, name: str, kind: type, described: str) -> object:
    if name not in doc:
        raise BodyError(f"missing field `{name}`")
    value = doc[name]
    # JSON null is a value for serde_json::Value fields, never for the typed ones
    if kind is not object and not isinstance(value, kind):
        raise BodyError(f"invalid type for field `{name}`: expected {described}")
    return value


def _tee_pubkey(raw: dict) -> dict:
    kty = raw.get("kty")
    if not isinstance(kty, str) or kty not in TEE_PUBKEY_FIELDS:
        raise BodyError("tee-pubkey: unknown variant of `kty`, expected `RSA` or `EC`")
    for name in TEE_PUBKEY_FIELDS[kty][1:]:
        _field(raw, name, str, "a string")
    return {name: raw[name] for name in TEE_PUBKEY_FIELDS[kty]}


def _check_additional_evidence(text: str) -> None:
    """Trustee parses a non-empty string as a map of TEE type to evidence."""
    if not text:
        return
    devices = loads_strict(text.encode("utf-8"), "additional_evidence", BodyError)
    if not isinstance(devices, dict) or not set(devices) <= TEE_TYPES:
        raise BodyError("additional_evidence is not a JSON map of TEE type to evidence")
    if devices:
        raise BodyError("additional (device) evidence is not supported by dev-kbs")
