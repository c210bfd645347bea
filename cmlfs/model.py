"""Opening a stored model: the store, the key, and the manifest checked against both.

Used by the daemon before it mounts and by ``inspect`` and ``verify``. A model is
returned only when its manifest authenticated under the key, matches a pinned key
id and, for a key bundle, is the manifest the bundle pins; anything else is refused
before a file of the model is read.

A location without a manifest may be a KServe-style JWE model folder instead
(``open_jwe_folder``): its listing and its key; each file authenticates on its own
when read (cmlfs.reader.jwe), or whole when imported into a cmlfs store
(``import_jwe_folder``).
"""

import hmac
import logging
from collections.abc import Iterator
from pathlib import Path

from cmlfs.errors import FormatError, IntegrityError, KeySourceError
from cmlfs.format.jwe import JWE_SUFFIX, key_from_resource
from cmlfs.format.keys import MODEL_KEY_LEN
from cmlfs.keys import KeySettings, KeySource, key_source_from_uri
from cmlfs.logfmt import quote
from cmlfs.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_LEN,
    Manifest,
    manifest_digest,
    open_manifest,
    read_envelope,
)
from cmlfs.publish import EncryptSettings, PlainFile, Progress, PublishError, seal_model
from cmlfs.reader.jwe import JweEntry, JweListing, authenticate_file, list_jwe_folder, open_chunk
from cmlfs.stores import Store, StoreSettings, open_store
from cmlfs.stores.base import ObjectMissing

log = logging.getLogger("cmlfs.model")


def open_model(
    store_location: str,
    key_source: KeySource | None,
    store_settings: StoreSettings | None = None,
    key_settings: KeySettings | None = None,
    expected_key_id: str | None = None,
) -> tuple[Store, Manifest, bytes]:
    """Open a store, obtain the key and authenticate the manifest with it.

    The manifest's envelope is not authenticated until the key is known, so a
    key URI recorded there is used only when the operator pinned the model's
    key id: otherwise whoever controls the store could point the daemon at a
    key of their own and have their own model mounted. A key from a channel that
    cannot vouch for it (plain HTTP) needs the same pin, for the same reason: a
    key bundle's manifest pin does not count, since it arrives over that channel.
    A key bundle pins one manifest digest: any other manifest (an older version
    rolled back in the store, or another model under the same key) is refused
    before it is opened.
    """
    store = open_store(store_location, store_settings)
    data = store.read_all(MANIFEST_NAME, MAX_MANIFEST_LEN)  # refused before it is allocated
    envelope = read_envelope(data)
    if expected_key_id is not None and envelope.key_id != expected_key_id:
        raise IntegrityError(
            f"the model in {store.describe()} is sealed for key id {envelope.key_id}, "
            f"not the pinned {expected_key_id}"
        )
    if key_source is None:
        if envelope.key_uri is None:
            raise KeySourceError("the model records no key URI: give --key-file or --key-uri")
        if expected_key_id is None:
            raise KeySourceError(
                "the key URI recorded in the store is not authenticated: pin the model with "
                "--key-id ID (its owner publishes it; cmlfs inspect shows it) or give --key-uri"
            )
        key_source = key_source_from_uri(envelope.key_uri, key_settings)
        log.info("event=key_uri_from_store source=%s", quote(key_source.describe()))
    if not key_source.authenticated and expected_key_id is None:
        raise KeySourceError(
            f"{key_source.describe()} is reached over plain HTTP, where anyone on the path can "
            "hand out a key of their own: pin the model with --key-id ID"
        )
    release = key_source.fetch_release()
    pinned = release.manifest_sha256
    if pinned is not None and not hmac.compare_digest(pinned, manifest_digest(data)):
        raise IntegrityError(
            f"the manifest in {store.describe()} is not the one the released key bundle pins "
            "(rolled back or replaced); refusing it"
        )
    return store, open_manifest(data, release.key), release.key


def holds_cmlfs_model(location: str, store_settings: StoreSettings | None = None) -> bool:
    """Whether ``location`` holds a cmlfs model (a manifest) rather than JWE files."""
    if location.split("?", 1)[0].lower().endswith(JWE_SUFFIX):
        return False
    store = open_store(location, store_settings)
    try:
        store.size(MANIFEST_NAME)
    except ObjectMissing:
        return False
    finally:
        store.close()
    return True


def open_jwe_folder(
    location: str,
    key_source: KeySource | None,
    store_settings: StoreSettings | None = None,
    show_plain: bool = False,
) -> tuple[Store, JweListing, bytes]:
    """Open a KServe-style JWE model folder: its listing, and the key as KServe reads the
    released resource (raw bytes, a JWK, or a base64url ``k`` value)."""
    if key_source is None:
        raise KeySourceError("a JWE model folder records no key URI: give --key-file or --key-uri")
    if not key_source.authenticated:
        raise KeySourceError(
            f"{key_source.describe()} is reached over plain HTTP, and a JWE model folder has no "
            "key id to pin (--key-id): its key must come from a TLS broker, the data hub on "
            "loopback or a key file"
        )
    store = open_store(location, store_settings, files=True)
    listing = list_jwe_folder(store, show_plain)
    if not listing.jwe_files:
        raise IntegrityError(f"{store.describe()} holds neither a cmlfs model nor a JWE file")
    try:
        key = key_from_resource(key_source.fetch_resource())
    except FormatError as exc:
        raise KeySourceError(f"{key_source.describe()}: {exc}") from None
    return store, listing, key


def import_jwe_folder(
    store: Store,
    listing: JweListing,
    key: bytes,
    target: Path,
    settings: EncryptSettings,
    progress: Progress = lambda n: None,
) -> Manifest:
    """Seal the files of a KServe-style JWE folder into the new cmlfs store ``target``
    with the same key: each file is authenticated whole first, then decrypted chunk by
    chunk (each checked against its digest from that pass) straight into its blob. Any
    failure leaves nothing behind. ``progress`` counts both passes."""
    if len(key) != MODEL_KEY_LEN:
        raise PublishError(
            f"the JWE folder's key is {len(key)} bytes; a cmlfs store is sealed with a "
            f"{MODEL_KEY_LEN}-byte key: encrypt the model with a new key instead"
        )

    def file(entry: JweEntry) -> PlainFile:
        def blocks() -> Iterator[bytearray]:
            done = authenticate_file(store, entry, key, progress)
            for chunk in range(entry.parts.n_chunks):
                yield open_chunk(store, entry, done, chunk)

        return PlainFile(entry.path, entry.size, entry.mode, entry.mtime_ns, blocks)

    files = [file(entry) for entry in listing.files]
    return seal_model(files, listing.dirs, target, key, settings, progress)
