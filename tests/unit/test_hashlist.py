"""Format 2's hash list (cmlfs.format.hashlist) and the reader's checks against it.

The threat: someone who holds the model key re-seals a chunk in place (a valid AEAD
record of other plaintext) and leaves the manifest alone. Format 1 serves it; format 2
must refuse that chunk alone, on every read path (inline, worker threads opening on
read, the ciphertext disk cache), log it once and never cache it. Any change to the
hash material itself fails the reads that need it.
"""

import logging
import os
import shutil
from pathlib import Path

import pytest
import trio
from blake3 import blake3

from cmlfs.errors import FormatError, IntegrityError
from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.hashlist import (
    HASH_LEN,
    LEAVES_PER_PAGE,
    PAGE_LEN,
    HashLayout,
    HashListBuilder,
    check_pages,
    hash_root,
)
from cmlfs.format.header import BlobHeader, chunk_associated_data
from cmlfs.format.keys import Purpose, derive_object_key
from cmlfs.format.layout import HEADER_LEN, ChunkLayout
from cmlfs.manifest import MANIFEST_NAME, DirEntry, FileEntry, Manifest, open_manifest
from cmlfs.publish import EncryptSettings, encrypt_model
from cmlfs.reader import ModelReader
from cmlfs.stores import LocalStore
from cmlfs.stores.diskcache import DiskCache

KEY = bytes(range(32))
CHUNK = 4096
N_CHUNKS = 6


# --- arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "pages"), [(0, 0), (1, 1), (127, 1), (128, 1), (129, 2), (256, 2), (257, 3)]
)
def test_pages_and_offsets(chunks: int, pages: int):
    layout = ChunkLayout(CHUNK, chunks * CHUNK)
    hashes = HashLayout(layout)
    assert hashes.n_pages == pages
    assert hashes.leaves_offset == HEADER_LEN + chunks * (CHUNK + 28)
    assert hashes.digests_offset == hashes.leaves_offset + 32 * chunks
    assert hashes.blob_size == hashes.digests_offset + 32 * pages
    if chunks:
        offset, length = hashes.pages_span(range(0, pages))
        assert (offset, length) == (hashes.leaves_offset, 32 * chunks)
        assert hashes.pages_for(range(chunks - 1, chunks)) == range(pages - 1, pages)


def test_the_builder_follows_the_definition():
    records = [os.urandom(100) for _ in range(LEAVES_PER_PAGE + 3)]
    builder = HashListBuilder()
    for record in records:
        builder.add(record)
    trailer, root = builder.finish()
    leaves = b"".join(blake3(r).digest() for r in records)
    digests = blake3(leaves[:PAGE_LEN]).digest() + blake3(leaves[PAGE_LEN:]).digest()
    assert trailer == leaves + digests
    assert root == blake3(digests).digest() == hash_root(digests)
    assert HashListBuilder().finish() == (b"", blake3(b"").digest())
    check_pages(digests, 1, leaves[PAGE_LEN:])
    with pytest.raises(IntegrityError, match="hash page 1"):
        check_pages(digests, 0, leaves[:PAGE_LEN] + bytes(len(leaves) - PAGE_LEN))


def test_a_manifest_holds_hash_roots_exactly_in_format_2():
    entry = dict(path="f", size=1, mode=0o644, mtime_ns=0, blob="a" * 64, blob_size=1)
    entry |= dict(header_sha256="b" * 64, sha256="c" * 64)
    dirs = (DirEntry("", 0o755, 0),)
    for version, root in ((1, "d" * 64), (2, None)):
        with pytest.raises(FormatError):
            Manifest(
                "m",
                "1",
                CHUNK,
                Algorithm.AES_256_GCM_SIV,
                (FileEntry(**entry, hash_root=root),),
                dirs,
                format_version=version,
            )
    with pytest.raises(FormatError):
        FileEntry(**entry, hash_root="D" * 64)


# --- the reader -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """A format-1 and a format-2 encryption of one 6-chunk file and a small one."""
    root = tmp_path_factory.mktemp("hashlist")
    src = root / "src"
    src.mkdir()
    contents = {"w.bin": os.urandom(N_CHUNKS * CHUNK - 10), "s.txt": b"small"}
    for name, data in contents.items():
        (src / name).write_bytes(data)
    for version in (1, 2):
        settings = EncryptSettings(chunk_size=CHUNK, format_version=version)
        encrypt_model(src, root / f"v{version}", KEY, settings)
    return {"root": root, "contents": contents}


def copy_store(stores: dict, version: int, tmp_path: Path) -> Path:
    store = tmp_path / f"v{version}"
    shutil.copytree(stores["root"] / f"v{version}", store)
    return store


def blob_of(store: Path, name: str = "w.bin") -> Path:
    manifest = open_manifest((store / MANIFEST_NAME).read_bytes(), KEY)
    return store / next(f.blob_name for f in manifest.files if f.path == name)


def reseal(blob: Path, index: int, plaintext: bytes) -> None:
    """What a key holder can do: seal other plaintext as chunk ``index``, in place."""
    data = bytearray(blob.read_bytes())
    header = BlobHeader.parse(bytes(data[:HEADER_LEN]))
    purpose = Purpose.content(header.version)
    aead_key, _ = derive_object_key(KEY, header.salt, purpose)
    layout = header.layout
    ad = chunk_associated_data(header.digest, index, layout.is_last(index))
    record = RecordCipher(header.algorithm, aead_key).seal(plaintext, ad, os.urandom(12))
    start = layout.record_offset(index)
    data[start : start + len(record)] = record
    blob.write_bytes(data)


MODES = {
    "inline": dict(inline=True),  # as worker processes read: all on the event loop
    "threads": dict(threads=2, run_bytes=4 * CHUNK, prefetch_bytes=8 * CHUNK),
    "disk-cache": dict(threads=2, run_bytes=2 * CHUNK),
}


def open_reader(store: Path, mode: str, tmp_path: Path, **kwargs) -> tuple[ModelReader, int]:
    local = LocalStore(store)
    manifest = open_manifest(local.read_all(MANIFEST_NAME), KEY)
    options = MODES[mode] | kwargs
    if mode == "disk-cache":
        options["disk_cache"] = DiskCache(tmp_path / "disk", 1 << 20)
    reader = ModelReader(manifest, local, KEY, **options)
    return reader, [f.path for f in manifest.files].index("w.bin")


def read(reader: ModelReader, index: int, offset: int, size: int) -> bytes:
    return bytes(trio.run(reader.read, index, offset, size))


def test_format_1_serves_a_chunk_resealed_by_a_key_holder(stores, tmp_path):
    """The documented limit of format 1 (FORMAT.md 10.4): the forged bytes are served."""
    store = copy_store(stores, 1, tmp_path)
    reseal(blob_of(store), 2, b"F" * CHUNK)
    reader, index = open_reader(store, "inline", tmp_path)
    assert read(reader, index, 2 * CHUNK, CHUNK) == b"F" * CHUNK


@pytest.mark.expect_log("event=chunk_rejected")
@pytest.mark.parametrize("mode", MODES)
def test_format_2_refuses_only_the_resealed_chunk_logs_it_once_and_never_caches_it(
    stores, tmp_path, mode, caplog
):
    store = copy_store(stores, 2, tmp_path)
    reseal(blob_of(store), 2, b"F" * CHUNK)
    plain = stores["contents"]["w.bin"]
    reader, index = open_reader(store, mode, tmp_path)
    caplog.set_level(logging.ERROR, "cmlfs.reader")
    for _ in range(3):
        with pytest.raises(IntegrityError, match="chunk 2: record does not match its hash"):
            read(reader, index, 0, len(plain))
        with pytest.raises(IntegrityError):
            read(reader, index, 2 * CHUNK + 100, 10)
        assert (index, 2) not in reader.cache
    assert read(reader, index, 0, 2 * CHUNK) == plain[: 2 * CHUNK]
    assert read(reader, index, 3 * CHUNK, len(plain)) == plain[3 * CHUNK :]
    rejected = [r for r in caplog.records if "chunk_rejected" in r.getMessage()]
    assert len(rejected) == 1 and "w.bin: chunk 2" in rejected[0].getMessage()
    if mode == "disk-cache":  # only the chunks that passed were kept on disk
        reader._disk_cache = DiskCache(tmp_path / "disk", 1 << 20)
        offset, length = reader._openers[index].layout.records_span(range(2, 3))
        assert (
            reader._disk_cache.get(reader.manifest.files[index].blob_name, offset, length) is None
        )


def test_a_disk_cached_record_is_checked_against_its_hash(stores, tmp_path):
    """A record changed in the ciphertext disk cache (anyone's disk) is refused there too."""
    store = copy_store(stores, 2, tmp_path)
    plain = stores["contents"]["w.bin"]
    reader, index = open_reader(store, "disk-cache", tmp_path)
    assert read(reader, index, 0, 2 * CHUNK) == plain[: 2 * CHUNK]  # one run: chunks 0 and 1
    forged = copy_store(stores, 2, tmp_path / "forged")
    reseal(blob_of(forged), 0, b"F" * CHUNK)
    cache = DiskCache(tmp_path / "disk", 1 << 20)
    blob = reader.manifest.files[index].blob_name
    offset, length = reader._openers[index].layout.records_span(range(0, 2))
    cached = cache.get(blob, offset, length)
    assert cached is not None
    forged_records = blob_of(forged).read_bytes()[offset : offset + length]
    cache.put(blob, offset, length, forged_records)  # replaces the authentic run
    again, _ = open_reader(store, "disk-cache", tmp_path)
    assert read(again, index, 0, 2 * CHUNK) == plain[: 2 * CHUNK]  # refetched from the store
    assert cache.get(blob, offset, length) == cached  # and the authentic run cached again


def hash_material(store: Path) -> tuple[Path, int, int]:
    """The blob of w.bin and the offsets of its leaves and of its page digests."""
    blob = blob_of(store)
    hashes = HashLayout(BlobHeader.parse(blob.read_bytes()[:HEADER_LEN]).layout)
    return blob, hashes.leaves_offset, hashes.digests_offset


@pytest.mark.expect_log("event=integrity_failed")
def test_every_bit_flip_in_the_hash_material_fails_the_file(stores, tmp_path):
    """A flipped leaf: its page no longer matches its digest, and every chunk of the page
    (here the whole file) fails; a flipped page digest: the root no longer matches, and the
    file fails before any chunk is fetched."""
    store = copy_store(stores, 2, tmp_path)
    blob, leaves, digests = hash_material(store)
    pristine = blob.read_bytes()
    assert len(pristine) - leaves == HASH_LEN * (N_CHUNKS + 1)
    plain = stores["contents"]["w.bin"]
    for offset in range(leaves, len(pristine)):
        for bit in range(8):
            damaged = bytearray(pristine)
            damaged[offset] ^= 1 << bit
            blob.write_bytes(damaged)
            reader, index = open_reader(store, "inline", tmp_path, cache_bytes=0)
            if offset >= digests:
                with pytest.raises(IntegrityError, match="does not match the manifest's hash_root"):
                    trio.run(reader.check, index)
            for chunk in range(N_CHUNKS):
                with pytest.raises(IntegrityError):
                    read(reader, index, chunk * CHUNK, 1)
    blob.write_bytes(pristine)
    reader, index = open_reader(store, "inline", tmp_path)
    assert read(reader, index, 0, len(plain)) == plain


@pytest.mark.expect_log("event=integrity_failed")
def test_a_record_with_a_valid_tag_but_another_leaf_fails_even_with_its_page_rebuilt(
    stores, tmp_path
):
    """Rewriting the leaf to match the forged record moves the failure up a level: the page
    digest, then the root in the sealed manifest. There is no place left to forge."""
    store = copy_store(stores, 2, tmp_path)
    reseal(blob_of(store), 1, b"F" * CHUNK)
    blob, leaves, digests = hash_material(store)
    data = bytearray(blob.read_bytes())
    layout = BlobHeader.parse(bytes(data[:HEADER_LEN])).layout
    record = data[layout.record_offset(1) :][: layout.record_len(1)]
    data[leaves + HASH_LEN : leaves + 2 * HASH_LEN] = blake3(record).digest()
    data[digests:] = blake3(data[leaves:digests]).digest()
    blob.write_bytes(data)
    reader, index = open_reader(store, "inline", tmp_path)
    with pytest.raises(IntegrityError, match="hash_root"):
        read(reader, index, CHUNK, 10)


def test_hash_material_is_held_within_the_cache_budget(stores, tmp_path):
    """The page digests of an opened file and the pages in use count as cache bytes; pages
    fill at most an eighth of the budget, and with no budget none are held."""
    store = copy_store(stores, 2, tmp_path)
    plain = stores["contents"]["w.bin"]
    reader, index = open_reader(store, "inline", tmp_path, cache_bytes=64 * 1024)
    assert read(reader, index, 0, len(plain)) == plain
    assert reader.cache.held == HASH_LEN + HASH_LEN * N_CHUNKS  # one digest, one short page
    assert reader.cache.used <= reader.cache.budget
    bare, index = open_reader(store, "inline", tmp_path, cache_bytes=0)
    assert read(bare, index, 0, len(plain)) == plain
    assert bare.cache.held == HASH_LEN and not bare._pages  # the digest list only


def test_format_1_stores_still_read(stores, tmp_path):
    reader, index = open_reader(stores["root"] / "v1", "threads", tmp_path)
    assert reader.manifest.format_version == 1
    plain = stores["contents"]["w.bin"]
    assert read(reader, index, 0, len(plain)) == plain
    assert reader.cache.held == 0


@pytest.mark.expect_log("event=integrity_failed")
def test_damaged_hash_material_fails_every_read_and_is_logged_once(stores, tmp_path, caplog):
    """A store that keeps serving a damaged page digest or leaf page fails every read of
    what it covers (nothing checked is kept), counted each time, but logged once per file
    or page, as a damaged record is: repeated reads do not flood the log."""
    store = copy_store(stores, 2, tmp_path)
    blob, leaves, digests = hash_material(store)
    pristine = blob.read_bytes()
    caplog.set_level(logging.ERROR, "cmlfs.reader")
    for offset, reason in ((digests, "hash_root"), (leaves, "hash page 0")):
        caplog.clear()
        damaged = bytearray(pristine)
        damaged[offset] ^= 1
        blob.write_bytes(damaged)
        reader, index = open_reader(store, "inline", tmp_path)
        for _ in range(3):
            with pytest.raises(IntegrityError, match=reason):
                read(reader, index, CHUNK, 10)
        assert reader.stats.integrity_failures == 3
        logged = [r.getMessage() for r in caplog.records if "integrity_failed" in r.getMessage()]
        assert len(logged) == 1 and reason in logged[0], logged
