"""TDX and SEV-SNP evidence through Linux configfs-tsm (``/sys/kernel/config/tsm/report``).

A report request: ``mkdir`` a fresh entry, check its ``provider`` (``tdx_guest``
or ``sev_guest``), write the 64-byte report data to ``inblob``, read
``outblob`` (TDX quote, or SNP attestation report) and ``auxblob`` (SNP
certificates), then check ``generation`` (every write bumps it: a value above
our own writes means another writer raced us), and ``rmdir`` the entry. An
empty outblob is a failure. For SNP, where the kernel offers ``privlevel``, the
report is asked for at VMPL 0 (Trustee's verifier accepts no other); a guest
whose ``privlevel_floor`` is above 0, or a report from another VMPL, is refused
here with a clear line rather than by the broker with an opaque one.

Evidence is built in the JSON shapes Trustee's verifiers deserialize:

- ``tdx``: ``{"cc_eventlog": base64(event log) | null, "quote": base64(quote)}``, the
  event log assembled as guest-components does (``cmlfs.keys.attesters.eventlog``).
- ``snp``: ``{"attestation_report": {...}, "cert_chain": [...] | null}`` where the
  report object is what serde makes of the ``sev`` crate's ``AttestationReport``
  (integers, byte arrays as integer lists, TCB objects decoded per CPU
  generation), converted here from the raw 1184-byte report in ``outblob``, and
  the certificate chain is parsed from the GUID table in ``auxblob``.

The root and the CCEL path come from KeySettings, so tests run against a fake tree.
"""

import base64
import os
import secrets
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters.eventlog import cc_eventlog

REPORT_DATA_LEN = 64
MAX_BLOB = 1 << 20
SNP_VMPL = 0  # the only VMPL Trustee's SNP verifier accepts (deps/verifier/src/snp/mod.rs)
PROVIDERS = {"tdx_guest": "tdx", "sev_guest": "snp"}
_NO_TEE_HINT = (
    "(needs Linux >= 6.7 inside a TDX or SEV-SNP guest; on a machine without a TEE "
    "ask for --attester sample, which proves nothing)"
)


@contextmanager
def _report_entry(root: Path) -> Iterator[Path]:
    """A new configfs-tsm report entry, removed afterwards."""
    entry = root / f"cmlfs-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.mkdir(entry, 0o700)
    except FileNotFoundError:
        raise KeySourceError(f"configfs-tsm is not available at {root} {_NO_TEE_HINT}") from None
    except OSError as exc:
        raise KeySourceError(
            f"cannot create a configfs-tsm report in {root}: {exc.strerror}"
        ) from None
    try:
        yield entry
    finally:
        with suppress(OSError):
            os.rmdir(entry)


def _read(path: Path, cap: int = MAX_BLOB) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise KeySourceError(f"configfs-tsm: cannot read {path.name}: {exc.strerror}") from None
    data = bytearray()
    try:
        while piece := os.read(fd, 65536):
            data += piece
            if len(data) > cap:
                raise KeySourceError(f"configfs-tsm: {path.name} is larger than {cap} bytes")
    except OSError as exc:
        raise KeySourceError(f"configfs-tsm: reading {path.name} failed: {exc.strerror}") from None
    finally:
        os.close(fd)
    return bytes(data)


def _write(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if os.write(fd, data) != len(data):
                raise KeySourceError(f"configfs-tsm: short write to {path.name}")
        finally:
            os.close(fd)
    except OSError as exc:
        raise KeySourceError(f"configfs-tsm: writing {path.name} failed: {exc.strerror}") from None


def _provider(entry: Path) -> str:
    return _read(entry / "provider", 256).decode("ascii", "replace").strip()


def detect_tee(root: Path) -> str:
    """``tdx`` or ``snp`` from the configfs-tsm provider; KeySourceError when there is none."""
    with _report_entry(root) as entry:
        provider = _provider(entry)
    if provider not in PROVIDERS:
        raise KeySourceError(f"configfs-tsm provider {provider!r} is not supported (tdx or snp)")
    return PROVIDERS[provider]


def tsm_report(
    root: Path, report_data: bytes, provider: str, privlevel: int | None = None
) -> tuple[bytes, bytes]:
    """(outblob, auxblob) of one report over ``report_data`` zero-padded to 64 bytes.

    ``privlevel``: ask for the report at this privilege level (SNP VMPL) where the kernel
    offers the attribute; a guest whose floor is above it is refused.
    """
    if len(report_data) > REPORT_DATA_LEN:
        raise KeySourceError(f"report data longer than {REPORT_DATA_LEN} bytes")
    with _report_entry(root) as entry:
        found = _provider(entry)
        if found != provider:
            raise KeySourceError(f"configfs-tsm provider is {found!r}, expected {provider!r}")
        writes = 1
        if privlevel is not None and (entry / "privlevel").exists():
            _check_privlevel_floor(entry, privlevel)
            _write(entry / "privlevel", str(privlevel).encode("ascii"))
            writes += 1
        _write(entry / "inblob", report_data.ljust(REPORT_DATA_LEN, b"\0"))
        outblob = _read(entry / "outblob")
        if not outblob:
            raise KeySourceError(f"configfs-tsm ({provider}) returned an empty outblob: no report")
        auxblob = _read(entry / "auxblob") if (entry / "auxblob").exists() else b""
        generation = _read(entry / "generation", 64).decode("ascii", "replace").strip()
        if not generation.isdigit():
            raise KeySourceError(f"configfs-tsm generation {generation!r} is not a number")
        if int(generation) > writes:
            raise KeySourceError("configfs-tsm report raced with another writer; retry")
    return outblob, auxblob


def _check_privlevel_floor(entry: Path, privlevel: int) -> None:
    if not (entry / "privlevel_floor").exists():
        return
    floor = _read(entry / "privlevel_floor", 64).decode("ascii", "replace").strip()
    if not floor.isdigit():
        raise KeySourceError(f"configfs-tsm privlevel_floor {floor!r} is not a number")
    if int(floor) > privlevel:
        raise KeySourceError(
            f"this guest cannot ask for an SNP report at VMPL {privlevel} (configfs-tsm "
            f"privlevel_floor is {floor}: it runs above VMPL {privlevel}, e.g. under an SVSM); "
            "Trustee's SNP verifier accepts only VMPL 0 reports"
        )


class TdxAttester:
    tee = "tdx"

    def __init__(self, root: Path, ccel_path: Path, aael_path: Path) -> None:
        self.root = root
        self.ccel_path = ccel_path
        self.aael_path = aael_path

    def evidence(self, report_data: bytes) -> dict:
        quote, _ = tsm_report(self.root, report_data, "tdx_guest")
        check_tdx_quote(quote, report_data.ljust(REPORT_DATA_LEN, b"\0"))
        eventlog = cc_eventlog(self.ccel_path, self.aael_path)
        return {
            "cc_eventlog": base64.b64encode(eventlog).decode("ascii") if eventlog else None,
            "quote": base64.b64encode(quote).decode("ascii"),
        }


# TD quote: 48-byte header; v4 body follows it, v5 adds a 6-byte body descriptor.
# REPORTDATA is the last 64 bytes of the 584-byte TD report body (offset 520).
_TDX_REPORT_DATA_OFFSET = {4: 48 + 520, 5: 48 + 6 + 520}


def check_tdx_quote(quote: bytes, report_data: bytes) -> None:
    """Refuse a quote that is not v4/v5 or does not carry our report data."""
    if len(quote) < 48:
        raise KeySourceError("TDX quote is shorter than its header")
    version = struct.unpack_from("<H", quote)[0]
    offset = _TDX_REPORT_DATA_OFFSET.get(version)
    if offset is None:
        raise KeySourceError(f"TDX quote version {version} is not supported (4 or 5)")
    if quote[offset : offset + REPORT_DATA_LEN] != report_data:
        raise KeySourceError("TDX quote does not carry the requested report data")


class SnpAttester:
    tee = "snp"

    def __init__(self, root: Path) -> None:
        self.root = root

    def evidence(self, report_data: bytes) -> dict:
        report, certs = tsm_report(self.root, report_data, "sev_guest", privlevel=SNP_VMPL)
        parsed = snp_report_json(report)
        if bytes(parsed["report_data"]) != report_data.ljust(REPORT_DATA_LEN, b"\0"):
            raise KeySourceError("SNP report does not carry the requested report data")
        if parsed["vmpl"] != SNP_VMPL:
            raise KeySourceError(
                f"the SNP report was made at VMPL {parsed['vmpl']}; Trustee's SNP verifier "
                "accepts only VMPL 0 (it would refuse with 'VMPL Check Failed')"
            )
        return {"attestation_report": parsed, "cert_chain": snp_cert_chain(certs) or None}


SNP_REPORT_LEN = 0x4A0  # 1184
SNP_REPORT_VERSIONS = range(3, 6)  # what Trustee's snp verifier accepts


def snp_report_json(report: bytes) -> dict:
    """The serde JSON of sev's ``AttestationReport`` for a raw SNP report (versions 3 to 5)."""
    if len(report) < SNP_REPORT_LEN:
        raise KeySourceError(f"SNP report is {len(report)} bytes, expected {SNP_REPORT_LEN}")
    version = _u32(report, 0x00)
    if version not in SNP_REPORT_VERSIONS:
        raise KeySourceError(
            f"SNP report version {version} is not accepted by Trustee's verifier (3 to 5)"
        )
    family, model, stepping = report[0x188], report[0x189], report[0x18A]
    turin = _snp_generation_is_turin(family, model)

    def tcb(offset: int) -> dict:
        raw = report[offset : offset + 8]
        if turin:
            return {
                "fmc": raw[0],
                "bootloader": raw[1],
                "tee": raw[2],
                "snp": raw[3],
                "microcode": raw[7],
            }
        return {
            "fmc": None,
            "bootloader": raw[0],
            "tee": raw[1],
            "snp": raw[6],
            "microcode": raw[7],
        }

    def version_at(offset: int) -> dict:  # stored build, minor, major
        return {"major": report[offset + 2], "minor": report[offset + 1], "build": report[offset]}

    def array(offset: int, length: int) -> list[int]:
        return list(report[offset : offset + length])

    v5 = version >= 5
    return {
        "version": version,
        "guest_svn": _u32(report, 0x04),
        "policy": _u64(report, 0x08),
        "family_id": array(0x10, 16),
        "image_id": array(0x20, 16),
        "vmpl": _u32(report, 0x30),
        "sig_algo": _u32(report, 0x34),
        "current_tcb": tcb(0x38),
        "plat_info": _u64(report, 0x40),
        "key_info": _u32(report, 0x48),
        "report_data": array(0x50, 64),
        "measurement": array(0x90, 48),
        "host_data": array(0xC0, 32),
        "id_key_digest": array(0xE0, 48),
        "author_key_digest": array(0x110, 48),
        "report_id": array(0x140, 32),
        "report_id_ma": array(0x160, 32),
        "reported_tcb": tcb(0x180),
        "cpuid_fam_id": family,
        "cpuid_mod_id": model,
        "cpuid_step": stepping,
        "chip_id": array(0x1A0, 64),
        "committed_tcb": tcb(0x1E0),
        "current": version_at(0x1E8),
        "committed": version_at(0x1EC),
        "launch_tcb": tcb(0x1F0),
        "launch_mit_vector": _u64(report, 0x1F8) if v5 else None,
        "current_mit_vector": _u64(report, 0x200) if v5 else None,
        "signature": {"r": array(0x2A0, 72), "s": array(0x2E8, 72)},
    }


def _snp_generation_is_turin(family: int, model: int) -> bool:
    """Milan/Genoa (legacy TCB layout) or Turin, as sev's ``Generation::identify_cpu``."""
    if family == 0x19 and (model <= 0x0F or 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
        return False
    if family == 0x1A and model <= 0x11:
        return True
    raise KeySourceError(f"SNP report from an unknown CPU (family {family:#x}, model {model:#x})")


_CERT_TYPES = {
    "c0b406a4-a803-4952-9743-3fb6014cd0ae": "ARK",
    "4ab7b379-bbac-4fe4-a02f-05aef327c782": "ASK",
    "63da758d-e664-4564-adc5-f4b93be8accd": "VCEK",
    "a8074bc2-a25a-483e-aae6-39c045a0b8a1": "VLEK",
    "92f81bc3-5811-4d3d-97ff-d19f88dc67ea": "CRL",
}
_CERT_ENTRY = struct.Struct("<16sII")


def snp_cert_chain(table: bytes) -> list[dict]:
    """Entries of the SNP certificate GUID table (``auxblob``) as sev's ``CertTableEntry`` JSON."""
    entries = []
    for start in range(0, len(table) - _CERT_ENTRY.size + 1, _CERT_ENTRY.size):
        guid, offset, length = _CERT_ENTRY.unpack_from(table, start)
        if guid == bytes(16):
            return entries
        if offset + length > len(table):
            raise KeySourceError("SNP certificate table points outside auxblob")
        name = str(uuid.UUID(bytes=guid))
        cert_type: object = _CERT_TYPES.get(name, {"OTHER": name})
        entries.append({"cert_type": cert_type, "data": list(table[offset : offset + length])})
    if table:
        raise KeySourceError("SNP certificate table in auxblob has no terminating entry")
    return entries


def _u32(data: bytes, offset: int) -> int:
    return struct.unpack_from("<I", data, offset)[0]


def _u64(data: bytes, offset: int) -> int:
    return struct.unpack_from("<Q", data, offset)[0]
