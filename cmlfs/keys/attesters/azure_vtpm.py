"""The ``az-snp-vtpm`` and ``az-tdx-vtpm`` attesters: Azure confidential VMs behind a paravisor.

Evidence as guest-components makes it (``attestation-agent/attester/src/az_snp_vtpm``,
``az_tdx_vtpm``), version 2:

1. write the runtime-data digest to the vTPM's report-request NV index, wait
   for the paravisor (3 s on Azure), read the HCL report back; refuse a report
   of the other TEE type, one whose user-data does not start with the digest
   (stale), or whose hardware report does not bind its variable data;
2. TPM2_Quote by the AK over SHA-256 PCRs 0-23 with the digest as qualifying data;
3. SNP: the VCEK (PEM, sent as DER) from the instance metadata service,
   ``GET /metadata/THIM/amd/certification`` with ``Metadata: true``;
   TDX: the TD quote for the HCL report's TD report, ``POST /acc/tdquote``.

The metadata service is plain HTTP on a link-local address (no proxy, no TLS),
as on Azure; its address, the TCTI and the wait come from KeySettings.
"""

import base64
import binascii
import json

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters import tpm
from cmlfs.keys.attesters.configfs_tsm import check_tdx_quote
from cmlfs.keys.attesters.hcl import (
    HclReport,
    parse_hcl_report,
    user_data,
    vtpm_evidence,
)
from cmlfs.keys.base import KeySettings
from cmlfs.keys.rcar import b64url_encode
from cmlfs.keys.transport import new_session, read_capped, send

VCEK_PATH = "/metadata/THIM/amd/certification"
TD_QUOTE_PATH = "/acc/tdquote"
MAX_METADATA_ANSWER = 256 * 1024
_SNP_REPORT_DATA = 0x50  # in the SNP attestation report
_TD_REPORT_DATA = 128  # in the TD report's REPORTMACSTRUCT
TEES = {"snp": "az-snp-vtpm", "tdx": "az-tdx-vtpm"}


class AzureVtpmAttester:
    """``az-snp-vtpm`` or ``az-tdx-vtpm`` evidence through the vTPM and metadata service."""

    def __init__(self, tee: str, settings: KeySettings) -> None:
        self.tee = tee
        self.kind = next(kind for kind, name in TEES.items() if name == tee)
        self.settings = settings

    def evidence(self, report_data: bytes) -> dict:
        tcti = self.settings.tpm_tcti
        raw = tpm.request_hcl_report(tcti, report_data, self.settings.vtpm_report_wait)
        report = checked_report(raw, self.kind, report_data)
        if self.kind == "snp":
            tpm_quote = tpm.quote(tcti, report_data)
            hardware = {"vcek": fetch_vcek(self.settings)}
        else:
            hardware = {"td_quote": fetch_td_quote(self.settings, report.hw_report)}
            tpm_quote = tpm.quote(tcti, report_data)
        return vtpm_evidence(
            tpm_quote.message, tpm_quote.signature, tpm_quote.pcrs, raw, **hardware
        )


def checked_report(raw: bytes, kind: str, report_data: bytes) -> HclReport:
    """The HCL report, refused when it is of the other type, stale, or not self-bound."""
    report = parse_hcl_report(raw, KeySourceError)
    if report.report_type != kind:
        raise KeySourceError(
            f"the vTPM's HCL report is a {report.report_type.upper()} report, not "
            f"{kind.upper()}: use --attester {TEES[report.report_type]} (or auto)"
        )
    if not user_data(report, KeySourceError).startswith(report_data):
        raise KeySourceError(
            "the HCL report's user-data does not carry the report data: the paravisor did not "
            "regenerate it (stale report; a longer --vtpm-report-wait may help)"
        )
    offset = _SNP_REPORT_DATA if kind == "snp" else _TD_REPORT_DATA
    if report.hw_report[offset : offset + 32] != report.var_data_sha256():
        raise KeySourceError("the HCL report's hardware report does not bind its variable data")
    return report


def detect_vtpm(settings: KeySettings) -> str:
    """``az-snp-vtpm`` or ``az-tdx-vtpm`` from the type of the HCL report the vTPM holds."""
    report = parse_hcl_report(tpm.read_hcl_report(settings.tpm_tcti), KeySourceError)
    return TEES[report.report_type]


def fetch_vcek(settings: KeySettings) -> bytes:
    """The VCEK certificate (DER) from the metadata service."""
    answer = _metadata_json(settings, "GET", VCEK_PATH, None, "the VCEK")
    pem = answer.get("vcekCert")
    if not isinstance(pem, str):
        raise KeySourceError('metadata service VCEK answer has no "vcekCert" string')
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise KeySourceError("metadata service VCEK is not a PEM certificate") from None
    return cert.public_bytes(Encoding.DER)


def fetch_td_quote(settings: KeySettings, td_report: bytes) -> bytes:
    """The TD quote the metadata service's quoting service makes for ``td_report``."""
    body = json.dumps({"report": b64url_encode(td_report)}).encode("ascii")
    answer = _metadata_json(settings, "POST", TD_QUOTE_PATH, body, "a TD quote")
    text = answer.get("quote")
    if not isinstance(text, str) or not text:
        raise KeySourceError('metadata service TD quote answer has no "quote" string')
    quote = _b64_either(text)
    check_tdx_quote(quote, td_report[_TD_REPORT_DATA : _TD_REPORT_DATA + 64])
    return quote


def _b64_either(text: str) -> bytes:
    """Standard base64, or URL-safe as a fallback (what the metadata service answers)."""
    for alphabet in (b"+/", b"-_"):
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise KeySourceError("metadata service TD quote is not base64")


def _metadata_json(
    settings: KeySettings, method: str, path: str, body: bytes | None, what: str
) -> dict:
    url = settings.metadata_url.rstrip("/") + path
    headers = {"Metadata": "true", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        with new_session(settings) as http:
            response = send(http, method, url, settings, body=body, headers=headers)
            status = response.status_code
            data = read_capped(response, MAX_METADATA_ANSWER, f"the metadata service's {what}")
    except KeySourceError as exc:
        raise KeySourceError(f"fetching {what} from the metadata service: {exc}") from None
    if status != 200:
        raise KeySourceError(f"metadata service answered HTTP {status} for {what} ({url})")
    try:
        answer = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise KeySourceError(f"metadata service answer for {what} is not JSON") from None
    if not isinstance(answer, dict):
        raise KeySourceError(f"metadata service answer for {what} is not a JSON object")
    return answer
