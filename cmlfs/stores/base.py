"""The Store protocol every backend implements.

Names are relative, slash-separated (``manifest.cmlfs``, ``blobs/<sha256>``, and the
publisher's signature ``model.sig`` when the model is signed).
``read_range`` returns exactly the bytes asked for or raises StoreError;
callers never see a short read as data.
"""

import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cmlfs.errors import StoreError
from cmlfs.signature import SIGNATURE_NAME
from cmlfs.tls import missing_store_text, system_ca_location

_NAME = re.compile(rf"(manifest\.cmlfs|{re.escape(SIGNATURE_NAME)}|blobs/[0-9a-f]{{64}})")
_MAX_FILE_NAME = 4096
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110)
MAX_WHOLE_READ = 128 * 1024 * 1024

Progress = Callable[[int], None]


class ObjectMissing(StoreError):
    """The object does not exist in the store (as opposed to the store failing)."""


class ObjectChanged(StoreError):
    """The object was replaced in the store after this process first saw it."""


class ListingUnsupported(StoreError):
    """The store cannot enumerate its objects (a plain HTTP server)."""


@dataclass(frozen=True)
class StoreSettings:
    """How to reach network stores, built once by the CLI (secrets stay in memory)."""

    headers: tuple[tuple[str, str], ...] = ()  # extra request headers for http(s) stores
    insecure_http: bool = False  # allow plain-HTTP registries and credentials over http://
    timeout: float = 30.0  # seconds to connect, and of silence while reading a response
    attempts: int = 4  # tries per request before a read fails with EIO
    registry_auth_file: Path | None = None  # docker/podman auth.json for oci:// stores
    ca_file: Path | None = None  # CA bundle for the store's TLS certificate (--store-ca)

    def ca_bundle(self) -> str | None:
        """``verify`` for ``requests`` and boto3: the ``--store-ca`` file, or None when
        none was given (then the file a CA variable of the library names, else
        ``system_trust()``). A missing file is refused here, in one clear line, rather than
        deep in the TLS library at the first connection."""
        if self.ca_file is None:
            return None
        if not self.ca_file.is_file():
            raise StoreError(f"CA file {self.ca_file} does not exist")
        return str(self.ca_file)


def system_trust() -> str:
    """The system trust store, the stores' default as it is the key broker's (not the
    certifi bundle the HTTP libraries carry); StoreError when the system has none."""
    location = system_ca_location()
    if location is None:
        raise StoreError(f"{missing_store_text()}: install ca-certificates or give --store-ca")
    return location


def check_name(name: str) -> str:
    """Refuse any object name outside the store layout (no traversal, no surprises)."""
    if not is_object_name(name):
        raise StoreError(f"invalid store object name {name!r}")
    return name


def is_object_name(name: str) -> bool:
    """Whether ``name`` is one of the store layout's objects (``check_name`` accepts it)."""
    return _NAME.fullmatch(name) is not None


def content_addressed(name: str) -> bool:
    """Whether ``name`` is a blob, named by its digest, so that one already in a store with
    the right size is the same blob and a push skips it; the manifest and the signature
    change with every version and are always written."""
    return name.startswith("blobs/")


def check_file_name(name: str) -> str:
    """Refuse a name that is not a plain relative path (a folder of ordinary files, such as
    a JWE model folder): no empty, ``.`` or ``..`` segment, no control characters."""
    segments = name.split("/")
    if (
        not name.isprintable()
        or "\\" in name
        or len(name.encode("utf-8", "surrogateescape")) > _MAX_FILE_NAME
        or any(
            s in ("", ".", "..") or len(s.encode("utf-8", "surrogateescape")) > 255
            for s in segments
        )
    ):
        raise StoreError(f"invalid file name {name!r}")
    return name


def parse_header(line: str) -> tuple[str, str]:
    """``Name: value`` as given on the command line or in a header file, checked so nothing
    can be smuggled into a request (no line breaks, a valid field name)."""
    name, colon, value = line.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.fullmatch(name) or not value.isprintable():
        raise StoreError("a store header must look like 'Name: value' on one line")
    return name, value


@dataclass
class StoreStats:
    """Counters of a store's own work for metrics, kept by the store, not read from its logs.

    Fetch threads update them concurrently, so they change only through the methods here.
    """

    retries: int = 0  # requests sent again after a transient failure

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def count_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def reset(self) -> None:
        """Count from zero again: a forked worker's counts start where its parent's stop."""
        with self._lock:
            self.retries = 0


class Store(Protocol):
    stats: StoreStats

    def describe(self) -> str:
        """Where this store is, for messages (no credentials)."""
        ...

    def size(self, name: str) -> int:
        """Byte size of object ``name``; StoreError if it does not exist."""
        ...

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of ``name`` from ``offset``, else StoreError."""
        ...

    def read_all(self, name: str, limit: int = MAX_WHOLE_READ) -> bytes:
        """The whole object, refused if larger than ``limit``."""
        ...

    def list(self) -> list[str]:
        """Names of every object in the store (ListingUnsupported where it cannot know)."""
        ...

    def put(self, name: str, source: Path, progress: Progress) -> bool:
        """Upload file ``source`` as ``name`` unless it is a blob (``content_addressed``)
        of that size already there.

        Returns False when it was skipped: a present blob of the right size is the same blob.
        """
        ...

    def commit(self) -> str:
        """Make what was put visible as one model; return the reference to mount it by."""
        ...

    def close(self) -> None:
        """Drop open connections and descriptors; a later request opens new ones (a worker
        process closes what it inherited, so no two processes share a connection)."""
        ...


def check_range(name: str, offset: int, length: int, size: int) -> None:
    """Refuse a range that does not lie inside an object of ``size`` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise StoreError(f"{name}: range {offset}+{length} is outside the object")


def read_whole(store: "Store", name: str, limit: int) -> bytes:
    """The whole object ``name``, refused before reading when larger than ``limit``."""
    size = store.size(name)
    if size > limit:
        raise StoreError(f"{name}: {size} bytes is more than the {limit} allowed")
    return store.read_range(name, 0, size)


@dataclass(frozen=True)
class Identity:
    """What a store first saw of an object: later answers must agree with it."""

    size: int
    etag: str | None


class RangedStore(ABC):
    """What the network stores share: an object's identity is looked up once (its size,
    maybe an ETag) and every read is a range checked against it, so an object replaced
    under a running mount fails its reads instead of mixing versions."""

    def __init__(self) -> None:
        self._identities: dict[str, Identity] = {}
        self._identities_lock = threading.Lock()

    def size(self, name: str) -> int:
        return self._identity(name).size

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        identity = self._identity(name)
        check_range(name, offset, length, identity.size)
        if length == 0:
            return b""
        return self._read(name, offset, length, identity)

    def read_all(self, name: str, limit: int = MAX_WHOLE_READ) -> bytes:
        return read_whole(self, name, limit)

    def _identity(self, name: str) -> Identity:
        identity = self._identities.get(name)
        if identity is None:
            identity = self._look_up(name)
            with self._identities_lock:
                identity = self._identities.setdefault(name, identity)
        return identity

    @abstractmethod
    def _look_up(self, name: str) -> Identity:
        """The identity of ``name`` as the store reports it now (retried as needed)."""

    @abstractmethod
    def _read(self, name: str, offset: int, length: int, identity: Identity) -> bytes:
        """Exactly ``length`` bytes of ``name`` from ``offset``, checked against ``identity``
        (retried as needed)."""
