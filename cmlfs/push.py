"""Pushing an encrypted store folder to a store (the model owner's side).

Copies ciphertext only: every blob first, skipping those the destination
already holds (blobs are named by their digest, so a re-run after a failure
resumes), then the sealed manifest, then the store's commit (for an OCI
registry, the image manifest under the tag). Never reads or writes plaintext.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cmlfs.errors import StoreError
from cmlfs.manifest import MANIFEST_NAME, read_envelope
from cmlfs.publish import PublishError
from cmlfs.stores import LocalStore, Store
from cmlfs.stores.base import check_name


@dataclass(frozen=True)
class PushResult:
    reference: str  # what to mount: for OCI the digest reference
    uploaded: int
    skipped: int


def push_objects(src: Path) -> list[str]:
    """The objects of the encrypted store folder ``src`` in push order (manifest last)."""
    source = LocalStore(src)
    try:
        names = [name for name in source.list() if _valid(name)]
        if MANIFEST_NAME not in names:
            raise PublishError(f"{src} is not an encrypted store folder (no {MANIFEST_NAME})")
        read_envelope(source.read_all(MANIFEST_NAME))
    finally:
        source.close()
    return [name for name in names if name != MANIFEST_NAME] + [MANIFEST_NAME]


def push_bytes(src: Path) -> int:
    return sum((src / name).stat().st_size for name in push_objects(src))


def push_model(src: Path, dest: Store, progress: Callable[[int], None]) -> PushResult:
    """Upload every object of ``src`` that ``dest`` lacks, the manifest last; then commit."""
    uploaded = skipped = 0
    for name in push_objects(src):
        if dest.put(name, src / name, progress):
            uploaded += 1
        else:
            skipped += 1
    return PushResult(dest.commit(), uploaded, skipped)


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except StoreError:
        return False
    return True
