"""RecordCipher against published test vectors, and its refusals (cmlfs.format.aead)."""

import os

import pytest

from cmlfs.errors import FormatError, IntegrityError
from cmlfs.format.aead import Algorithm, Backend, RecordCipher, default_backend, tink_available

# RFC 8452, Appendix C.2 (AEAD_AES_256_GCM_SIV): key, nonce, AAD, plaintext, result (ct || tag).
RFC8452_C2 = [
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "",
        "",
        "07f5f4169bbf55a8400cd47ea6fd400f",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "030000000000000000000000",
        "01",
        "0200000000000000",
        "1de22967237a813291213f267e3b452f02d01ae33e4ec854",
    ),
    (
        "bae8e37fc83441b16034566b7a806c46bb91c3c5aedb64a6c590bc84d1a5e269",
        "e4b47801afc0577e34699b9e",
        "4fbdc66f14",
        "671fdd",
        "0eaccb93da9bb81333aee0c785b240d319719d",
    ),
    (
        "3c535de192eaed3822a2fbbe2ca9dfc88255e14a661b8aa82cc54236093bbc23",
        "688089e55540db1872504e1c",
        "734320ccc9d9bbbb19cb81b2af4ecbc3e72834321f7aa0f70b7282b4f33df23f167541",
        "ced532ce4159b035277d4dfbb7db62968b13cd4eec",
        "626660c26ea6612fb17ad91e8e767639edd6c9faee9d6c7029675b89eaf4ba1ded1a286594",
    ),
]

# The GCM specification (McGrew & Viega), Appendix B, Test Case 16 (AES-256, with AAD).
GCM_SPEC_CASE_16 = (
    "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
    "cafebabefacedbaddecaf888",
    "feedfacedeadbeeffeedfacedeadbeefabaddad2",
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
    "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
    "76fc6ece0f4e1768cddf8853bb2d551b",
)

# Every backend that serves an algorithm must give the published answers.
BACKENDS = {
    Algorithm.AES_256_GCM_SIV: [Backend.CRYPTOGRAPHY, Backend.TINK],
    Algorithm.AES_256_GCM: [Backend.CRYPTOGRAPHY],
}
KNOWN_ANSWERS = [(Algorithm.AES_256_GCM_SIV, v) for v in RFC8452_C2] + [
    (Algorithm.AES_256_GCM, GCM_SPEC_CASE_16)
]
KNOWN_ANSWERS_PER_BACKEND = [
    (algorithm, backend, vector)
    for algorithm, vector in KNOWN_ANSWERS
    for backend in BACKENDS[algorithm]
]


def test_the_fast_backend_is_installed_and_chosen_by_default():
    assert tink_available()
    assert default_backend(Algorithm.AES_256_GCM_SIV) is Backend.TINK
    assert default_backend(Algorithm.AES_256_GCM) is Backend.CRYPTOGRAPHY


@pytest.mark.parametrize(("algorithm", "backend", "vector"), KNOWN_ANSWERS_PER_BACKEND)
def test_known_answer_seal_and_open(
    algorithm: Algorithm, backend: Backend, vector: tuple[str, ...]
):
    key, nonce, aad, plaintext, result = map(bytes.fromhex, vector)
    cipher = RecordCipher(algorithm, key, backend)
    record = cipher.seal(plaintext, aad, nonce)
    assert record == nonce + result
    assert cipher.open(record, aad) == plaintext
    assert cipher.open(memoryview(bytearray(record)), aad) == plaintext


@pytest.mark.parametrize(("algorithm", "backend", "vector"), KNOWN_ANSWERS_PER_BACKEND)
def test_known_answer_refuses_any_other_associated_data(algorithm, backend, vector):
    key, nonce, aad, _, result = map(bytes.fromhex, vector)
    cipher = RecordCipher(algorithm, key, backend)
    for other in (aad + b"\0", aad[:-1], b"x" + aad):
        if other != aad:
            with pytest.raises(IntegrityError):
                cipher.open(nonce + result, other)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_record_shorter_than_nonce_and_tag_is_refused(algorithm: Algorithm):
    cipher = RecordCipher(algorithm, bytes(32))
    record = cipher.seal(b"", b"", bytes(12))
    assert len(record) == 28
    assert cipher.open(record, b"") == b""
    for length in (0, 12, 27):
        with pytest.raises(IntegrityError):
            cipher.open(record[:length], b"")


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_a_record_opens_only_with_its_own_algorithm_and_key(algorithm: Algorithm):
    record = RecordCipher(algorithm, bytes(32)).seal(b"weights", b"ad", bytes(12))
    other = next(a for a in Algorithm if a != algorithm)
    with pytest.raises(IntegrityError):
        RecordCipher(other, bytes(32)).open(record, b"ad")
    with pytest.raises(IntegrityError):
        RecordCipher(algorithm, b"\1" + bytes(31)).open(record, b"ad")


@pytest.mark.parametrize("nonce_len", [0, 11, 13, 16])
def test_seal_refuses_a_nonce_of_the_wrong_length(nonce_len: int):
    with pytest.raises(ValueError):
        RecordCipher(Algorithm.AES_256_GCM_SIV, bytes(32)).seal(b"x", b"", bytes(nonce_len))


def test_algorithm_ids_and_labels_are_the_stored_values():
    assert int(Algorithm.AES_256_GCM_SIV) == 1
    assert int(Algorithm.AES_256_GCM) == 2
    assert Algorithm.AES_256_GCM_SIV.label == "aes-256-gcm-siv"
    assert Algorithm.AES_256_GCM.label == "aes-256-gcm"
    for algorithm in Algorithm:
        assert Algorithm.from_label(algorithm.label) is algorithm
        assert Algorithm.from_id(int(algorithm)) is algorithm


@pytest.mark.parametrize("value", [0, 3, 0xFFFF])
def test_unknown_algorithm_id_is_a_format_error(value: int):
    with pytest.raises(FormatError):
        Algorithm.from_id(value)


def test_unknown_algorithm_label_is_refused():
    with pytest.raises(ValueError):
        Algorithm.from_label("chacha20-poly1305")


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 65535, 65536, 1 << 20])
def test_backends_interoperate_both_ways(size: int):
    key, nonce, ad = os.urandom(32), os.urandom(12), os.urandom(41)
    plaintext = os.urandom(size)
    reference = RecordCipher(Algorithm.AES_256_GCM_SIV, key, Backend.CRYPTOGRAPHY)
    fast = RecordCipher(Algorithm.AES_256_GCM_SIV, key, Backend.TINK)
    record = reference.seal(plaintext, ad, nonce)
    assert fast.seal(plaintext, ad, nonce) == record
    assert fast.open(record, ad) == reference.open(record, ad) == plaintext
    damaged = bytearray(record)
    damaged[len(damaged) // 2] ^= 0x10
    for cipher in (reference, fast):
        with pytest.raises(IntegrityError):
            cipher.open(bytes(damaged), ad)


def test_tink_backend_refuses_algorithms_it_does_not_serve():
    with pytest.raises(ValueError):
        RecordCipher(Algorithm.AES_256_GCM, bytes(32), Backend.TINK)


@pytest.mark.parametrize("backend", [Backend.CRYPTOGRAPHY, Backend.TINK])
def test_open_into_writes_the_plaintext_in_place_and_zeroes_it_on_failure(backend):
    key, nonce, ad = os.urandom(32), os.urandom(12), b"ad"
    cipher = RecordCipher(Algorithm.AES_256_GCM_SIV, key, backend)
    plaintext = os.urandom(5000)
    record = cipher.seal(plaintext, ad, nonce)
    buffer = bytearray(b"\xaa" * 6000)
    cipher.open_into(record, ad, memoryview(buffer)[500:5500])
    assert buffer[500:5500] == plaintext and buffer[:500] == b"\xaa" * 500
    damaged = bytearray(record)
    damaged[100] ^= 1
    with pytest.raises(IntegrityError):
        cipher.open_into(bytes(damaged), ad, memoryview(buffer)[500:5500])
    assert buffer[500:5500] == bytes(5000)  # unauthenticated plaintext never stays behind
    with pytest.raises(IntegrityError):
        cipher.open_into(record, ad, memoryview(buffer)[:10])
