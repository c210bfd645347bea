"""dev-kbs resource repository: ``<dir>/<repo>/<type>/<tag>`` files (the broker's side).

Resources are the broker's secrets and live on its disk, as in Trustee's
local-fs backend. Paths are checked segment by segment before use; writes are
atomic (temporary file, fsync, rename) with mode 0600.
"""

import os
from pathlib import Path

from cmlfs.errors import CmlfsError

MAX_RESOURCE_LEN = 1 << 20


class RepositoryError(CmlfsError):
    """A resource that cannot be read or written."""


class Repository:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, path: str) -> bytes:
        try:
            with open(self.root / path, "rb") as f:
                data = f.read(MAX_RESOURCE_LEN + 1)
        except OSError:
            raise RepositoryError(f"resource {path} not found") from None
        if len(data) > MAX_RESOURCE_LEN:
            raise RepositoryError(f"resource {path} is too large")
        return data

    def write(self, path: str, data: bytes) -> None:
        if len(data) > MAX_RESOURCE_LEN:
            raise RepositoryError(f"resource larger than {MAX_RESOURCE_LEN} bytes")
        target = self.root / path
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(partial, "wb", opener=lambda p, flags: os.open(p, flags, 0o600)) as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(partial, target)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise RepositoryError(f"cannot store resource {path}: {exc.strerror}") from None
