"""A private CA installed in the system trust store for one test: copied into
/usr/local/share/ca-certificates and taken in by Debian's update-ca-certificates (which
rebuilds /etc/ssl/certs/ca-certificates.crt, OpenSSL's default CA file), removed after."""

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SYSTEM_CA_DIR = Path("/usr/local/share/ca-certificates")
# CA variables that would name another bundle: hidden so only the system store can match
CA_VARIABLES = frozenset(
    {"SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE"}
)


@contextmanager
def in_system_store(ca: Path, name: str) -> Iterator[None]:
    """``ca`` (PEM) trusted system-wide while the block runs; ``name`` makes its file unique."""
    update = shutil.which("update-ca-certificates")
    if update is None or not SYSTEM_CA_DIR.is_dir():
        pytest.fail("update-ca-certificates is missing: install Debian package ca-certificates")
    installed = SYSTEM_CA_DIR / f"cmlfs-test-{name}.crt"
    shutil.copy(ca, installed)
    try:
        subprocess.run([update], check=True, capture_output=True, timeout=120)
        yield
    finally:
        installed.unlink()
        subprocess.run([update], check=True, capture_output=True, timeout=120)


def without_ca_variables(env: dict[str, str]) -> dict[str, str]:
    """``env`` without any variable that names a CA bundle."""
    return {name: value for name, value in env.items() if name not in CA_VARIABLES}
