"""Where blobs live: one small synchronous interface, one module per kind of store.

Stores are called from worker threads by the reader, so every implementation
is thread-safe and blocking. They carry ciphertext only.
Network stores are imported only when a URL names them.
"""

from pathlib import Path

from cmlfs.errors import StoreError
from cmlfs.stores.base import Store, StoreSettings
from cmlfs.stores.local import LocalStore


def open_store(
    location: str, settings: StoreSettings | None = None, create: bool = False, files: bool = False
) -> Store:
    """The store a STORE argument names: a folder path, ``file://``, ``http(s)://``,
    ``s3://`` or ``oci://`` URL. ``create`` makes a missing local folder (push).

    ``files`` reads the location as a folder of ordinary files (a JWE model folder):
    any relative name, listed recursively; over HTTP, which cannot list, the URL names
    one ``.jwe`` file."""
    settings = settings or StoreSettings()
    if names_folder(location):
        root = Path(location.removeprefix("file://"))
        if create:
            root.mkdir(parents=True, exist_ok=True)
        return LocalStore(root, files)
    scheme = _scheme(location)
    if scheme in ("http", "https"):
        from cmlfs.stores.http import HttpStore

        if not files:
            return HttpStore(location, settings)
        base, _, name = location.split("?", 1)[0].split("#", 1)[0].rpartition("/")
        if not name.lower().endswith(".jwe"):
            raise StoreError(
                "an HTTP server cannot list a folder: give the URL of one .jwe file, "
                "or use a folder, s3:// or oci:// location"
            )
        return HttpStore(base, settings, file=name)
    if scheme == "s3":
        from cmlfs.stores.s3 import S3Store

        return S3Store(location, settings, files)
    if scheme == "oci":
        from cmlfs.stores.oci import OciStore

        return OciStore(location, settings, files)
    raise StoreError(f"unsupported store URL scheme {scheme!r}")


def names_folder(location: str) -> bool:
    """Whether a STORE argument names a local folder (a path or a ``file://`` URL)."""
    return _scheme(location) in ("", "file")


def _scheme(location: str) -> str:
    return location.split("://", 1)[0].lower() if "://" in location else ""


__all__ = ["LocalStore", "Store", "StoreError", "StoreSettings", "names_folder", "open_store"]
