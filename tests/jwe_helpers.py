"""KServe-style compact JWE files for tests, made with jwcrypto as KServe's users make them
(kserve python/storage/kserve_storage/confidential/jwe_decryptor.py reads them with it)."""

import json

from jwcrypto import jwe, jwk


def make_jwe(
    data: bytes, key: jwk.JWK, alg: str = "A256KW", enc: str = "A256GCM", **extra
) -> bytes:
    token = jwe.JWE(data, json.dumps({"alg": alg, "enc": enc, **extra}))
    token.add_recipient(key)
    return token.serialize(compact=True).encode()


def part_span(text: bytes, index: int) -> tuple[int, int]:
    """(start, end) of part ``index`` (0 header .. 4 tag) of a compact JWE."""
    dots = [i for i, c in enumerate(text) if c == ord(".")]
    starts = [0, *(d + 1 for d in dots)]
    ends = [*dots, len(text)]
    return starts[index], ends[index]


def flip_char(text: bytes, at: int) -> bytes:
    """``text`` with the base64url character at ``at`` replaced by another one that
    changes the decoded bits."""
    replacement = b"A" if text[at : at + 1] not in (b"A", b"B", b"C", b"D") else b"w"
    return text[:at] + replacement + text[at + 1 :]
