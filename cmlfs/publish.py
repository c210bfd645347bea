"""Encrypting a model folder into a store folder (the model owner's side).

Reads plaintext only from the source folder (or, importing, from blocks it is given
in memory: cmlfs.model.import_jwe_folder) and writes only ciphertext: each file
becomes one blob ``blobs/<sha256 of the blob>`` (in format 2 its records followed by
their hash list), then the sealed ``manifest.cmlfs`` is written last, so a store
without a manifest is visibly incomplete. On failure everything written is removed.
"""

import hashlib
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cmlfs.errors import CmlfsError, FormatError
from cmlfs.format import FORMAT_VERSION, FORMAT_VERSIONS
from cmlfs.format.aead import Algorithm
from cmlfs.format.hashlist import HashListBuilder
from cmlfs.format.header import BlobSealer
from cmlfs.format.layout import DEFAULT_CHUNK_SIZE, ChunkLayout
from cmlfs.manifest import (
    MANIFEST_NAME,
    DirEntry,
    FileEntry,
    Manifest,
    check_path,
    seal_manifest,
)

Progress = Callable[[int], None]


class PublishError(CmlfsError):
    """The source folder or the destination cannot be used as asked."""


@dataclass(frozen=True)
class EncryptSettings:
    chunk_size: int = DEFAULT_CHUNK_SIZE
    algorithm: Algorithm = Algorithm.AES_256_GCM_SIV
    model_name: str = ""
    model_version: str = ""
    key_uri: str | None = None
    format_version: int = FORMAT_VERSION  # 1 only to make stores for old readers

    def __post_init__(self) -> None:
        if self.format_version not in FORMAT_VERSIONS:
            raise PublishError(f"format version must be one of {FORMAT_VERSIONS}")


@dataclass(frozen=True)
class PlainFile:
    """A file to seal: its place in the model, and its plaintext as blocks in order
    (any sizes; they must add up to ``size``)."""

    path: str
    size: int
    mode: int
    mtime_ns: int
    blocks: Callable[[], Iterable[bytes | bytearray | memoryview]]


@dataclass(frozen=True)
class SourceFile:
    path: str  # model path, "/"-separated
    real: str  # file to read (a symlink's target inside the source folder)
    stat: os.stat_result


def scan_source(src: Path) -> tuple[list[SourceFile], list[DirEntry]]:
    """List the regular files and folders of ``src``; refuse what cannot be encrypted faithfully.

    Both lists are sorted by the UTF-8 bytes of their paths (docs/FORMAT.md 6.4), so a
    folder comes before everything in it and the manifest does not depend on the walk.
    """
    root = os.path.realpath(src)
    if not os.path.isdir(root):
        raise PublishError(f"{src} is not a folder")
    root_stat = os.stat(root)
    dirs = [DirEntry("", stat.S_IMODE(root_stat.st_mode), root_stat.st_mtime_ns)]
    files = []
    for current, dirnames, filenames in os.walk(root, onerror=_raise):
        rel = os.path.relpath(current, root)
        prefix = "" if rel == "." else rel + "/"
        dirnames.sort()
        for name in dirnames:
            st = os.lstat(os.path.join(current, name))
            if stat.S_ISLNK(st.st_mode):
                raise PublishError(f"{prefix}{name} is a symlink to a folder; copy it with cp -rL")
            _checked(prefix + name)
            dirs.append(DirEntry(prefix + name, stat.S_IMODE(st.st_mode), st.st_mtime_ns))
        for name in sorted(filenames):
            full = os.path.join(current, name)
            path = _checked(prefix + name)
            st = os.lstat(full)
            real = full
            if stat.S_ISLNK(st.st_mode):
                real = os.path.realpath(full)
                if os.path.commonpath([root, real]) != root:
                    raise PublishError(f"{path} is a symlink that leads out of {src}")
                st = os.stat(real)
            if not stat.S_ISREG(st.st_mode):
                raise PublishError(f"{path} is not a regular file")
            files.append(SourceFile(path, real, st))
    files.sort(key=lambda f: f.path.encode())
    dirs.sort(key=lambda d: d.path.encode())
    return files, dirs


def encrypt_model(
    src: Path,
    store: Path,
    model_key: bytes,
    settings: EncryptSettings,
    progress: Progress = lambda n: None,
) -> Manifest:
    """Encrypt every regular file under ``src`` into the empty or new folder ``store``."""
    files, dirs = scan_source(src)
    src_real = os.path.realpath(src)
    store_real = os.path.realpath(store)
    if os.path.commonpath([src_real, store_real]) == src_real:
        raise PublishError("the store folder must not be inside the source folder")
    plain = [_disk_file(f, settings.chunk_size) for f in files]
    return seal_model(plain, dirs, store, model_key, settings, progress)


def seal_model(
    files: Iterable[PlainFile],
    dirs: Iterable[DirEntry],
    store: Path,
    model_key: bytes,
    settings: EncryptSettings,
    progress: Progress = lambda n: None,
) -> Manifest:
    """Seal ``files`` into the empty or new folder ``store``; on any failure (a file's
    blocks raising, or not adding up to its size) remove everything written."""
    created = _prepare_store(store)
    try:
        blobs = store / "blobs"
        blobs.mkdir()
        entries = tuple(_seal_file(f, blobs, model_key, settings, progress) for f in files)
        manifest = Manifest(
            name=settings.model_name,
            version=settings.model_version,
            chunk_size=settings.chunk_size,
            algorithm=settings.algorithm,
            files=entries,
            dirs=tuple(dirs),
            format_version=settings.format_version,
        )
        _write_new(store / MANIFEST_NAME, seal_manifest(manifest, model_key, settings.key_uri))
        return manifest
    except BaseException:
        _remove_output(store, created)
        raise


def total_bytes(src: Path) -> int:
    return sum(f.stat.st_size for f in scan_source(src)[0])


def _disk_file(source: SourceFile, block_size: int) -> PlainFile:
    def blocks() -> Iterator[bytes]:
        with open(source.real, "rb") as reader:
            if os.fstat(reader.fileno()).st_size != source.stat.st_size:
                raise PublishError(f"{source.path} changed while it was being encrypted")
            while block := reader.read(block_size):
                yield block

    mode = stat.S_IMODE(source.stat.st_mode)
    return PlainFile(source.path, source.stat.st_size, mode, source.stat.st_mtime_ns, blocks)


def _chunks(file: PlainFile, layout: ChunkLayout) -> Iterator[bytes | memoryview]:
    """``file``'s plaintext cut into ``layout``'s chunks; PublishError unless it holds
    exactly ``layout.plaintext_size`` bytes."""
    index, pending = 0, b""
    for block in file.blocks():
        data = pending + block if pending else block
        view, at = memoryview(data), 0
        while index < layout.n_chunks and len(view) - at >= layout.chunk_len(index):
            yield view[at : at + layout.chunk_len(index)]
            at += layout.chunk_len(index)
            index += 1
        pending = bytes(view[at:])
        if index == layout.n_chunks and pending:
            break
    if index != layout.n_chunks or pending:
        raise PublishError(f"{file.path} changed while it was being encrypted")


def _seal_file(
    file: PlainFile, blobs: Path, model_key: bytes, settings: EncryptSettings, progress: Progress
) -> FileEntry:
    layout = ChunkLayout(settings.chunk_size, file.size)
    sealer = BlobSealer(model_key, layout, settings.algorithm, version=settings.format_version)
    hashes = HashListBuilder() if settings.format_version >= 2 else None
    header = sealer.header.pack()
    plain_hash = hashlib.sha256()
    blob_hash = hashlib.sha256(header)
    partial = blobs / f".partial-{os.urandom(8).hex()}"
    with open(partial, "xb") as writer:
        writer.write(header)
        for index, chunk in enumerate(_chunks(file, layout)):
            plain_hash.update(chunk)
            record = sealer.seal_chunk(index, chunk)
            blob_hash.update(record)
            writer.write(record)
            if hashes is not None:
                hashes.add(record)
            progress(len(chunk))
        root = None
        if hashes is not None:
            trailer, root = hashes.finish()
            blob_hash.update(trailer)
            writer.write(trailer)
    name = blob_hash.hexdigest()
    os.rename(partial, blobs / name)
    return FileEntry(
        path=file.path,
        size=layout.plaintext_size,
        mode=file.mode,
        mtime_ns=file.mtime_ns,
        blob=name,
        blob_size=sealer.header.blob_size,
        header_sha256=hashlib.sha256(header).hexdigest(),
        sha256=plain_hash.hexdigest(),
        hash_root=None if root is None else root.hex(),
    )


def _checked(path: str) -> str:
    try:
        check_path(path)
    except FormatError as exc:
        raise PublishError(f"cannot encrypt {path!r}: {exc}") from None
    return path


def _prepare_store(store: Path) -> bool:
    """Make sure ``store`` is a new or empty folder; return True if we created it."""
    if store.exists():
        if not store.is_dir() or any(store.iterdir()):
            raise PublishError(f"store folder {store} is not empty; refusing to mix models")
        return False
    store.mkdir(parents=True)
    return True


def _remove_output(store: Path, created: bool) -> None:
    if created:
        shutil.rmtree(store, ignore_errors=True)
    elif store.is_dir():
        for child in store.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.rename(partial, path)


def _raise(error: OSError) -> None:
    raise PublishError(f"cannot read {error.filename}: {error.strerror}")
