"""A model key kept in a local file: development and publishing only.

On a serving machine the key should come from an attested key broker; a key
file means the key sits on that machine's disk.
"""

import logging
import os
import stat
from pathlib import Path

from cmlfs.errors import KeySourceError
from cmlfs.format.keys import MODEL_KEY_LEN
from cmlfs.keys.base import MAX_RESOURCE_LEN, KeySettings, ReleasedKey
from cmlfs.logfmt import quote

log = logging.getLogger(__name__)


class FileKeySource:
    authenticated = True  # the operator named the file: no channel in between

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return f"key file {self.path}"

    def fetch_release(self) -> ReleasedKey:
        """The key: 32 raw bytes, or a 32-byte key as a KServe user keeps it (a JWK or
        base64url text), so a model imported from a JWE folder mounts with its key file."""
        key = self.fetch_resource()
        if len(key) != MODEL_KEY_LEN:
            from cmlfs.keys.bundle import jose_key  # JSON and JWK parsing only for such keys

            key = jose_key(key, self._refusal(" (or a JWK or base64url key)"))
        return ReleasedKey(key)

    def fetch_key(self) -> bytes:
        """The key as 32 raw bytes, as ``encrypt`` and ``key register`` take it."""
        key = self.fetch_resource()
        if len(key) != MODEL_KEY_LEN:
            raise KeySourceError(self._refusal())
        return key

    def _refusal(self, alternatives: str = "") -> str:
        return (
            f"key file {self.path} does not hold exactly {MODEL_KEY_LEN} raw bytes"
            f"{alternatives} (make one with 'cmlfs keygen')"
        )

    def fetch_resource(self, limit: int = MAX_RESOURCE_LEN) -> bytes:
        """The file's bytes (a JWE model's key may be a JWK or base64url text); refused
        beyond ``limit``."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise KeySourceError(f"cannot open key file {self.path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise KeySourceError(f"key file {self.path} is not a regular file")
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise KeySourceError(f"key file {self.path} is larger than {limit} bytes")
        return data


def key_file_source(path: Path, settings: KeySettings) -> FileKeySource:
    """The key file an operator named (``--key-file`` or ``file://``) for a mount.

    On a machine with a TEE this is worth a warning: the key then sits on the disk,
    outside what attestation protects.
    """
    if settings.attester in ("tdx", "snp", "az-snp-vtpm", "az-tdx-vtpm") or (
        settings.attester == "auto" and settings.tsm_report_root.is_dir()
    ):
        log.warning(
            "event=key_file_in_tee path=%s reason=\"a key file sits on this machine's disk; "
            'development only, use kbs:// or cdh:// in a TEE"',
            quote(str(path)),
        )
    return FileKeySource(path)


def generate_key_file(path: Path) -> None:
    """Write 32 random bytes to a new file of mode 0600; refuse to overwrite anything."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise KeySourceError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeySourceError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, os.urandom(MODEL_KEY_LEN))
        os.fsync(fd)
    finally:
        os.close(fd)
