"""TEE attesters: evidence over a report-data digest, in the shapes Trustee's verifiers read.

``auto`` picks the configfs-tsm provider of this machine (TDX or SEV-SNP) and
fails when there is none; it never falls back to ``sample``, which proves
nothing and must be asked for by name.
"""

import logging
from typing import Protocol

from cmlfs.keys.attesters.configfs_tsm import SnpAttester, TdxAttester, detect_tee
from cmlfs.keys.attesters.sample import SampleAttester
from cmlfs.keys.base import KeySettings

log = logging.getLogger("cmlfs.keys.attesters")

ATTESTERS = ("auto", "tdx", "snp", "sample")


class Attester(Protocol):
    tee: str  # the KBS `tee` value: tdx, snp, sample

    def evidence(self, report_data: bytes) -> object:
        """The TEE's evidence (JSON value) binding ``report_data``; KeySourceError on failure."""
        ...


def select_attester(settings: KeySettings) -> Attester:
    choice = settings.attester
    if choice == "auto":
        choice = detect_tee(settings.tsm_report_root)
    if choice == "tdx":
        return TdxAttester(settings.tsm_report_root, settings.ccel_path)
    if choice == "snp":
        return SnpAttester(settings.tsm_report_root)
    if choice == "sample":
        log.warning(
            "event=sample_attester the sample attester proves nothing; development and tests only"
        )
        return SampleAttester()
    raise ValueError(f"unknown attester {settings.attester!r}")


__all__ = [
    "ATTESTERS",
    "Attester",
    "SampleAttester",
    "SnpAttester",
    "TdxAttester",
    "select_attester",
]
