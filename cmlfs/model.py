"""Opening a stored model: the store, the key, and the manifest checked against both.

Used by the daemon before it mounts and by ``inspect`` and ``verify``. A model is
returned only when its manifest authenticated under the key, matches a pinned key
id, for a key bundle is the manifest the bundle pins, with a trusted publisher is
the manifest that publisher signed, and with a minimum version is not older;
anything else is refused before a file of the model is read.

A location without a manifest may be a KServe-style JWE model folder instead
(``open_jwe_folder``): its listing and its key; each file authenticates on its own
when read (cmlfs.reader.jwe), or whole when imported into a cmlfs store
(``import_jwe_folder``).
"""

import hmac
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmlfs.errors import FormatError, IntegrityError, KeySourceError
from cmlfs.format.aead import Algorithm, tink_available
from cmlfs.format.jwe import JWE_SUFFIX, key_from_resource
from cmlfs.format.keys import MODEL_KEY_LEN
from cmlfs.keys import KeySettings, KeySource, ReleasedKey, key_source_from_uri
from cmlfs.logfmt import quote
from cmlfs.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_LEN,
    Manifest,
    SealedManifest,
    open_manifest,
    version_order,
)
from cmlfs.publish import EncryptSettings, PlainFile, Progress, PublishError, seal_model
from cmlfs.reader.jwe import JweEntry, JweListing, authenticate_file, list_jwe_folder, open_chunk
from cmlfs.signature import (
    MAX_SIGNATURE_LEN,
    SIGNATURE_NAME,
    PublisherKey,
    SignatureError,
    signed_digests,
)
from cmlfs.stores import Store, StoreSettings, open_store
from cmlfs.stores.base import ObjectMissing

log = logging.getLogger(__name__)


def open_model(
    store_location: str,
    key_source: KeySource | None,
    store_settings: StoreSettings | None = None,
    key_settings: KeySettings | None = None,
    expected_key_id: str | None = None,
    publisher: PublisherKey | None = None,
    min_version: str | None = None,
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
    A trusted ``publisher``'s signature is checked before the key is asked for; the sealed
    model version against ``min_version`` once the manifest is open.
    """
    store = open_store(store_location, store_settings)
    sealed = read_sealed(store)
    envelope = sealed.envelope
    if expected_key_id is not None and envelope.key_id != expected_key_id:
        raise IntegrityError(
            f"the model in {store.describe()} is sealed for key id {envelope.key_id}, "
            f"not the pinned {expected_key_id}"
        )
    # What opens the model is imported while the key is obtained, not once it is there.
    with _backend_imported_meanwhile(sealed.algorithm):
        release = _release(store, sealed, key_source, key_settings, expected_key_id, publisher)
    pinned = release.manifest_sha256
    if pinned is not None and not hmac.compare_digest(pinned, sealed.sha256):
        raise IntegrityError(
            f"the manifest in {store.describe()} is not the one the released key bundle pins "
            "(rolled back or replaced); refusing it"
        )
    manifest = open_manifest(sealed.data, release.key)
    if min_version is not None:
        check_min_version(manifest, min_version)
    return store, manifest, release.key


@contextmanager
def _backend_imported_meanwhile(algorithm: Algorithm) -> Iterator[None]:
    """Import ``algorithm``'s fastest backend (tink, for GCM-SIV) in a thread while the body
    runs, e.g. while a key broker attests and releases the key: the body mostly waits on
    the network, so the import (~35-50 ms) is under way or done when the key arrives (done
    when attesting takes longer), instead of starting then. Joined when the body ends,
    whatever it raised: a fork must not copy an import lock that a thread holds (the child
    would wait on it forever). Only ``_import_backend`` runs in it."""
    loader = None
    if algorithm is Algorithm.AES_256_GCM_SIV:
        loader = threading.Thread(target=_import_backend, name="tink-import", daemon=True)
        loader.start()
    try:
        yield
    finally:
        if loader is not None:
            loader.join()


def _import_backend() -> None:
    """``tink_available`` in the import thread: a failure other than tink being absent (a
    protobuf clash, say) is logged as one line; opening the manifest imports it again, in
    the main thread, and reports it there."""
    try:
        tink_available()
    except Exception as exc:
        log.warning("event=backend_import_failed reason=%s", quote(exc))


def _release(
    store: Store,
    sealed: SealedManifest,
    key_source: KeySource | None,
    key_settings: KeySettings | None,
    expected_key_id: str | None,
    publisher: PublisherKey | None,
) -> ReleasedKey:
    """The released key: from ``key_source``, or from the key URI the envelope records
    (only with ``expected_key_id``); a trusted ``publisher``'s signature checked first."""
    envelope = sealed.envelope
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
    if publisher is not None:
        check_publisher(store, sealed, publisher)
    return key_source.fetch_release()


def check_publisher(
    store: Store, sealed: SealedManifest, publisher: PublisherKey
) -> dict[str, str]:
    """The sealed manifest is the one ``publisher`` signed, checked without reading
    a blob: the signature's listed digest of the manifest, whose format-2 hash roots bind
    every record the reader will fetch. A format 1 manifest binds records only through the
    model key, which every key holder has, so it is refused. Returns every signed digest
    (store name -> SHA-256 hex)."""
    where = f"{store.describe()}: {SIGNATURE_NAME}"
    if sealed.format_version < 2:
        raise SignatureError(
            f"{store.describe()} is a format 1 store, whose blobs a signature cannot cover "
            "without reading them all: re-encrypt it (cmlfs encrypt writes format 2) and sign "
            "it again, or leave out --trust-publisher"
        )
    try:
        signature = store.read_all(SIGNATURE_NAME, MAX_SIGNATURE_LEN)
    except ObjectMissing:
        raise SignatureError(
            f"{where} is missing: the store is not signed (cmlfs sign), and --trust-publisher "
            "requires it"
        ) from None
    try:
        digests = signed_digests(signature, publisher)
    except SignatureError as exc:
        raise SignatureError(f"{where}: {exc}") from None
    signed = digests.get(MANIFEST_NAME)
    if signed is None:
        raise SignatureError(f"{where} does not list {MANIFEST_NAME}")
    if not hmac.compare_digest(signed, sealed.sha256):
        raise SignatureError(
            f"the manifest in {store.describe()} is not the one publisher "
            f"{publisher.fingerprint} signed (replaced or changed); refusing it"
        )
    return digests


def open_signed_store(
    store_location: str, publisher: PublisherKey, store_settings: StoreSettings | None = None
) -> tuple[Store, dict[str, str]]:
    """A store whose manifest ``publisher`` signed (``check_publisher``), without its key:
    the store and every signed digest, for checking each object whole (``cmlfs verify``)."""
    store = open_store(store_location, store_settings)
    return store, check_publisher(store, read_sealed(store), publisher)


def read_sealed(store: Store) -> SealedManifest:
    """``store``'s sealed manifest with what is known of it before the key: its format
    version, key id and key URI (the envelope) and its digest, which a key bundle's pin
    or a publisher's signature is checked against. Refused before it is allocated when
    larger than any manifest."""
    return SealedManifest.parse(store.read_all(MANIFEST_NAME, MAX_MANIFEST_LEN))


def check_min_version(manifest: Manifest, min_version: str) -> None:
    """The sealed ``model.version`` is at least ``min_version`` (``version_order``)."""
    try:
        version = version_order(manifest.version)
    except FormatError as exc:
        raise IntegrityError(
            f"the model's sealed version {exc}, so --min-model-version cannot order it"
        ) from None
    if version < version_order(min_version):
        raise IntegrityError(
            f"the model's version {manifest.version} is older than --min-model-version "
            f"{min_version} (rolled back); refusing it"
        )


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
    publisher: PublisherKey | None = None,
    min_version: str | None = None,
) -> tuple[Store, JweListing, bytes]:
    """Open a KServe-style JWE model folder: its listing, and the key as KServe reads the
    released resource (raw bytes, a JWK, or a base64url ``k`` value). Such a folder has
    neither a publisher signature nor a sealed version: asking for either refuses it."""
    if publisher is not None or min_version is not None:
        raise IntegrityError(
            "a JWE model folder has no publisher signature and no sealed version: leave out "
            "--trust-publisher and --min-model-version, or import it (cmlfs import) and sign it"
        )
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
