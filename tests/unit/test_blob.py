"""Blob header, key derivation, and sealing/opening whole blobs (cmlfs.format.header, .keys).

A blob is opened here the way the reader opens one: parse the header, check
the key commitment, then open the records of the blob's exact length. Every
tampering must end in FormatError, WrongKeyError or IntegrityError, never in
plaintext. The blobs here are format 1: the record AEAD and its associated data
are the same in format 2, whose hash list tests/unit/test_hashlist.py covers.
"""

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlfs.errors import FormatError, IntegrityError, WrongKeyError
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.header import (
    BLOB_MAGIC,
    BlobHeader,
    BlobOpener,
    BlobSealer,
    chunk_associated_data,
)
from cmlfs.format.keys import (
    Purpose,
    derive_object_key,
    key_id,
    open_object_key,
)
from cmlfs.format.layout import HEADER_LEN, MAX_PLAINTEXT_SIZE, ChunkLayout

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
C = 4096
REJECTED = (FormatError, IntegrityError, WrongKeyError)


def seal_blob(
    plaintext: bytes,
    algorithm: Algorithm = Algorithm.AES_256_GCM_SIV,
    key: bytes = KEY,
    chunk_size: int = C,
) -> bytes:
    layout = ChunkLayout(chunk_size, len(plaintext))
    sealer = BlobSealer(key, layout, algorithm, version=1)
    records = [
        sealer.seal_chunk(i, plaintext[layout.chunk_offset(i) :][: layout.chunk_len(i)])
        for i in range(layout.n_chunks)
    ]
    return sealer.header.pack() + b"".join(records)


def open_blob(blob: bytes, key: bytes = KEY) -> bytes:
    opener = BlobOpener(key, BlobHeader.parse(blob[:HEADER_LEN]))
    layout = opener.layout
    if layout.n_chunks == 0:
        if len(blob) != HEADER_LEN:
            raise IntegrityError("an empty file's blob is its header alone")
        return b""
    span = opener.open_span(range(0, layout.n_chunks), blob[HEADER_LEN:])
    for error in span.failures.values():
        raise error
    return bytes(span.plaintext)


def records_of(blob: bytes) -> list[bytes]:
    layout = BlobHeader.parse(blob[:HEADER_LEN]).layout
    return [blob[layout.record_offset(i) :][: layout.record_len(i)] for i in range(layout.n_chunks)]


def plaintext_of(size: int) -> bytes:
    return bytes((i * 31 + 7) % 251 for i in range(size))


# --- keys -------------------------------------------------------------------------------


def test_derivation_splits_64_bytes_of_hkdf_into_key_and_commitment():
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    salt = bytes(range(100, 132))
    okm = HKDF(SHA256(), 64, salt, b"cmlfs/v1/content").derive(KEY)
    assert derive_object_key(KEY, salt, Purpose.CONTENT_V1) == (okm[:32], okm[32:])
    assert derive_object_key(KEY, salt, Purpose.MANIFEST_V1) != (okm[:32], okm[32:])


def test_commitment_accepts_only_the_model_key_it_was_made_with():
    salt = bytes(32)
    key, commitment = derive_object_key(KEY, salt, Purpose.CONTENT_V1)
    assert open_object_key(KEY, salt, commitment, Purpose.CONTENT_V1) == key
    with pytest.raises(WrongKeyError):
        open_object_key(OTHER_KEY, salt, commitment, Purpose.CONTENT_V1)
    with pytest.raises(WrongKeyError):
        open_object_key(KEY, salt, commitment, Purpose.MANIFEST_V1)


@pytest.mark.parametrize("bad", [b"", bytes(16), bytes(31), bytes(33)])
def test_model_keys_of_the_wrong_length_are_refused(bad: bytes):
    with pytest.raises(WrongKeyError):
        derive_object_key(bad, bytes(32), Purpose.CONTENT_V1)
    with pytest.raises(WrongKeyError):
        key_id(bad)


@pytest.mark.parametrize("salt_len", [0, 16, 31, 33])
def test_salts_of_the_wrong_length_are_refused(salt_len: int):
    with pytest.raises(ValueError):
        derive_object_key(KEY, bytes(salt_len), Purpose.CONTENT_V1)


def test_key_id_is_public_short_hex_and_differs_per_key():
    assert len(key_id(KEY)) == 32
    assert int(key_id(KEY), 16) >= 0 and key_id(KEY) == key_id(KEY).lower()
    assert key_id(KEY) != key_id(OTHER_KEY)
    assert key_id(KEY) not in KEY.hex()


# --- header -----------------------------------------------------------------------------


def header_bytes(**fields) -> bytes:
    """A header packed field by field as FORMAT.md describes it, with overrides."""
    values = {
        "magic": BLOB_MAGIC,
        "version": 1,
        "algorithm": 1,
        "log2": 12,
        "reserved": bytes(3),
        "size": 5000,
        "salt": bytes(range(32)),
        "commitment": bytes(32),
    }
    values.update(fields)
    return struct.pack(">8sHHB3sQ32s32s", *values.values())


def test_header_pack_and_parse_are_inverse_and_88_bytes():
    layout = ChunkLayout(1 << 16, 123)
    header = BlobHeader(Algorithm.AES_256_GCM, layout, bytes(32), b"c" * 32, version=1)
    packed = header.pack()
    assert len(packed) == HEADER_LEN == 88
    assert packed[:8] == b"CMLFSBLB"
    assert packed[8:16] == bytes.fromhex("0001 0002 10 000000")
    assert packed[16:24] == (123).to_bytes(8, "big")
    assert BlobHeader.parse(packed) == header
    assert header.digest == hashlib.sha256(packed).digest()
    assert BlobHeader.parse(header_bytes()).layout == ChunkLayout(C, 5000)


@pytest.mark.parametrize(
    "fields",
    [
        {"magic": b"CMLFSMAN"},
        {"magic": b"cmlfsblb"},
        {"version": 0},
        {"version": 3},
        {"version": 0x0100},
        {"algorithm": 0},
        {"algorithm": 3},
        {"algorithm": 0xFFFF},
        {"log2": 0},
        {"log2": 11},
        {"log2": 23},
        {"log2": 255},
        {"reserved": b"\0\0\1"},
        {"reserved": b"\x80\0\0"},
        {"size": MAX_PLAINTEXT_SIZE + 1},
        {"size": (1 << 64) - 1},
    ],
)
def test_header_parse_refuses_invalid_fields(fields: dict):
    with pytest.raises(FormatError):
        BlobHeader.parse(header_bytes(**fields))


@pytest.mark.parametrize("length", [0, 8, 87, 89, 176])
def test_header_parse_refuses_the_wrong_length(length: int):
    with pytest.raises(FormatError):
        BlobHeader.parse((header_bytes() * 2)[:length])


def test_header_limits_are_accepted():
    assert BlobHeader.parse(header_bytes(log2=22, size=MAX_PLAINTEXT_SIZE)).layout.n_chunks == (
        1 << 26
    )
    assert BlobHeader.parse(header_bytes(size=0)).layout.n_chunks == 0


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 3 * C + 17])
def test_round_trip(algorithm: Algorithm, size: int):
    plaintext = plaintext_of(size)
    blob = seal_blob(plaintext, algorithm)
    assert len(blob) == ChunkLayout(C, size).blob_size
    assert open_blob(blob) == plaintext
    header = BlobHeader.parse(blob[:HEADER_LEN])
    assert header.algorithm is algorithm


@settings(max_examples=40)
@given(
    algorithm=st.sampled_from(list(Algorithm)),
    log2=st.integers(12, 14),
    plaintext=st.binary(max_size=5 * 4096),
)
def test_round_trip_of_random_plaintexts(algorithm: Algorithm, log2: int, plaintext: bytes):
    assert open_blob(seal_blob(plaintext, algorithm, chunk_size=1 << log2)) == plaintext


def test_each_chunk_opens_alone():
    plaintext = plaintext_of(3 * C + 17)
    blob = seal_blob(plaintext)
    opener = BlobOpener(KEY, BlobHeader.parse(blob[:HEADER_LEN]))
    for index, record in enumerate(records_of(blob)):
        start = opener.layout.chunk_offset(index)
        assert opener.open_chunk(index, record) == plaintext[start : start + C]
    span = opener.open_span(range(1, 3), blob[HEADER_LEN + 4124 : HEADER_LEN + 3 * 4124])
    assert (span.first, span.failures) == (1, {})
    assert span.plaintext == plaintext[C : 3 * C]


def test_a_longer_buffer_holds_the_plaintext_then_zeros_short_last_chunk_included():
    """``buffer_len`` pads the span's buffer; the plaintext, up to the file's short last
    chunk, lands at its start and the padding stays zero (a reader never serves it)."""
    plaintext = plaintext_of(3 * C + 17)
    blob = seal_blob(plaintext)
    opener = BlobOpener(KEY, BlobHeader.parse(blob[:HEADER_LEN]))
    span = opener.open_span(range(2, 4), blob[HEADER_LEN + 2 * 4124 :], buffer_len=4 * C)
    assert (span.first, span.failures, len(span.plaintext)) == (2, {}, 4 * C)
    assert span.plaintext[: C + 17] == plaintext[2 * C :]
    assert span.plaintext[C + 17 :] == bytes(3 * C - 17)


def test_a_damaged_record_in_a_span_spoils_only_itself():
    plaintext = plaintext_of(3 * C + 17)
    blob = flipped(seal_blob(plaintext), 8 * (HEADER_LEN + 4124 + 50))
    opener = BlobOpener(KEY, BlobHeader.parse(blob[:HEADER_LEN]))
    span = opener.open_span(range(0, 4), blob[HEADER_LEN:])
    assert list(span.failures) == [1]
    assert span.plaintext[:C] == plaintext[:C]
    assert span.plaintext[C : 2 * C] == bytes(C)  # never the unauthenticated plaintext
    assert span.plaintext[2 * C :] == plaintext[2 * C :]


def test_every_blob_gets_a_fresh_salt_and_nonces():
    a, b = seal_blob(b"same"), seal_blob(b"same")
    assert a[24:56] != b[24:56]
    assert a[HEADER_LEN : HEADER_LEN + 12] != b[HEADER_LEN : HEADER_LEN + 12]


def test_sealer_refuses_a_chunk_of_the_wrong_length():
    sealer = BlobSealer(KEY, ChunkLayout(C, C + 1), version=1)
    with pytest.raises(ValueError):
        sealer.seal_chunk(0, bytes(C - 1))
    with pytest.raises(ValueError):
        sealer.seal_chunk(1, bytes(2))
    with pytest.raises(IndexError):
        sealer.seal_chunk(2, b"")


# --- tampering --------------------------------------------------------------------------


def flipped(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_single_bit_flip_in_the_header_is_rejected(algorithm: Algorithm):
    blob = seal_blob(plaintext_of(C + 5), algorithm)
    for bit in range(HEADER_LEN * 8):
        with pytest.raises(REJECTED):
            open_blob(flipped(blob, bit))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_single_bit_flip_in_any_record_is_rejected(algorithm: Algorithm):
    blob = seal_blob(plaintext_of(C + 5), algorithm)
    opener = BlobOpener(KEY, BlobHeader.parse(blob[:HEADER_LEN]))
    records = bytearray(blob[HEADER_LEN:])
    assert len(records) == 4124 + 33
    for bit in range(len(records) * 8):
        records[bit // 8] ^= 1 << (bit % 8)
        damaged = 0 if bit // 8 < 4124 else 1
        assert list(opener.open_span(range(0, 2), records).failures) == [damaged]
        records[bit // 8] ^= 1 << (bit % 8)
    span = opener.open_span(range(0, 2), records)
    assert (span.plaintext, span.failures) == (plaintext_of(C + 5), {})


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_records_swapped_duplicated_reordered_or_dropped_are_rejected(algorithm: Algorithm):
    blob = seal_blob(plaintext_of(3 * C), algorithm)
    header, (r0, r1, r2) = blob[:HEADER_LEN], records_of(blob)
    assert open_blob(header + r0 + r1 + r2) == plaintext_of(3 * C)
    for records in [
        (r1, r0, r2),  # swapped
        (r2, r1, r0),  # reordered (the last record moved first)
        (r0, r0, r2),  # duplicated
        (r0, r1, r1),  # the last chunk replaced by a middle one
        (r0, r1),  # the last record dropped
        (r1, r2),  # the first record dropped
        (r0, r1, r2, r2),  # extended
        (r0, r1, r2, b"\0"),
    ]:
        with pytest.raises(REJECTED):
            open_blob(header + b"".join(records))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_truncation_at_any_length_is_rejected(algorithm: Algorithm):
    blob = seal_blob(plaintext_of(2 * C + 3), algorithm)
    for length in [0, 1, 87, 88, 89, 88 + 12, 88 + 4124, 88 + 4124 + 1, len(blob) - 1]:
        with pytest.raises(REJECTED):
            open_blob(blob[:length])


def test_a_record_from_another_blob_is_rejected_even_at_the_same_index():
    a, b = seal_blob(plaintext_of(2 * C)), seal_blob(plaintext_of(2 * C))
    with pytest.raises(IntegrityError):
        open_blob(a[:HEADER_LEN] + records_of(b)[0] + records_of(a)[1])
    with pytest.raises(IntegrityError):
        open_blob(b[:HEADER_LEN] + records_of(a)[0] + records_of(b)[1])


def test_header_of_another_blob_with_the_same_layout_is_rejected():
    a, b = seal_blob(plaintext_of(C + 1)), seal_blob(plaintext_of(C + 1))
    with pytest.raises(IntegrityError):
        open_blob(b[:HEADER_LEN] + a[HEADER_LEN:])


def test_the_last_chunk_flag_is_authenticated():
    """A full record sealed as "not last" does not open as the last one, and vice versa."""
    layout = ChunkLayout(C, 2 * C)
    sealer = BlobSealer(KEY, layout, salt=bytes(32), version=1)
    aead_key, _ = derive_object_key(KEY, bytes(32), Purpose.CONTENT_V1)
    cipher = RecordCipher(Algorithm.AES_256_GCM_SIV, aead_key)
    digest = sealer.header.digest
    first = sealer.seal_chunk(0, bytes(C))
    last = sealer.seal_chunk(1, bytes(C))
    assert cipher.open(first, chunk_associated_data(digest, 0, False)) == bytes(C)
    with pytest.raises(IntegrityError):
        cipher.open(first, chunk_associated_data(digest, 0, True))
    with pytest.raises(IntegrityError):
        cipher.open(last, chunk_associated_data(digest, 1, False))


def test_associated_data_layout():
    digest = bytes(range(32))
    ad = chunk_associated_data(digest, 0x0102, True)
    assert ad == digest + bytes.fromhex("0000000000000102") + b"\x01"
    assert chunk_associated_data(digest, 0, False)[-1:] == b"\x00"
    assert len(ad) == 41


def test_open_chunk_refuses_a_record_of_the_wrong_length():
    blob = seal_blob(plaintext_of(C + 5))
    opener = BlobOpener(KEY, BlobHeader.parse(blob[:HEADER_LEN]))
    r0, r1 = records_of(blob)
    with pytest.raises(IntegrityError):
        opener.open_chunk(0, r0[:-1])
    with pytest.raises(IntegrityError):
        opener.open_chunk(1, r1 + b"\0")
    with pytest.raises(IntegrityError):
        opener.open_chunk(1, r0)


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize("size", [0, C + 5])
def test_wrong_key_is_reported_before_any_record_is_opened(algorithm: Algorithm, size: int):
    blob = seal_blob(plaintext_of(size), algorithm)
    with pytest.raises(WrongKeyError):
        open_blob(blob, OTHER_KEY)
    with pytest.raises(WrongKeyError):
        BlobOpener(OTHER_KEY, BlobHeader.parse(blob[:HEADER_LEN]))
