"""TEE attesters: evidence over a report-data digest, in the shapes Trustee's verifiers read.

``auto`` picks the configfs-tsm provider of this machine (TDX or SEV-SNP);
without one, a vTPM whose NV index holds an Azure HCL report (``az-snp-vtpm``
or ``az-tdx-vtpm`` by the report's type); otherwise it fails with one line
saying what it looked for. It never falls back to ``sample``, which proves
nothing and must be asked for by name.
"""

import logging
from typing import Protocol

from cmlfs.errors import KeySourceError
from cmlfs.keys.attesters.configfs_tsm import SnpAttester, TdxAttester, detect_tee
from cmlfs.keys.attesters.sample import SampleAttester
from cmlfs.keys.base import KeySettings

log = logging.getLogger(__name__)

ATTESTERS = ("auto", "tdx", "snp", "az-snp-vtpm", "az-tdx-vtpm", "sample")


class Attester(Protocol):
    tee: str  # the KBS `tee` value: tdx, snp, az-snp-vtpm, az-tdx-vtpm, sample

    def evidence(self, report_data: bytes) -> object:
        """The TEE's evidence (JSON value) binding ``report_data``; KeySourceError on failure."""
        ...


def select_attester(settings: KeySettings) -> Attester:
    choice = settings.attester
    if choice == "auto":
        choice = detect(settings)
    if choice == "tdx":
        return TdxAttester(settings.tsm_report_root, settings.ccel_path, settings.aael_path)
    if choice == "snp":
        return SnpAttester(settings.tsm_report_root)
    if choice in ("az-snp-vtpm", "az-tdx-vtpm"):
        from cmlfs.keys.attesters.azure_vtpm import AzureVtpmAttester

        return AzureVtpmAttester(choice, settings)
    if choice == "sample":
        log.warning(
            'event=sample_attester reason="the sample attester proves nothing; '
            'development and tests only"'
        )
        return SampleAttester()
    raise ValueError(f"unknown attester {settings.attester!r}")


def detect(settings: KeySettings) -> str:
    """The TEE of this machine: configfs-tsm first, then an Azure vTPM's HCL report."""
    try:
        return detect_tee(settings.tsm_report_root)
    except KeySourceError as exc:
        tsm_reason = str(exc)
    from cmlfs.keys.attesters.azure_vtpm import detect_vtpm  # its HTTP and x509 stacks

    try:
        return detect_vtpm(settings)
    except KeySourceError as exc:
        vtpm_reason = str(exc)
    raise KeySourceError(
        f"--attester auto found no TEE: configfs-tsm: {tsm_reason}; Azure vTPM: {vtpm_reason} "
        "(name one with --attester; sample proves nothing and is never picked)"
    )


__all__ = [
    "ATTESTERS",
    "Attester",
    "SampleAttester",
    "SnpAttester",
    "TdxAttester",
    "select_attester",
]
