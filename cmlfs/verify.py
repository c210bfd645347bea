"""Checking a whole stored model: every chunk authenticates and every file digest matches;
or, for a KServe JWE model folder, every file's tag."""

import hashlib
import hmac
from collections.abc import Callable

import trio

from cmlfs.errors import IntegrityError
from cmlfs.manifest import Manifest
from cmlfs.reader import ModelReader
from cmlfs.reader.jwe import JweListing, authenticate_file
from cmlfs.stores import Store

STEP = 4 * 1024 * 1024


def verify_model(
    manifest: Manifest, store: Store, model_key: bytes, progress: Callable[[int], None]
) -> None:
    """Raise IntegrityError naming the first damaged file (and chunk) of the model."""
    reader = ModelReader(
        manifest, store, model_key, cache_bytes=0, run_bytes=STEP, log_failures=False
    )

    async def check_all() -> None:
        for index, entry in enumerate(manifest.files):
            await reader.check(index)
            digest = hashlib.sha256()
            for offset in range(0, entry.size, STEP):
                data = await reader.read(index, offset, STEP)
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
