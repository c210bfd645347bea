"""Checking a whole stored model: every chunk authenticates and every file digest matches;
or, for a KServe JWE model folder, every file's tag; or, without the key, every object of a
signed store against the digest its publisher signed."""

import hashlib
import hmac
from collections.abc import Callable

import trio

from cmlfs.errors import IntegrityError
from cmlfs.manifest import Manifest
from cmlfs.reader import ModelReader
from cmlfs.reader.jwe import JweListing, authenticate_file
from cmlfs.stores import Store
from cmlfs.stores.base import is_object_name

STEP = 4 * 1024 * 1024


def verify_model(
    manifest: Manifest, store: Store, model_key: bytes, progress: Callable[[int], None]
) -> None:
    """Raise IntegrityError naming the first damaged file (and chunk) of the model."""
    reader = ModelReader(
        manifest, store, model_key, cache_bytes=0, run_bytes=STEP, log_failures=False
    )

    async def check_all() -> None:
        for file_index, entry in enumerate(manifest.files):
            await reader.check(file_index)
            digest = hashlib.sha256()
            for offset in range(0, entry.size, STEP):
                data = await reader.read(file_index, offset, STEP)
                digest.update(data)
                progress(len(data))
            if not hmac.compare_digest(digest.hexdigest(), entry.sha256):
                raise IntegrityError(f"{entry.path}: content digest differs from the manifest")

    trio.run(check_all)


def verify_jwe_folder(
    listing: JweListing, store: Store, key: bytes, progress: Callable[[int], None]
) -> None:
    """Raise IntegrityError naming the first JWE file of the folder that fails."""
    for entry in listing.files:
        authenticate_file(store, entry, key, progress)


def verify_signed_objects(
    store: Store, digests: dict[str, str], progress: Callable[[int], None]
) -> None:
    """Raise IntegrityError naming the first object of ``store`` whose SHA-256 differs from
    its signed digest, or that is missing (what ``model_signing verify`` checks of a folder,
    over any store kind; nothing is decrypted)."""
    for name, expected in sorted(digests.items()):
        if not is_object_name(name):
            raise IntegrityError(f"the signature lists {name!r}, which is not a store object")
        digest = hashlib.sha256()
        size = store.size(name)
        for offset in range(0, size, STEP):
            data = store.read_range(name, offset, min(STEP, size - offset))
            digest.update(data)
            progress(len(data))
        if not hmac.compare_digest(digest.hexdigest(), expected):
            raise IntegrityError(f"{name}: its SHA-256 differs from the signed digest")
