"""Attesters: sample evidence, configfs-tsm TDX/SNP against a fake configfs tree, SNP JSON shape."""

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest

from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters import SampleAttester, SnpAttester, TdxAttester, select_attester
from cmlfs.keys.attesters.configfs_tsm import snp_cert_chain, snp_report_json
from cmlfs.keys.base import KeySettings
from tests.fake_configfs_tsm import FAKE_VCEK
from tests.fake_eventlog import REFERENCE_EL_HEADER, event, expected_rtmrs, fake_ccel, replay

DIGEST = hashlib.sha384(b"runtime data").digest()
PADDED = DIGEST.ljust(64, b"\0")
TRUSTEE_SNP_REPORT = Path(__file__).parent / "data" / "trustee-snp-attestation-report.json"

fuse = pytest.mark.fuse


def test_sample_evidence_is_base64_of_exactly_the_digest():
    evidence = SampleAttester().evidence(DIGEST)
    assert evidence == {"svn": "1", "report_data": base64.b64encode(DIGEST).decode()}
    assert len(base64.b64decode(evidence["report_data"])) == 48  # no padding to 64


FIRMWARE = [(1, b"td hob"), (2, b"kernel"), (3, b"cmdline"), (2, b"initrd")]
RUNTIME = [(4, b"INIT/sha384 " + b"0" * 96), (4, b"github.com/cc/aa pull image sha256:ab")]


def tdx_evidence(root: Path, folder: Path, ccel: bytes | None, aael: bytes | None) -> dict:
    for name, data in (("CCEL", ccel), ("eventlog", aael)):
        if data is not None:
            (folder / name).write_bytes(data)
    return TdxAttester(root, folder / "CCEL", folder / "eventlog").evidence(DIGEST)


@fuse
def test_tdx_evidence_carries_the_quote_with_our_report_data(fake_tsm, tmp_path):
    root = fake_tsm("tdx_guest")
    evidence = tdx_evidence(root, tmp_path, fake_ccel([event(*e) for e in FIRMWARE]), None)
    assert set(evidence) == {"cc_eventlog", "quote"}
    quote = base64.b64decode(evidence["quote"], validate=True)
    assert struct.unpack_from("<H", quote)[0] == 4
    assert quote[568 : 568 + 64] == PADDED
    assert list(root.iterdir()) == []  # the report entry was removed


@fuse
def test_tdx_event_log_is_the_trimmed_ccel_then_the_agents_log_then_the_end_marker(
    fake_tsm, tmp_path
):
    """What Trustee's verifier replays holds every extension: firmware's and the runtime's."""
    firmware = b"".join(event(*e) for e in FIRMWARE)
    runtime = b"".join(event(*e) for e in RUNTIME)
    ccel = fake_ccel([firmware], slack=8192)  # the ACPI table's 0xFF slack after the events
    evidence = tdx_evidence(fake_tsm("tdx_guest"), tmp_path, ccel, runtime)
    log = base64.b64decode(evidence["cc_eventlog"], validate=True)
    assert log == ccel[: len(ccel) - 8192] + runtime + b"\xff" * 8
    rtmrs, count = replay(log)
    assert count == len(FIRMWARE) + len(RUNTIME)
    assert rtmrs == expected_rtmrs(FIRMWARE + RUNTIME)  # RTMR3 included: the quote's values


@fuse
def test_tdx_agents_log_alone_gets_the_reference_header(fake_tsm, tmp_path):
    runtime = b"".join(event(*e) for e in RUNTIME)
    evidence = tdx_evidence(fake_tsm("tdx_guest"), tmp_path, None, runtime)
    log = base64.b64decode(evidence["cc_eventlog"], validate=True)
    assert log == REFERENCE_EL_HEADER + runtime + b"\xff" * 8
    assert replay(log) == (expected_rtmrs(RUNTIME), len(RUNTIME))


@fuse
def test_tdx_evidence_without_eventlog_sends_null(fake_tsm, tmp_path):
    evidence = tdx_evidence(fake_tsm("tdx_guest"), tmp_path, None, None)
    assert evidence["cc_eventlog"] is None


@fuse
@pytest.mark.parametrize(
    ("ccel", "message"),
    [
        (fake_ccel([event(1, b"x")], slack=0), "no end marker"),
        (fake_ccel([event(1, b"x")], slack=0)[:-10], "ends inside an event"),
        (fake_ccel([event(1, b"x").replace(b"\x0c\x00", b"\x99\x00", 1)]), "unknown digest"),
        (b"\0\0", "ends inside an event"),
    ],
)
def test_tdx_damaged_ccel_is_refused(fake_tsm, tmp_path, ccel, message):
    with pytest.raises(KeySourceError, match=message):
        tdx_evidence(fake_tsm("tdx_guest"), tmp_path, ccel, None)


@fuse
def test_snp_report_is_asked_for_at_vmpl_0(fake_tsm):
    """privlevel is written (a second write: generation 2 is not taken for a race)."""
    evidence = SnpAttester(fake_tsm("sev_guest", False, "--vmpl", "0")).evidence(DIGEST)
    assert evidence["attestation_report"]["vmpl"] == 0


@fuse
@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--vmpl", "2"), "privlevel_floor is 2.*accepts only VMPL 0"),
        (("--vmpl", "1", "--no-privlevel"), "made at VMPL 1.*accepts only VMPL 0"),
    ],
)
def test_snp_report_above_vmpl_0_is_refused_here(fake_tsm, options, message):
    with pytest.raises(KeySourceError, match=message):
        SnpAttester(fake_tsm("sev_guest", False, *options)).evidence(DIGEST)


@fuse
def test_snp_evidence_is_the_json_trustees_verifier_reads(fake_tsm):
    evidence = SnpAttester(fake_tsm("sev_guest")).evidence(DIGEST)
    assert set(evidence) == {"attestation_report", "cert_chain"}
    report = evidence["attestation_report"]
    trustee_keys = set(json.loads(TRUSTEE_SNP_REPORT.read_text()))
    assert set(report) == trustee_keys | {"launch_mit_vector", "current_mit_vector"}
    assert bytes(report["report_data"]) == PADDED
    assert report["current_tcb"] == {
        "fmc": None,
        "bootloader": 3,
        "tee": 0,
        "snp": 20,
        "microcode": 209,
    }
    assert report["current"] == {"major": 1, "minor": 55, "build": 21}
    assert (report["cpuid_fam_id"], report["cpuid_mod_id"]) == (0x19, 0x11)
    assert report["launch_mit_vector"] is None  # version 3
    assert evidence["cert_chain"] == [{"cert_type": "VCEK", "data": list(FAKE_VCEK)}]


@fuse
def test_empty_outblob_is_a_failure(fake_tsm):
    root = fake_tsm("tdx_guest", empty_outblob=True)
    with pytest.raises(KeySourceError, match="empty outblob"):
        TdxAttester(root, Path("/nonexistent"), Path("/nonexistent")).evidence(DIGEST)
    with pytest.raises(KeySourceError, match="empty outblob"):
        SnpAttester(fake_tsm("sev_guest", empty_outblob=True)).evidence(DIGEST)


@fuse
def test_provider_must_match_the_attester(fake_tsm):
    with pytest.raises(KeySourceError, match="provider is 'sev_guest', expected 'tdx_guest'"):
        TdxAttester(fake_tsm("sev_guest"), Path("/none"), Path("/none")).evidence(DIGEST)


@fuse
@pytest.mark.parametrize(("provider", "tee"), [("tdx_guest", "tdx"), ("sev_guest", "snp")])
def test_auto_picks_the_configfs_tsm_provider(fake_tsm, provider, tee):
    settings = KeySettings(attester="auto", tsm_report_root=fake_tsm(provider))
    assert select_attester(settings).tee == tee


def test_auto_never_falls_back_to_sample(tmp_path):
    settings = KeySettings(attester="auto", tsm_report_root=tmp_path / "no-configfs")
    with pytest.raises(KeySourceError, match=r"configfs-tsm is not available.*--attester sample"):
        select_attester(settings)


def test_tdx_without_configfs_tsm_names_the_cause(tmp_path):
    attester = TdxAttester(tmp_path / "no-configfs", tmp_path / "CCEL", tmp_path / "AAEL")
    with pytest.raises(KeySourceError, match="configfs-tsm is not available at"):
        attester.evidence(DIGEST)


@pytest.mark.expect_log("event=sample_attester")
def test_sample_only_by_name():
    assert select_attester(KeySettings(attester="sample")).tee == "sample"


def _encode_legacy_report(report: dict) -> bytes:
    """Raw bytes of a Milan/Genoa report from sev's JSON (the inverse of the layout)."""
    raw = bytearray(0x4A0)

    def tcb(offset: int, value: dict) -> None:
        raw[offset : offset + 8] = bytes(
            [value["bootloader"], value["tee"], 0, 0, 0, 0, value["snp"], value["microcode"]]
        )

    def put(offset: int, values: list[int]) -> None:
        raw[offset : offset + len(values)] = bytes(values)

    struct.pack_into("<IIQ", raw, 0, report["version"], report["guest_svn"], report["policy"])
    put(0x10, report["family_id"])
    put(0x20, report["image_id"])
    struct.pack_into("<II", raw, 0x30, report["vmpl"], report["sig_algo"])
    tcb(0x38, report["current_tcb"])
    struct.pack_into("<QI", raw, 0x40, report["plat_info"], report["key_info"])
    for name, offset in [
        ("report_data", 0x50),
        ("measurement", 0x90),
        ("host_data", 0xC0),
        ("id_key_digest", 0xE0),
        ("author_key_digest", 0x110),
        ("report_id", 0x140),
        ("report_id_ma", 0x160),
        ("chip_id", 0x1A0),
    ]:
        put(offset, report[name])
    tcb(0x180, report["reported_tcb"])
    put(0x188, [report["cpuid_fam_id"], report["cpuid_mod_id"], report["cpuid_step"]])
    tcb(0x1E0, report["committed_tcb"])
    for name, offset in [("current", 0x1E8), ("committed", 0x1EC)]:
        put(offset, [report[name]["build"], report[name]["minor"], report[name]["major"]])
    tcb(0x1F0, report["launch_tcb"])
    put(0x2A0, report["signature"]["r"])
    put(0x2E8, report["signature"]["s"])
    return bytes(raw)


def test_snp_report_json_reproduces_trustees_sample_evidence():
    """Trustee's attestation-service e2e evidence.json, re-encoded raw, parses back to itself."""
    expected = json.loads(TRUSTEE_SNP_REPORT.read_text())
    parsed = snp_report_json(_encode_legacy_report(expected))
    assert parsed == {**expected, "launch_mit_vector": None, "current_mit_vector": None}


def test_snp_report_turin_layout_and_v5_mitigation_vectors():
    report = bytearray(_encode_legacy_report(json.loads(TRUSTEE_SNP_REPORT.read_text())))
    struct.pack_into("<I", report, 0, 5)
    report[0x188:0x18A] = bytes([0x1A, 0x02])
    report[0x38:0x40] = bytes([1, 2, 3, 4, 0, 0, 0, 5])
    struct.pack_into("<QQ", report, 0x1F8, 0x1234, 0x5678)
    parsed = snp_report_json(bytes(report))
    assert parsed["current_tcb"] == {"fmc": 1, "bootloader": 2, "tee": 3, "snp": 4, "microcode": 5}
    assert (parsed["launch_mit_vector"], parsed["current_mit_vector"]) == (0x1234, 0x5678)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: struct.pack_into("<I", r, 0, 2), "version 2 is not accepted"),
        (lambda r: r.__setitem__(0x188, 0x17), "unknown CPU"),
        (lambda r: r.__delitem__(slice(100, None)), "expected 1184"),
    ],
)
def test_snp_report_refusals(change, message):
    report = bytearray(_encode_legacy_report(json.loads(TRUSTEE_SNP_REPORT.read_text())))
    change(report)
    with pytest.raises(KeySourceError, match=message):
        snp_report_json(bytes(report))


def test_snp_cert_table_matches_sevs_parse_table_vector():
    """The kernel cert table test vector of the sev crate (test_parse_table_regular)."""
    table = bytes(
        [192, 180, 6, 164, 168, 3, 73, 82, 151, 67, 63, 182, 1, 76, 208, 174, 120, 0, 0, 0]
        + [25, 0, 0, 0, 74, 183, 179, 121, 187, 172, 79, 228, 160, 47, 5, 174, 243, 39, 199]
        + [130, 145, 0, 0, 0, 25, 0, 0, 0, 99, 218, 117, 141, 230, 100, 69, 100, 173, 197]
        + [244, 185, 59, 232, 172, 205, 170, 0, 0, 0, 15, 0, 0, 0, 251, 182, 237, 116, 231]
        + [62, 68, 171, 136, 147, 66, 82, 121, 45, 115, 122, 185, 0, 0, 0, 6, 0, 0, 0]
        + [0] * 24
        + [1] * 25
        + [2] * 25
        + [5] * 15
        + [7] * 6
    )
    assert snp_cert_chain(table) == [
        {"cert_type": "ARK", "data": [1] * 25},
        {"cert_type": "ASK", "data": [2] * 25},
        {"cert_type": "VCEK", "data": [5] * 15},
        {"cert_type": {"OTHER": "fbb6ed74-e73e-44ab-8893-4252792d737a"}, "data": [7] * 6},
    ]
    assert snp_cert_chain(b"") == []
    with pytest.raises(KeySourceError, match="outside auxblob"):
        snp_cert_chain(table[:100] + bytes(20))
