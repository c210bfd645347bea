"""The KeySource protocol, what a release yields, and the settings every source is built with."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Attester = Literal["auto", "tdx", "snp", "az-snp-vtpm", "az-tdx-vtpm", "sample"]
TeeKeyType = Literal["ec", "rsa"]
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
CCEL_PATH = Path("/sys/firmware/acpi/tables/data/CCEL")
TPM_TCTI = "device:/dev/tpmrm0"  # the vTPM, through the kernel's resource manager
METADATA_URL = "http://169.254.169.254"  # Azure's instance metadata service
VTPM_REPORT_WAIT = 3.0  # seconds the paravisor is given to regenerate the HCL report
MAX_RESOURCE_LEN = 4096  # bytes: the largest key resource (raw key, key bundle, JWK) read
AAEL_PATH = Path("/run/attestation-agent/eventlog")  # the CoCo attestation agent's event log


@dataclass(frozen=True)
class KeySettings:
    """How key sources attest and connect; built once by the CLI, never read from globals."""

    attester: Attester = "auto"
    kbs_ca: Path | None = None  # CA bundle for a broker's TLS certificate; None: system store
    # Plain HTTP to key brokers and to data hubs off loopback. Separate from the stores' switch,
    # so a plain-HTTP registry never downgrades the broker; a key that comes this way is used
    # only for a model pinned by --key-id (see KeySource.authenticated).
    insecure_kbs_http: bool = False
    tee_key_type: TeeKeyType = "ec"  # ephemeral key: EC P-256 (ECDH-ES+A256KW) or RSA-OAEP-256
    timeout: float = 30.0  # seconds per HTTP request
    tsm_report_root: Path = TSM_REPORT_ROOT
    cdh_address: str = "127.0.0.1:8006"  # HOST:PORT of the data hub behind cdh:/// and kbs:///
    ccel_path: Path = CCEL_PATH
    tpm_tcti: str = TPM_TCTI  # tpm2-tss TCTI of the vTPM (az-*-vtpm attesters)
    metadata_url: str = METADATA_URL
    vtpm_report_wait: float = VTPM_REPORT_WAIT
    aael_path: Path = AAEL_PATH


@dataclass(frozen=True)
class ReleasedKey:
    """A released model key, and the manifest digest a key bundle pins (None: no pin)."""

    key: bytes = field(repr=False)
    manifest_sha256: str | None = None


class KeySource(Protocol):
    # True when the key's channel vouches for where it came from (a local file, a broker whose
    # TLS certificate was verified, the data hub on loopback). A key from any other channel
    # could be anyone's: the daemon uses it only for a model the operator pinned with --key-id.
    authenticated: bool

    def describe(self) -> str:
        """Where the key comes from, for messages (never the key)."""
        ...

    def fetch_release(self) -> ReleasedKey:
        """The released 32-byte model key, or KeySourceError with a one-line reason."""
        ...

    def fetch_resource(self) -> bytes:
        """The released resource as it is (a KServe JWE key may be raw bytes, a JWK or a
        base64url string), or KeySourceError with a one-line reason."""
        ...
