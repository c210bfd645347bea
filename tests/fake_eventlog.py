"""Fake TDX event logs, and a replay of them the way Trustee's verifier reads them.

The layouts come from the reference sources:
- confidential-containers/guest-components attestation-agent/attester/src/utils.rs
  (``EL_HEADER``, ``trim_ccel``, ``read_eventlog``): what an attester sends;
- confidential-containers/trustee deps/eventlog/src/lib.rs (``parse_initial_entry``,
  ``parse_digest_sizes``, ``parse_eventlog_entry``): how the verifier parses it, stopping at
  the first entry that begins with eight 0xFF or eight 0x00 bytes; its TDX verifier replays
  RTMR[i] = SHA-384(RTMR[i] || digest) over the events of measurement register i+1.

A fake CCEL is a firmware log: a spec-id header, crypto-agile (TCG2) events with SHA-384
digests, then the ACPI table's slack of 0xFF bytes. A fake AAEL is what the attestation agent
keeps in /run/attestation-agent/eventlog: more TCG2 events (the RTMR3 extensions of the
runtime), no header, no end marker.
"""

import hashlib
import struct

SHA384 = 0x000C
# guest-components utils.rs EL_HEADER, byte for byte (69 bytes)
REFERENCE_EL_HEADER = bytes.fromhex(
    "0000000003000000" + "00" * 20 + "25000000" + "00" * 24 + "02000000" + "0c003000" + "1200200000"
)


def spec_id_header(algorithms: list[tuple[int, int]]) -> bytes:
    """TCG_PCR_EVENT (SHA-1 layout) carrying a TCG_EfiSpecIdEvent for ``algorithms``."""
    body = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algorithms))
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms) + b"\0"
    return struct.pack("<II20sI", 0, 3, bytes(20), len(body)) + body


def event(register: int, data: bytes, event_type: int = 0x80000001) -> bytes:
    """A crypto-agile event extending measurement register ``register`` with SHA-384(data)."""
    digest = hashlib.sha384(data).digest()
    return (
        struct.pack("<IIIH", register, event_type, 1, SHA384)
        + digest
        + (struct.pack("<I", len(data)) + data)
    )


def fake_ccel(events: list[bytes], slack: int = 4096) -> bytes:
    return spec_id_header([(SHA384, 48)]) + b"".join(events) + b"\xff" * slack


def replay(log: bytes) -> tuple[list[bytes], int]:
    """(RTMR0..3, number of events) as Trustee's parser and TDX verifier see ``log``."""
    index = 4
    (event_type,) = struct.unpack_from("<I", log, index)
    index += 4 + 20
    (size,) = struct.unpack_from("<I", log, index)
    index += 4
    sizes = {}
    if event_type == 3:
        (count,) = struct.unpack_from("<I", log, index + 24)
        for k in range(count):
            alg, length = struct.unpack_from("<HH", log, index + 28 + 4 * k)
            sizes[alg] = length
        index += size
    rtmrs = [bytes(48)] * 4
    seen = 0
    while True:
        head = log[index : index + 8]
        if len(head) < 8:
            raise AssertionError("the log ends without an end marker")
        if head in (b"\xff" * 8, bytes(8)):
            return rtmrs, seen
        register, _, count = struct.unpack_from("<III", log, index)
        index += 12
        for _ in range(count):
            (alg,) = struct.unpack_from("<H", log, index)
            digest = log[index + 2 : index + 2 + sizes[alg]]
            index += 2 + sizes[alg]
            if alg == SHA384 and 1 <= register <= 4:
                rtmrs[register - 1] = hashlib.sha384(rtmrs[register - 1] + digest).digest()
        (data_size,) = struct.unpack_from("<I", log, index)
        index += 4 + data_size
        seen += 1


def expected_rtmrs(events: list[tuple[int, bytes]]) -> list[bytes]:
    """RTMR values after extending each (register, data) in order: what the quote would hold."""
    rtmrs = [bytes(48)] * 4
    for register, data in events:
        rtmrs[register - 1] = hashlib.sha384(
            rtmrs[register - 1] + hashlib.sha384(data).digest()
        ).digest()
    return rtmrs
