"""The TDX ``cc_eventlog``: the firmware's CCEL and the attestation agent's log, as Trustee replays.

Trustee's TDX verifier replays RTMR0-3 from ``cc_eventlog`` and compares them with
the quote; its parser stops at the first event that begins with eight 0xFF or
eight 0x00 bytes. The ACPI CCEL table is longer than its events (the slack is
0xFF), so sent as read it would hide anything appended after it. This assembles
the log the way guest-components' attestation agent does
(attestation-agent/attester/src/utils.rs, ``read_eventlog`` and ``trim_ccel``):

- the CCEL, cut where its events end (the first all-0xFF or all-0x00 word);
- the attestation agent's event log (AAEL, ``/run/attestation-agent/eventlog``)
  appended when present, after a fixed TCG spec-id header when there is no CCEL,
  so the runtime extensions of RTMR3 are in the log too;
- eight 0xFF bytes at the end; no log at all (None) when neither file exists.

Every input is read as hostile: bounded sizes, and a CCEL whose events run past
its end, use an unknown digest or have no end marker is refused in one line.
"""

import struct
from pathlib import Path

from cmlfs.errors import KeySourceError

MAX_EVENTLOG = 16 << 20
END_MARKER = b"\xff" * 8
EV_NO_ACTION = 3
# TCG algorithm id -> digest size, the algorithms guest-components' trim_ccel accepts
DIGEST_SIZES = {0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}
# The TCG_PCR_EVENT (SHA-1 layout, EV_NO_ACTION) guest-components puts before an AAEL when
# there is no CCEL (EL_HEADER in utils.rs): a spec-id event whose signature, platform class and
# version bytes are zero, listing SHA-384 (48 bytes) and SM3 (32 bytes). Trustee's parser
# (deps/eventlog/src/lib.rs, parse_digest_sizes) reads the algorithm list from offset 24.
_SPEC_ID_EVENT = bytes(24) + struct.pack("<IHHHHB", 2, 0x000C, 48, 0x0012, 32, 0)
SPEC_ID_HEADER = (
    struct.pack("<II20sI", 0, EV_NO_ACTION, bytes(20), len(_SPEC_ID_EVENT)) + _SPEC_ID_EVENT
)


def read_bounded(path: Path, cap: int = MAX_EVENTLOG) -> bytes | None:
    """The file's bytes, None when it does not exist; KeySourceError past ``cap`` or on errors."""
    try:
        with open(path, "rb") as file:
            data = file.read(cap + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeySourceError(f"cannot read event log {path}: {exc.strerror}") from None
    if len(data) > cap:
        raise KeySourceError(f"event log {path} is larger than {cap} bytes")
    return data


def trim_ccel(ccel: bytes) -> bytes:
    """The CCEL up to the end of its last event (without the end marker or the table's slack)."""
    index = 4  # first event: TCG_PCR_EVENT, SHA-1 layout
    event_type = _u32(ccel, index, "first event type")
    index += 4 + 20
    if event_type == EV_NO_ACTION:
        index += 4 + _u32(ccel, index, "first event size")
    while True:
        if index + 8 > len(ccel):
            raise KeySourceError("CCEL event log has no end marker (truncated or damaged)")
        if ccel[index : index + 8] in (END_MARKER, bytes(8)):
            return ccel[:index]
        index += 8  # measurement register, event type
        count = _u32(ccel, index, "digest count")
        index += 4
        for _ in range(count):  # each digest moves on by 34 bytes or more: bounded by the size
            algorithm = _u16(ccel, index, "digest algorithm")
            size = DIGEST_SIZES.get(algorithm)
            if size is None:
                raise KeySourceError(f"CCEL event uses unknown digest algorithm {algorithm:#x}")
            index += 2 + size
        index += 4 + _u32(ccel, index, "event size")


def _u32(data: bytes, offset: int, what: str) -> int:
    if offset + 4 > len(data):
        raise KeySourceError(f"CCEL event log ends inside an event ({what})")
    return struct.unpack_from("<I", data, offset)[0]


def _u16(data: bytes, offset: int, what: str) -> int:
    if offset + 2 > len(data):
        raise KeySourceError(f"CCEL event log ends inside an event ({what})")
    return struct.unpack_from("<H", data, offset)[0]


def cc_eventlog(ccel_path: Path, aael_path: Path) -> bytes | None:
    """The event log to send as ``cc_eventlog``, or None when this machine keeps none."""
    ccel = read_bounded(ccel_path)
    aael = read_bounded(aael_path)
    log = trim_ccel(ccel) if ccel else b""
    if aael is not None:
        log = (log or SPEC_ID_HEADER) + aael
    if not log:
        return None
    if len(log) + len(END_MARKER) > MAX_EVENTLOG:
        raise KeySourceError(f"the TDX event log is larger than {MAX_EVENTLOG} bytes")
    return log + END_MARKER
