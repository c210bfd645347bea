"""The Azure vTPM through tpm2-pytss (tpm2-tss's ESAPI): report request, HCL report, quote.

The calls are those of azure-cvm-tooling ``az-cvm-vtpm/src/vtpm/mod.rs``:

- request: (re)define NV index ``0x01400002`` at exactly the report data's
  length (owner read/write, SHA-256 name) and write the data; the paravisor
  regenerates the HCL report, which is read after a wait (3 s on Azure);
- HCL report: NV index ``0x01400001`` read whole, in pieces of the TPM's
  NV buffer size, with owner authorization (empty password);
- quote: TPM2_Quote with the AK at ``0x81000003`` over SHA-256 PCRs 0-23,
  the report data as qualifying data, the null scheme (the key's own,
  RSASSA-SHA256); then the PCR values read separately. The quote's PCR digest
  is checked against them, so a PCR extended in between fails here.

The TPM is named by a TCTI string (``device:/dev/tpmrm0`` by default; tests use
``swtpm:`` or ``cmd:``). Every failure is a KeySourceError naming the step.
tpm2-tss writes its own error lines to stderr unless ``TSS2_LOG`` says
otherwise; cmlfs silences it (one line per failure is cmlfs's to print).
"""

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters.hcl import (
    AK_HANDLE,
    HCL_REPORT_NV_INDEX,
    MAX_HCL_REPORT,
    QUOTE_PCRS,
    REPORT_REQUEST_NV_INDEX,
)

MAX_REPORT_DATA = 64  # TPM2B_DATA for a SHA-512 TPM; the paravisor reads up to 64 bytes


@dataclass(frozen=True)
class TpmQuote:
    message: bytes  # TPMS_ATTEST as the TPM marshalled it
    signature: bytes  # the raw RSASSA signature
    pcrs: list[bytes]  # SHA-256 PCRs 0-23, in order


def _tss():
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    try:
        import tpm2_pytss
    except ImportError as exc:
        raise KeySourceError(
            f"the vTPM attesters need tpm2-pytss over tpm2-tss (pip install 'cmlfs[vtpm]'): {exc}"
        ) from None
    return tpm2_pytss


@contextmanager
def _esapi(tcti: str, step: str) -> Iterator[object]:
    """An ESAPI context on ``tcti``; TSS errors inside become one line naming ``step``."""
    tss = _tss()
    try:
        ctx = tss.ESAPI(tcti)
    except (tss.TSS2_Exception, RuntimeError, ValueError) as exc:
        raise KeySourceError(
            f"no TPM at {tcti} ({exc}{_device_hint(tcti)}; --tpm-tcti names the vTPM)"
        ) from None
    try:
        yield ctx
    except tss.TSS2_Exception as exc:
        raise KeySourceError(f"vTPM {step} failed: {exc}") from None
    finally:
        ctx.close()


def _device_hint(tcti: str) -> str:
    """Why a ``device:`` TCTI may have failed, which tpm2-tss reports only as an IO failure."""
    if not tcti.startswith("device:"):
        return ""
    path = tcti.removeprefix("device:") or "/dev/tpm0"
    if not os.path.exists(path):
        return f": {path} does not exist (not a VM with a vTPM?)"
    if not os.access(path, os.R_OK | os.W_OK):
        return f": this user cannot open {path} (root, or the tss group)"
    return ""


def request_hcl_report(tcti: str, report_data: bytes, wait: float) -> bytes:
    """Write ``report_data`` for the paravisor, wait, and read back the HCL report."""
    if not 0 < len(report_data) <= MAX_REPORT_DATA:
        raise KeySourceError(f"vTPM report data must be 1 to {MAX_REPORT_DATA} bytes")
    with _esapi(tcti, "report request (NV index 0x01400002)") as ctx:
        _write_report_request(ctx, report_data)
    time.sleep(wait)
    return read_hcl_report(tcti)


def read_hcl_report(tcti: str) -> bytes:
    """The HCL report at NV index ``0x01400001``; KeySourceError when there is none."""
    tss = _tss()
    with _esapi(tcti, "HCL report read (NV index 0x01400001)") as ctx:
        try:
            index = ctx.tr_from_tpmpublic(HCL_REPORT_NV_INDEX)
        except tss.TSS2_Exception:
            raise KeySourceError(
                f"no HCL report: NV index {HCL_REPORT_NV_INDEX:#010x} is not defined at {tcti} "
                "(not an Azure confidential VM's vTPM?)"
            ) from None
        public, _ = ctx.nv_read_public(index)
        size = public.nvPublic.dataSize
        if size > MAX_HCL_REPORT:
            raise KeySourceError(f"HCL report index holds {size} bytes, more than expected")
        piece = _nv_buffer_max(ctx)
        data = bytearray()
        while len(data) < size:
            count = min(piece, size - len(data))
            data += bytes(ctx.nv_read(index, count, len(data), auth_handle=tss.ESYS_TR.OWNER))
        return bytes(data)


def quote(tcti: str, report_data: bytes) -> TpmQuote:
    """TPM2_Quote by the AK over SHA-256 PCRs 0-23 with ``report_data``, and the PCR values."""
    tss = _tss()
    selection = "sha256:" + ",".join(str(i) for i in QUOTE_PCRS)
    with _esapi(tcti, f"quote with the AK at {AK_HANDLE:#x}") as ctx:
        try:
            ak = ctx.tr_from_tpmpublic(AK_HANDLE)
        except tss.TSS2_Exception:
            raise KeySourceError(
                f"no attestation key at persistent handle {AK_HANDLE:#x} of {tcti}"
            ) from None
        attest, signature = ctx.quote(
            ak, selection, report_data, tss.TPMT_SIG_SCHEME(scheme=tss.TPM2_ALG.NULL)
        )
        if signature.sigAlg != tss.TPM2_ALG.RSASSA:
            raise KeySourceError("vTPM quote is not an RSASSA signature (AK is not RSA?)")
        message = bytes(attest)
        pcrs = _read_pcrs(ctx, tss)
    parsed, _ = tss.TPMS_ATTEST.unmarshal(message)
    if bytes(parsed.extraData) != report_data:
        raise KeySourceError("vTPM quote does not carry the report data as its qualifying data")
    if bytes(parsed.attested.quote.pcrDigest) != hashlib.sha256(b"".join(pcrs)).digest():
        raise KeySourceError("vTPM PCRs changed between the quote and reading them; retry")
    return TpmQuote(message, bytes(signature.signature.rsassa.sig), pcrs)


def _read_pcrs(ctx, tss) -> list[bytes]:
    """SHA-256 PCRs 0-23; a TPM answers at most 8 per TPM2_PCR_Read."""
    values: dict[int, bytes] = {}
    while len(values) < len(QUOTE_PCRS):
        wanted = [i for i in QUOTE_PCRS if i not in values]
        _, selected, digests = ctx.pcr_read("sha256:" + ",".join(map(str, wanted)))
        returned = [i for i in wanted if _selected(selected, i)]
        if not returned or len(returned) != digests.count:
            raise KeySourceError("vTPM returned no SHA-256 PCR values (no SHA-256 bank?)")
        for i, digest in zip(returned, digests.digests[: digests.count], strict=True):
            values[i] = bytes(digest)
    return [values[i] for i in QUOTE_PCRS]


def _selected(selection, pcr: int) -> bool:
    for item in selection.pcrSelections[: selection.count]:
        bits = bytes(item.pcrSelect)[: item.sizeofSelect]
        if item.hash == 0x000B and pcr // 8 < len(bits) and bits[pcr // 8] >> (pcr % 8) & 1:
            return True
    return False


def _nv_buffer_max(ctx) -> int:
    tss = _tss()
    _, data = ctx.get_capability(tss.TPM2_CAP.TPM_PROPERTIES, tss.TPM2_PT_NV.BUFFER_MAX, 1)
    props = data.data.tpmProperties
    if props.count and props.tpmProperty[0].property == tss.TPM2_PT_NV.BUFFER_MAX:
        return max(64, props.tpmProperty[0].value)
    return 512


def _write_report_request(ctx, data: bytes) -> None:
    """(Re)define the request index at exactly ``len(data)`` and write ``data``."""
    tss = _tss()
    index = None
    with suppress(tss.TSS2_Exception):
        index = ctx.tr_from_tpmpublic(REPORT_REQUEST_NV_INDEX)
    if index is not None:
        public, _ = ctx.nv_read_public(index)
        if public.nvPublic.dataSize != len(data):
            ctx.nv_undefine_space(index, auth_handle=tss.ESYS_TR.OWNER)
            index = None
    if index is None:
        public = tss.TPM2B_NV_PUBLIC(
            nvPublic=tss.TPMS_NV_PUBLIC(
                nvIndex=REPORT_REQUEST_NV_INDEX,
                nameAlg=tss.TPM2_ALG.SHA256,
                attributes=tss.TPMA_NV.OWNERWRITE | tss.TPMA_NV.OWNERREAD,
                dataSize=len(data),
            )
        )
        index = ctx.nv_define_space(None, public, auth_handle=tss.ESYS_TR.OWNER)
    ctx.nv_write(index, data, 0, auth_handle=tss.ESYS_TR.OWNER)
