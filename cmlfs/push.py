"""Signing an encrypted store folder and pushing it to a store (the model owner's side).

A push copies ciphertext only: every blob first, skipping those the destination
already holds (blobs are named by their digest, so a re-run after a failure
resumes), then the publisher's signature if there is one, then the sealed
manifest, then the store's commit (for an OCI registry, the image manifest under
the tag). Never reads or writes plaintext.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cmlfs.manifest import MANIFEST_NAME, Envelope, read_envelope
from cmlfs.publish import PublishError
from cmlfs.signature import SIGNATURE_NAME, sign_folder
from cmlfs.stores import LocalStore, Store
from cmlfs.stores.base import is_object_name


@dataclass(frozen=True)
class PushResult:
    reference: str  # what to mount: for OCI the digest reference
    uploaded: int
    skipped: int


def push_objects(src: Path) -> list[str]:
    """The objects of the encrypted store folder ``src`` in push order: blobs, the
    signature, the manifest last (what makes the new version visible)."""
    names, _ = _store_objects(src)
    last = [name for name in (SIGNATURE_NAME, MANIFEST_NAME) if name in names]
    return [name for name in names if name not in last] + last


def sign_store(src: Path, private_key: Path) -> tuple[str, Envelope]:
    """Sign the store folder ``src`` in the OpenSSF model-signing format (its manifest and
    blobs, into ``src/model.sig``); return the signing key's fingerprint and the envelope.

    A file that is not a store object (a leftover of an interrupted copy) is refused rather
    than signed: a push would not carry it, and the pushed store would then fail
    ``model_signing verify``.
    """
    names, envelope = _store_objects(src)
    listing = LocalStore(src, files=True)
    try:
        stray = sorted(set(listing.list()) - set(names))
    finally:
        listing.close()
    if stray:
        raise PublishError(
            f"{src} holds {len(stray)} file(s) that are not store objects, such as "
            f"{stray[0]!r}: remove them before signing"
        )
    return sign_folder(src, private_key), envelope


def _store_objects(src: Path) -> tuple[list[str], Envelope]:
    """The objects of the encrypted store folder ``src`` and its manifest's envelope."""
    source = LocalStore(src)
    try:
        names = [name for name in source.list() if is_object_name(name)]
        if MANIFEST_NAME not in names:
            raise PublishError(f"{src} is not an encrypted store folder (no {MANIFEST_NAME})")
        envelope = read_envelope(source.read_all(MANIFEST_NAME))
    finally:
        source.close()
    return names, envelope


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
