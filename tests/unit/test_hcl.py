"""HCL report parsing and the evidence's encodings: hostile input refused with a reason.

Layout from azure-cvm-tooling az-cvm-vtpm/src/hcl/mod.rs; the reports are made by the
paravisor stand-in's builder (tests/azure_cvm/reports.py).
"""

import hashlib
import json
import logging
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters.azure_vtpm import checked_report
from cmlfs.keys.attesters.hcl import (
    IGVM_OFFSET,
    ak_public_key,
    b64url_any,
    parse_hcl_report,
    user_data,
)
from cmlfs.keys.base import KeySettings
from cmlfs.keys.uri import key_source_from_uri
from tests.azure_cvm import reports

DIGEST = hashlib.sha384(b"d").digest()


def modulus() -> bytes:
    return rsa.generate_private_key(65537, 2048).public_key().public_numbers().n.to_bytes(256)


def td_hcl(digest: bytes = DIGEST, var: bytes | None = None) -> bytes:
    var = var if var is not None else reports.var_data(modulus(), digest)
    return reports.hcl_report("tdx", reports.td_report(hashlib.sha256(var).digest()), var)


def test_a_good_report_parses_and_checks():
    raw = td_hcl()
    report = checked_report(raw, "tdx", DIGEST)
    assert report.report_type == "tdx" and len(report.hw_report) == 1024
    assert user_data(report, KeySourceError) == DIGEST + bytes(16)
    assert ak_public_key(report, KeySourceError).key_size == 2048


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: r[:0x4D0], "shorter than its fixed part"),
        (lambda r: b"HCLB" + r[4:], "not an HCL report"),
        (lambda r: r[: IGVM_OFFSET + 8] + struct.pack("<I", 3) + r[IGVM_OFFSET + 12 :], "neither"),
        (lambda r: r[: IGVM_OFFSET + 12] + struct.pack("<I", 2) + r[IGVM_OFFSET + 16 :], "SHA-256"),
        (lambda r: r[:-1], "runs past the end"),
        (lambda r: r + bytes(70000), "larger than"),
    ],
)
def test_malformed_reports_are_refused(mutate, reason):
    with pytest.raises(KeySourceError, match=reason):
        parse_hcl_report(mutate(td_hcl()), KeySourceError)


def test_reports_that_do_not_serve_this_request_are_refused():
    with pytest.raises(KeySourceError, match="is a TDX report, not SNP"):
        checked_report(td_hcl(), "snp", DIGEST)
    with pytest.raises(KeySourceError, match="stale report"):
        checked_report(td_hcl(hashlib.sha384(b"old").digest()), "tdx", DIGEST)
    raw = bytearray(td_hcl())
    raw[0x20 + 128] ^= 1  # the TD report's report_data
    with pytest.raises(KeySourceError, match="does not bind its variable data"):
        checked_report(bytes(raw), "tdx", DIGEST)


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ([], 'no "keys"'),
        ([{"kid": "HCLEkPub", "kty": "RSA", "e": "AQAB", "n": "AQAB" * 86}], "no HCLAkPub"),
        ([{"kid": "HCLAkPub", "kty": "RSA", "e": "AQAC", "n": "x"}], "AQAB"),
        ([{"kid": "HCLAkPub", "kty": "RSA", "e": "AQAB", "n": "AQAB"}], "2048 to 4096"),
        ([{"kid": "HCLAkPub", "kty": "EC", "e": "AQAB"}], "RSA JWK"),
    ],
)
def test_the_ak_must_be_one_good_rsa_jwk(keys, reason):
    var = json.dumps({"keys": keys, "user-data": DIGEST.hex()}).encode()
    report = parse_hcl_report(td_hcl(var=var), KeySourceError)
    with pytest.raises(KeySourceError, match=reason):
        ak_public_key(report, KeySourceError)


def test_base64url_is_read_with_or_without_padding_and_never_standard():
    assert b64url_any("3q2-7w==", "x", ValueError) == bytes.fromhex("deadbeef")
    assert b64url_any("3q2-7w", "x", ValueError) == bytes.fromhex("deadbeef")
    for bad in ("3q2+7w==", "3q2/7w==", "3q2-7w===", "3q2-7w=", 7):
        with pytest.raises(ValueError):
            b64url_any(bad, "x", ValueError)


@pytest.mark.expect_log("event=key_file_in_tee")
def test_a_key_file_with_a_vtpm_attester_is_flagged(caplog, tmp_path):
    with caplog.at_level(logging.WARNING):
        key_source_from_uri(f"file://{tmp_path}/k", KeySettings(attester="az-tdx-vtpm"))
    assert "event=key_file_in_tee" in caplog.text
