"""What a mount needs, built once by the CLI; light to import (no FUSE, no trio)."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cmlfs.keys import KeySettings, KeySource
from cmlfs.reader import DEFAULT_CACHE_BYTES
from cmlfs.signature import PublisherKey
from cmlfs.stores.base import StoreSettings

if TYPE_CHECKING:  # prometheus-client is imported only by mounts that serve --http
    from cmlfs.status import StatusSettings

# Called once: None when the mount is ready, else the one-line reason it failed.
Notify = Callable[[str | None], None]


@dataclass(frozen=True)
class MountSettings:
    """Everything a mount needs, built once by the CLI."""

    store: str
    mountpoint: Path
    key_source: KeySource | None  # None: the key URI recorded in the manifest envelope
    cache_bytes: int = DEFAULT_CACHE_BYTES
    allow_other: bool = False
    store_settings: StoreSettings = field(default_factory=StoreSettings)
    fetch_bytes: int | None = None  # None: a read's missing chunks (folder, workers), else 4 MiB
    threads: int | None = None  # None: inline (0) for a folder or workers, else REMOTE_THREADS
    disk_cache: Path | None = None  # ciphertext only
    disk_cache_bytes: int = 8 << 30
    key_settings: KeySettings = field(default_factory=KeySettings)
    expected_key_id: str | None = None  # --key-id: the model must be sealed for this key
    publisher: PublisherKey | None = None  # --trust-publisher: the store must be signed by it
    min_version: str | None = None  # --min-model-version: the oldest sealed version accepted
    status: "StatusSettings | None" = None  # --http: serve health, readiness and metrics
    workers: int = 1  # >1: worker processes serve the mount (cmlfs.daemon.workers)
    show_plain: bool = False  # a JWE folder's files that are not JWE are served, unauthenticated
    warm_up_bytes: int | None = None  # --warm-up: None half the memory available, 0 off
