"""cmlfs.format.jwe against JWE files made by jwcrypto: structure, keys, range decryption."""

import json
import os

import pytest
from jwcrypto import jwk

from cmlfs.errors import FormatError, IntegrityError, WrongKeyError
from cmlfs.format.jwe import (
    CHUNK_BYTES,
    HEAD_BYTES,
    TAIL_BYTES,
    Authenticator,
    ChunkDigests,
    b64url_decode,
    decrypt_chunk,
    find_parts,
    key_from_resource,
    open_parts,
)
from tests.jwe_helpers import make_jwe

KEY_BITS = {"A128KW": 128, "A192KW": 192, "A256KW": 256}
ENC_BITS = {"A128GCM": 128, "A192GCM": 192, "A256GCM": 256}


def parts_of(text: bytes):
    return find_parts(text[:HEAD_BYTES], text[-TAIL_BYTES:], len(text))


def plaintext_of(text: bytes, key: bytes) -> bytes:
    parts = parts_of(text)
    opened = open_parts(parts, key)
    authenticator = Authenticator(opened)
    chunks = []
    for chunk in range(parts.n_chunks):
        offset, length = parts.chunk_chars(chunk)
        authenticator.update(text[offset : offset + length])
        chunks.append(text[offset : offset + length])
    hashes = authenticator.finish()
    return b"".join(decrypt_chunk(opened, i, c, hashes) for i, c in enumerate(chunks))


@pytest.mark.parametrize(
    ("alg", "enc"),
    [
        ("A128KW", "A128GCM"),
        ("A192KW", "A192GCM"),
        ("A256KW", "A256GCM"),
        ("A256KW", "A128GCM"),
        ("dir", "A128GCM"),
        ("dir", "A192GCM"),
        ("dir", "A256GCM"),
    ],
)
def test_every_algorithm_kserve_accepts_decrypts_chunk_by_chunk(alg, enc):
    bits = KEY_BITS.get(alg) or ENC_BITS[enc]
    key = jwk.JWK.generate(kty="oct", size=bits)
    data = os.urandom(2 * CHUNK_BYTES + 1001)
    text = make_jwe(data, key, alg=alg, enc=enc)
    assert plaintext_of(text, jwk.base64url_decode(key["k"])) == data


def test_a_final_newline_is_allowed_and_nothing_else():
    key = jwk.JWK.generate(kty="oct", size=256)
    raw = jwk.base64url_decode(key["k"])
    text = make_jwe(b"hello", key)
    assert plaintext_of(text + b"\n", raw) == b"hello"
    assert plaintext_of(text + b"\r\n", raw) == b"hello"
    with pytest.raises(FormatError):
        open_parts(parts_of(text + b" "), raw)


def test_key_forms_as_kserve_reads_them():
    key = jwk.JWK.generate(kty="oct", size=256)
    raw = jwk.base64url_decode(key["k"])
    assert key_from_resource(key.export().encode()) == raw
    assert key_from_resource(key["k"].encode() + b"\n") == raw
    raw_non_utf8 = b"\xff" + raw[1:]
    assert key_from_resource(raw_non_utf8) == raw_non_utf8
    with pytest.raises(FormatError, match="kty oct"):
        key_from_resource(jwk.JWK.generate(kty="EC", crv="P-256").export().encode())
    with pytest.raises(FormatError):
        key_from_resource(b"not base64url!")


def test_wrong_key_and_wrong_length():
    key = jwk.JWK.generate(kty="oct", size=256)
    text = make_jwe(b"x" * 100, key)
    with pytest.raises(WrongKeyError, match="unwrap"):
        open_parts(parts_of(text), os.urandom(32))
    with pytest.raises(WrongKeyError, match="needs 32"):
        open_parts(parts_of(text), os.urandom(16))
    direct = make_jwe(b"x" * 100, key, alg="dir")
    with pytest.raises(IntegrityError, match="tag"):
        plaintext_of(direct, os.urandom(32))  # dir: only the tag can tell


def test_a_chunk_that_changed_after_authentication_is_refused():
    key = jwk.JWK.generate(kty="oct", size=256)
    raw = jwk.base64url_decode(key["k"])
    text = make_jwe(os.urandom(2 * CHUNK_BYTES), key)
    parts = parts_of(text)
    opened = open_parts(parts, raw)
    authenticator = Authenticator(opened)
    for chunk in range(parts.n_chunks):
        offset, length = parts.chunk_chars(chunk)
        authenticator.update(text[offset : offset + length])
    hashes = authenticator.finish()
    offset, length = parts.chunk_chars(1)
    changed = text[offset : offset + 10] + (b"B" if text[offset + 10] != 66 else b"C")
    changed += text[offset + 11 : offset + length]
    with pytest.raises(IntegrityError, match="chunk 1 changed"):
        decrypt_chunk(opened, 1, changed, hashes)
    with pytest.raises(IntegrityError, match="chunk 0 changed"):
        decrypt_chunk(opened, 0, text[offset : offset + length], hashes)  # another chunk


def test_strict_base64url():
    assert b64url_decode(b"AAE", "x") == b"\x00\x01"
    for bad in (b"AAF", b"AA=", b"A+B/", b"A", b"AA.A", b"AA==", b"AB\nC", b"A B="):
        with pytest.raises(FormatError):
            b64url_decode(bad, "x")


def test_header_is_refused_for_unknown_members_that_matter():
    key = jwk.JWK.generate(kty="oct", size=256)
    raw = jwk.base64url_decode(key["k"])
    text = make_jwe(b"x", key)
    rest = text[text.index(b".") :]
    for header, reason in [
        ({"alg": "A256KW", "enc": "A256GCM", "zip": "DEF"}, "'zip'"),
        ({"alg": "A256KW", "enc": "A256GCM", "crit": ["exp"]}, "'crit'"),
        ({"alg": "RSA-OAEP", "enc": "A256GCM"}, "alg"),
        ({"alg": "A256KW", "enc": "A256CBC-HS512"}, "enc"),
    ]:
        encoded = jwk.base64url_encode(json.dumps(header)).encode()
        with pytest.raises(FormatError, match=reason):
            open_parts(parts_of(encoded + rest), raw)
    # Parsed as every hostile JSON is (cmlfs.format.strictjson): a duplicate member, NaN
    # (not JSON), or bytes that are not UTF-8 are refused.
    for header in (
        b'{"alg":"dir","alg":"A256KW","enc":"A256GCM"}',
        b'{"alg":"A256KW","enc":"A256GCM","x":NaN}',
        b'{"alg":"A256KW","enc":"A256GCM","x":"\xff"}',
    ):
        with pytest.raises(FormatError, match="the JWE header is not valid JSON"):
            open_parts(parts_of(jwk.base64url_encode(header).encode() + rest), raw)


def test_chunk_digests_never_reuse_a_one_time_key():
    """The same ciphertext recorded as two chunks, and in two passes, gets four different
    digests: each chunk's Poly1305 key is its own, and each pass draws a new secret."""
    data = os.urandom(1000)
    first, second = ChunkDigests(), ChunkDigests()
    for digests in (first, second):
        digests.append(data)
        digests.append(data)
        digests.check(1, data)
    recorded = [*first._digests, *second._digests]
    assert len(set(recorded)) == 4
    with pytest.raises(IntegrityError):
        first.check(0, data[:-1])
