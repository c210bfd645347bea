"""Wire facts of Trustee's KBS protocol "0.4.0" (RCAR), shared by the client and dev-kbs.

Pure: constants, the runtime-data binding (RFC 8785 JCS, then SHA-384 by
default), resource-path rules and base64 helpers; hostile JSON is parsed by
cmlfs.format.strictjson. No I/O. See docs/KEYS.md for the handshake these serve.
"""

import base64
import binascii
import hashlib
import json
import re
from typing import TypeVar

import rfc8785

from cmlfs.errors import CmlfsError

PROTOCOL_VERSION = "0.4.0"
API_PREFIX = "/kbs/v0"
SESSION_COOKIE = "kbs-session-id"
ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"
# The `role` claim of cmlfs's admin tokens; Trustee's regex ACL maps roles to endpoints.
ADMIN_ROLE = "admin"
# The `tee` values of kbs-types (dev-kbs has verifiers for a few of them).
TEE_TYPES = frozenset(
    {
        "az-snp-vtpm",
        "az-tdx-vtpm",
        "cca",
        "csv",
        "hygondcu",
        "nvidia",
        "sample",
        "sampledevice",
        "se",
        "sgx",
        "snp",
        "tdx",
        "tpm",
    }
)
DEFAULT_HASH = "sha384"
HASH_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
# Trustee's resource plugin accepts each of <repo>/<type>/<tag> only in this shape.
_VARIANT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_SEGMENT = re.compile(r"[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*")

E = TypeVar("E", bound=CmlfsError)


def runtime_data_digest(
    nonce: str, tee_pubkey: dict, additional_evidence: str = "", hash_name: str = DEFAULT_HASH
) -> bytes:
    """The report data a TEE must sign: hash of the JCS form of the primary runtime data.

    The key ``additional-evidence`` is always present (``""`` without devices), as in
    Trustee's ``parse_runtime_data`` and guest-components' ``get_composite_evidence``.
    """
    document = {
        "tee-pubkey": tee_pubkey,
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    }
    return HASH_ALGORITHMS[hash_name](rfc8785.dumps(document)).digest()


def resource_path(repo: str, kind: str, tag: str, error: type[E]) -> str:
    """``repo/type/tag`` after checking each segment the way Trustee's resource plugin does."""
    for segment in (repo, kind, tag):
        if not _SEGMENT.fullmatch(segment):
            raise error(
                f"invalid resource path segment {segment!r}: use letters, digits, '_', '-', '.'"
            )
    return f"{repo}/{kind}/{tag}"


def error_type(variant: str) -> str:
    return ERROR_TYPE_PREFIX + variant


def error_variant(type_url: str) -> str | None:
    """``PolicyDeny`` from ``https://github.com/confidential-containers/kbs/errors/PolicyDeny``;
    None when the last segment is not an identifier (it would go into messages and logs)."""
    variant = type_url.rsplit("/", 1)[-1]
    return variant if _VARIANT.fullmatch(variant) else None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str, error: type[E]) -> bytes:
    """Decode unpadded base64url strictly (no padding, no other alphabet)."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise error(f"{what} is not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64_decode(text: object, what: str, error: type[E]) -> bytes:
    """Decode standard padded base64 strictly."""
    if not isinstance(text, str):
        raise error(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64") from None


def dumps_compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
