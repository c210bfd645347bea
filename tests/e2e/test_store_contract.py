"""The contract every Store keeps (cmlfs/stores/base.py), checked for each kind on its real
server: a folder, HTTP (nginx), S3 (moto) and OCI (docker-registry). Network stores are read
through the fault proxy (tests/faultproxy.py), which counts what reaches the server and
misbehaves when told to.

What every store promises: ``read_range`` returns exactly the bytes asked for or raises
StoreError, at every boundary, and refuses a range outside the object; a missing object is
ObjectMissing and is never retried; an object replaced after it was first seen never yields
its new bytes (ObjectChanged, or the version first seen where the store pins it: an open
descriptor, a digest); an object cut short in storage never reads as short data; transient
failures (reset, 5xx, truncated body, stall) are retried, and one that lasts fails as a plain
StoreError after the attempts allowed. The last tests check the same through a real mount:
EIO for a tampered, replaced or failing blob, the right bytes after retried faults.
"""

import errno
import hashlib
import os
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import pytest

from cmlfs.errors import StoreError
from cmlfs.format.layout import DEFAULT_CHUNK_SIZE, HEADER_LEN, NONCE_LEN, ChunkLayout
from cmlfs.stores import LocalStore, Store, open_store
from cmlfs.stores.base import ListingUnsupported, ObjectChanged, ObjectMissing, StoreSettings
from cmlfs.stores.retry import TransientStoreError
from tests.conftest import mounted, run_cli, tree_digests
from tests.e2e.stores_servers import (
    S3_BUCKET,
    Nginx,
    Registry,
    S3Server,
    blob_of,
    open_without_readahead,
)
from tests.faultproxy import KINDS as FAULTS
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.fuse

ATTEMPTS = 3
SETTINGS = StoreSettings(timeout=1.0, attempts=ATTEMPTS, insecure_http=True)
MOUNT_OPTIONS = ("--store-timeout", "1", "--store-attempts", "4")
MANIFEST = "manifest.cmlfs"
# The big object is shaped like a blob of 4 records, the last one short.
LAYOUT = ChunkLayout(DEFAULT_CHUNK_SIZE, 3 * DEFAULT_CHUNK_SIZE + 123)
SIZE = LAYOUT.blob_size


def blob_name(data: bytes) -> str:
    return "blobs/" + hashlib.sha256(data).hexdigest()


def contract_objects(where: str) -> dict[str, bytes]:
    """A manifest, a blob of ``SIZE`` bytes and a one-byte blob, different for each ``where``
    (so no two tests share a content-addressed blob)."""
    rng = random.Random(where)
    big, small = rng.randbytes(SIZE), rng.randbytes(1)
    return {MANIFEST: rng.randbytes(300), blob_name(big): big, blob_name(small): small}


def big_of(objects: dict[str, bytes]) -> str:
    return next(name for name, data in objects.items() if len(data) == SIZE)


# (offset, length) inside an object of SIZE bytes: first and last byte, empty ranges, the
# whole object, the header, and ranges that meet or cross record boundaries.
BOUNDARY_RANGES = [
    (0, 1),
    (SIZE - 1, 1),
    (0, 0),
    (HEADER_LEN, 0),
    (SIZE, 0),
    (0, SIZE),
    (0, HEADER_LEN),
    (LAYOUT.record_offset(1) - 1, 2),
    (LAYOUT.record_offset(1), LAYOUT.record_len(1)),
    LAYOUT.records_span(range(1, 3)),
    LAYOUT.records_span(range(2, 4)),
]
# Ranges not inside an object of SIZE bytes.
OUTSIDE_RANGES = [(SIZE - 1, 2), (SIZE, 1), (SIZE + 1, 0), (0, SIZE + 1), (-1, 1), (0, -1)]


# --- the stores under test --------------------------------------------------------------------


class Backend:
    """One kind of store on its server. ``where`` names one published model in it."""

    kind = ""
    pins_versions = False  # a replaced object still reads as the version first seen
    proxy: FaultProxy | None = None  # in front of the server (network stores)
    mount_options: tuple[str, ...] = ()
    env: dict[str, str] | None = None  # for the CLI: how it reaches the server (proxy)
    push_env: dict[str, str] | None = None  # and how it reaches the server itself

    def publish(self, objects: dict[str, bytes], where: str, scratch: Path) -> str:
        """Put ``objects`` through the store's own ``put`` and ``commit``; the location to
        read them from."""
        store = self._writer(where)
        try:
            for name, data in sorted(objects.items(), key=lambda item: item[0] == MANIFEST):
                source = scratch / hashlib.sha256(data).hexdigest()
                source.write_bytes(data)
                store.put(name, source, lambda n: None)
            store.commit()
        finally:
            store.close()
        return self.location(where)

    def push(self, folder: Path, where: str) -> str:
        """``cmlfs push`` of an encrypted store folder (straight to the server: the fault
        proxy forwards reads only); the location to mount it from."""
        target = self.push_target(where)
        run_cli("push", folder, target, *self.mount_options, env=self.push_env)
        return self.location(where)

    def open(self, location: str) -> Store:
        return open_store(location, SETTINGS)

    def requests(self, name: str, method: str = "GET") -> int:
        """How many ``method`` requests for object ``name`` reached the server."""
        assert self.proxy is not None
        return len(self.proxy.requests(name.rpartition("/")[2], method))

    def location(self, where: str) -> str:
        raise NotImplementedError

    def push_target(self, where: str) -> str:
        raise NotImplementedError

    def replace(self, where: str, name: str, data: bytes) -> None:
        """Publish a new version of object ``name`` the way this kind of store is updated."""
        raise NotImplementedError

    def damage(self, where: str, name: str, data: bytes) -> None:
        """Change the stored bytes of ``name`` behind the store's back (no new version)."""
        raise NotImplementedError

    def _writer(self, where: str) -> Store:
        raise NotImplementedError


class FolderBackend(Backend):
    kind = "folder"
    pins_versions = True  # reads go to the descriptor opened first, even after a rename

    def __init__(self, root: Path) -> None:
        self.root = root
        self._mtime = 1_000_000

    def location(self, where: str) -> str:
        return str(self.root / where)

    def push_target(self, where: str) -> str:
        return str(self.root / where)

    def replace(self, where: str, name: str, data: bytes) -> None:
        """As ``put`` does: a new file renamed into place (with its own mtime, so an HTTP
        server gives it a new ETag)."""
        path = self.root / where / name
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(data)
        self._mtime += 1000
        os.utime(fresh, (self._mtime, self._mtime))
        os.rename(fresh, path)

    def damage(self, where: str, name: str, data: bytes) -> None:
        with open(self.root / where / name, "r+b") as f:
            f.write(data)
            f.truncate()

    def _writer(self, where: str) -> Store:
        (self.root / where).mkdir(parents=True, exist_ok=True)
        return LocalStore(self.root / where)


class HttpBackend(FolderBackend):
    kind = "http"
    pins_versions = False  # an ETag or size that differs from the first answer fails the read

    def __init__(self, nginx: Nginx, proxy: FaultProxy) -> None:
        super().__init__(nginx.root)
        self.proxy = proxy

    def location(self, where: str) -> str:
        return f"{self.proxy.url}/{where}"


class S3Backend(Backend):
    kind = "s3"

    def __init__(self, server: S3Server, proxy: FaultProxy) -> None:
        self.server, self.proxy = server, proxy
        self.env = {**server.env, "AWS_ENDPOINT_URL": proxy.url}
        self.push_env = server.env

    def location(self, where: str) -> str:
        return f"s3://{S3_BUCKET}/contract/{where}"

    def push_target(self, where: str) -> str:
        return self.location(where)

    def open(self, location: str) -> Store:
        with mock.patch.dict(os.environ, self.env, clear=True):  # boto3 reads it once, here
            return super().open(location)

    def replace(self, where: str, name: str, data: bytes) -> None:
        key = f"contract/{where}/{name}"
        self.server.client().put_object(Bucket=S3_BUCKET, Key=key, Body=data)

    damage = replace  # S3 has no other way to change an object

    def _writer(self, where: str) -> Store:
        with mock.patch.dict(os.environ, self.server.env, clear=True):
            return open_store(self.location(where), SETTINGS)


class OciBackend(Backend):
    kind = "oci"
    pins_versions = True  # the tag is resolved once; from then on everything is by digest
    mount_options = ("--insecure-http",)

    def __init__(self, registry: Registry, proxy: FaultProxy) -> None:
        self.registry, self.proxy = registry, proxy
        self._published: dict[str, dict[str, bytes]] = {}

    def publish(self, objects: dict[str, bytes], where: str, scratch: Path) -> str:
        self._published[where] = objects
        return super().publish(objects, where, scratch)

    def location(self, where: str) -> str:
        return f"oci://127.0.0.1:{self.proxy.port}/contract/{where}:v1"

    def push_target(self, where: str) -> str:
        return self.registry.ref(f"contract/{where}:v1")

    def replace(self, where: str, name: str, data: bytes) -> None:
        """Push a new artifact to the tag: blobs are content-addressed, so only the manifest
        gets a new version under the same name."""
        assert name == MANIFEST, "an OCI blob cannot be replaced under its own name"
        objects = {**self._published[where], MANIFEST: data}
        scratch = self.registry.storage.parent / f"scratch-{where}"
        scratch.mkdir(exist_ok=True)
        self.publish(objects, where, scratch)

    def damage(self, where: str, name: str, data: bytes) -> None:
        self.registry.blob_data(name.removeprefix("blobs/")).write_bytes(data)

    def _writer(self, where: str) -> Store:
        return open_store(self.push_target(where), SETTINGS)


KINDS = ("folder", "http", "s3", "oci")
NETWORK = ("http", "s3", "oci")


@pytest.fixture(scope="module", params=KINDS)
def backend(request, tmp_path_factory) -> Iterator[Backend]:
    """One kind of store on its real server, the network ones behind a fault proxy."""
    kind = request.param
    if kind == "folder":
        yield FolderBackend(tmp_path_factory.mktemp("contract-folder"))
        return
    server = request.getfixturevalue({"http": "nginx", "s3": "s3_server", "oci": "registry"}[kind])
    port = {"http": lambda: server.port, "s3": lambda: int(server.endpoint.rpartition(":")[2])}
    port["oci"] = lambda: int(server.host.rpartition(":")[2])
    proxy = FaultProxy(port[kind](), stall_seconds=3.0)  # stalls outlast the 1 s store timeout
    try:
        yield {"http": HttpBackend, "s3": S3Backend, "oci": OciBackend}[kind](server, proxy)
    finally:
        proxy.close()


@pytest.fixture(autouse=True)
def no_faults_left(backend: Backend) -> Iterator[None]:
    """Each test starts with no fault and no recorded request of another test."""
    if backend.proxy:
        backend.proxy.reset()
    yield
    if backend.proxy:
        backend.proxy.reset()


@pytest.fixture(scope="module")
def shared(backend: Backend, tmp_path_factory) -> tuple[str, dict[str, bytes]]:
    """(location, objects) published once per kind, for the tests that only read."""
    objects = contract_objects(f"shared-{backend.kind}")
    scratch = tmp_path_factory.mktemp(f"contract-objects-{backend.kind}")
    return backend.publish(objects, "shared", scratch), objects


@pytest.fixture
def own(backend: Backend, tmp_path: Path) -> tuple[str, str, dict[str, bytes]]:
    """(where, location, objects) published for this test alone, which may change them."""
    where = tmp_path.name.lower()
    objects = contract_objects(where)
    return where, backend.publish(objects, where, tmp_path), objects


@pytest.fixture
def store(backend: Backend, shared) -> Iterator[Store]:
    opened = backend.open(shared[0])
    yield opened
    opened.close()


# Tests of the transport: a folder has none.
network = pytest.mark.parametrize("backend", NETWORK, indirect=True)


# --- ranged reads ----------------------------------------------------------------------------


def test_ranges_at_every_boundary_read_exactly_those_bytes(store, shared):
    _, objects = shared
    big = big_of(objects)
    data = objects[big]
    assert store.size(big) == SIZE
    for offset, length in BOUNDARY_RANGES:
        assert store.read_range(big, offset, length) == data[offset : offset + length], (
            offset,
            length,
        )
    for name, content in objects.items():
        assert store.size(name) == len(content)
        assert store.read_all(name) == content
        assert store.read_range(name, len(content) - 1, 1) == content[-1:]
        assert store.read_range(name, len(content), 0) == b""


@pytest.mark.parametrize(("offset", "length"), OUTSIDE_RANGES)
def test_ranges_outside_the_object_are_refused(backend, store, shared, offset, length):
    """A range that does not lie inside the object is a StoreError (not a short read, not a
    missing object), refused before anything is asked of the server."""
    big = big_of(shared[1])
    assert store.size(big) == SIZE
    with pytest.raises(StoreError) as refused:
        store.read_range(big, offset, length)
    assert not isinstance(refused.value, ObjectMissing)
    if backend.proxy:
        assert backend.requests(big) == 0


def test_a_whole_read_is_refused_over_its_limit(store, shared):
    big = big_of(shared[1])
    with pytest.raises(StoreError, match=f"{SIZE} bytes is more than the {SIZE - 1} allowed"):
        store.read_all(big, limit=SIZE - 1)
    assert store.read_all(big, limit=SIZE) == shared[1][big]


def test_concurrent_reads_from_threads_and_reads_after_close(store, shared):
    """Stores are called from the reader's worker threads; ``close`` drops connections and
    descriptors, and the next read opens new ones."""
    _, objects = shared
    big = big_of(objects)
    data = objects[big]
    ranges = [(offset, 5000) for offset in range(0, SIZE - 5000, 3001)]
    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(lambda r: store.read_range(big, *r), ranges))
    assert parts == [data[o : o + n] for o, n in ranges]
    store.close()
    assert (
        store.read_range(big, *LAYOUT.records_span(range(2, 4))) == data[LAYOUT.record_offset(2) :]
    )


# --- missing objects and names ---------------------------------------------------------------


def test_a_missing_object_is_object_missing_and_never_retried(backend, store):
    absent = blob_name(b"never published")
    for call in (
        lambda: store.size(absent),
        lambda: store.read_range(absent, 0, 1),
        lambda: store.read_all(absent),
    ):
        with pytest.raises(ObjectMissing):
            call()
    if backend.proxy:  # HEAD for http and s3; oci knows from its image manifest
        asked = backend.requests(absent, "HEAD") + backend.requests(absent, "GET")
        assert asked <= 3, "a missing object was asked for more than once per call"
    assert store.stats.retries == 0


@pytest.mark.parametrize("name", ["../manifest.cmlfs", "blobs/ABC", "blobs/" + "0" * 63, ""])
def test_a_name_outside_the_layout_is_refused_without_asking(backend, store, name):
    for call in (lambda: store.size(name), lambda: store.read_range(name, 0, 1)):
        with pytest.raises(StoreError, match="invalid store object name") as refused:
            call()
        assert not isinstance(refused.value, ObjectMissing)
    if backend.proxy:
        assert backend.proxy.requests("/", "HEAD") == [] and backend.proxy.requests("/") == []


def test_list_names_every_object_or_says_it_cannot(backend, store, shared):
    _, objects = shared
    if backend.kind == "http":
        with pytest.raises(ListingUnsupported):
            store.list()
    else:
        assert sorted(store.list()) == sorted(objects)


# --- objects that change in the store --------------------------------------------------------


def test_a_replaced_object_never_reads_as_its_new_version(backend, own, tmp_path):
    """A new version of the manifest is published (same size, then another size) after a
    store first read it: the store that saw the first version fails with ObjectChanged or
    keeps reading that version; a store opened afterwards reads the new one."""
    where, location, objects = own
    first = objects[MANIFEST]
    store = backend.open(location)
    assert store.read_range(MANIFEST, 0, 100) == first[:100]
    for version in (bytes(b ^ 0x5A for b in first), first + b"longer"):
        backend.replace(where, MANIFEST, version)
        if backend.pins_versions:
            assert store.read_range(MANIFEST, 0, len(first)) == first
            assert store.size(MANIFEST) == len(first)
        else:
            before = backend.requests(MANIFEST)
            with pytest.raises(ObjectChanged, match=r"replaced|changed"):
                store.read_range(MANIFEST, 0, len(first))
            assert backend.requests(MANIFEST) == before + 1, "a changed object was retried"
            assert store.stats.retries == 0
        fresh = backend.open(location)
        assert fresh.read_all(MANIFEST) == version
        fresh.close()
    store.close()


def test_an_object_cut_short_in_storage_never_reads_as_short_data(backend, own):
    """The blob's stored bytes are cut to half after the store first saw it: a range past the
    new end fails; a range before it reads the same bytes as before or fails as changed."""
    where, location, objects = own
    big = big_of(objects)
    data = objects[big]
    store = backend.open(location)
    assert store.read_range(big, 0, HEADER_LEN) == data[:HEADER_LEN]
    backend.damage(where, big, data[: SIZE // 2])
    with pytest.raises(StoreError) as failed:
        store.read_range(big, *LAYOUT.records_span(range(2, 4)))
    assert "gave up" not in str(failed.value)  # known for what it is, not retried to the end
    if backend.kind == "folder":  # the file as it is now, whose first half did not change
        assert store.read_range(big, 0, HEADER_LEN) == data[:HEADER_LEN]
    else:  # every answer is checked against the size first seen
        with pytest.raises(ObjectChanged):
            store.read_range(big, 0, HEADER_LEN)
    store.close()


# --- transient failures and retries ----------------------------------------------------------


@network
@pytest.mark.parametrize("fault", FAULTS)
def test_a_transient_fault_on_a_read_is_retried_with_the_right_bytes(backend, store, shared, fault):
    _, objects = shared
    big = big_of(objects)
    offset, length = LAYOUT.records_span(range(1, 3))
    store.size(big)
    backend.proxy.inject(fault, path=big.removeprefix("blobs/"))
    assert store.read_range(big, offset, length) == objects[big][offset : offset + length]
    assert backend.proxy.pending() == []
    seen = backend.proxy.requests(big.removeprefix("blobs/"))
    assert [s.fault for s in seen] == [fault, None]
    assert store.stats.retries == 1
    assert seen[0].range == seen[1].range == f"bytes={offset}-{offset + length - 1}"


@network
def test_a_fault_on_the_first_look_up_is_retried(backend, store, shared):
    """The first request for an object (a HEAD; for OCI the image manifest) is retried too."""
    _, objects = shared
    big = big_of(objects)
    if backend.kind == "oci":
        backend.proxy.inject("503", path="/manifests/")
    else:
        backend.proxy.inject("503", path=big.removeprefix("blobs/"), method="HEAD")
    assert store.size(big) == SIZE
    assert backend.proxy.pending() == []
    assert store.stats.retries == 1


@network
@pytest.mark.parametrize("fault", ["503", "short"])
def test_a_fault_that_lasts_fails_after_the_attempts_and_the_store_recovers(
    backend, store, shared, fault
):
    _, objects = shared
    big = big_of(objects)
    store.size(big)
    backend.proxy.inject(fault, path=big.removeprefix("blobs/"), times=None)
    with pytest.raises(StoreError, match=f"gave up after {ATTEMPTS} attempts") as failed:
        store.read_range(big, 0, SIZE)
    assert not isinstance(failed.value, TransientStoreError)
    assert backend.requests(big) == ATTEMPTS
    assert store.stats.retries == ATTEMPTS - 1
    backend.proxy.reset()
    assert store.read_range(big, 0, SIZE) == objects[big]


# --- the same through a mount ----------------------------------------------------------------


@pytest.fixture
def pushed(backend: Backend, encrypted_model, tmp_path):
    """(src, contents, local store, key, where, location) of the sample model pushed to the
    backend; its blob of model.safetensors and that blob's bytes."""
    src, contents, folder, key = encrypted_model
    where = f"model-{tmp_path.name.lower()}"
    location = backend.push(folder, where)
    return src, contents, folder, key, where, location


DETECTED = pytest.mark.expect_log("event=read_failed .*replaced since it was first read")


def mount(backend: Backend, location: str, mnt: Path, key: Path, *options):
    return mounted(
        location, mnt, "--key-file", key, *backend.mount_options, *options, env=backend.env
    )


@pytest.mark.expect_log(r"event=(chunk_rejected|integrity_failed) .*model\.safetensors")
def test_a_tampered_blob_reads_as_eio_through_a_mount(backend, pushed, tmp_path):
    _, contents, folder, key, where, location = pushed
    name = "blobs/" + blob_of(folder, key, "model.safetensors")
    data = bytearray((folder / name).read_bytes())
    data[HEADER_LEN + 1000] ^= 1
    backend.damage(where, name, bytes(data))
    with mount(backend, location, tmp_path / "mnt", key) as mnt:
        with pytest.raises(OSError) as failed:
            (mnt / "model.safetensors").read_bytes()
        assert failed.value.errno == errno.EIO
        assert (mnt / "config.json").read_bytes() == contents["config.json"]
    verify = run_cli("verify", location, "--key-file", key, *backend.mount_options, check=False)
    assert verify.returncode != 0


@pytest.mark.parametrize(
    "backend",
    ["folder", pytest.param("http", marks=DETECTED), pytest.param("s3", marks=DETECTED)],
    indirect=True,
)
def test_a_blob_replaced_under_a_running_mount_never_reads_as_the_new_one(
    backend, pushed, tmp_path
):
    """Chunk 4 of the replacement differs. Where the store detects the change the read fails
    with EIO and the log says why; a folder keeps reading the file it opened. Not OCI: its
    blobs are content-addressed, so a new version has a new name (a tag moved under a reader
    is the replaced-object test above)."""
    _, contents, folder, key, where, location = pushed
    name = "blobs/" + blob_of(folder, key, "model.safetensors")
    replacement = bytearray((folder / name).read_bytes())
    layout = ChunkLayout(DEFAULT_CHUNK_SIZE, len(contents["model.safetensors"]))
    replacement[layout.record_offset(4) + NONCE_LEN + 5] ^= 1
    log = tmp_path / "daemon.log"
    # --warm-up 0: the warm-up would read chunk 4 before the replacement, and this test is
    # about what the store does with a changed object
    options = ("--fetch-size", "64K", "--cache-size", "1M", "--warm-up", "0", "--log-file", log)
    plain = contents["model.safetensors"]
    with (
        mount(backend, location, tmp_path / "mnt", key, *options) as mnt,
        open_without_readahead(mnt / "model.safetensors") as f,  # chunk 4 not fetched yet
    ):
        assert f.read(4096) == plain[:4096]
        backend.replace(where, name, bytes(replacement))
        f.seek(4 * DEFAULT_CHUNK_SIZE)
        if backend.pins_versions:
            assert (
                f.read(DEFAULT_CHUNK_SIZE) == plain[4 * DEFAULT_CHUNK_SIZE :][:DEFAULT_CHUNK_SIZE]
            )
        else:
            with pytest.raises(OSError) as failed:
                f.read(DEFAULT_CHUNK_SIZE)
            assert failed.value.errno == errno.EIO
    if not backend.pins_versions:
        assert "replaced since it was first read" in log.read_text()


@pytest.mark.expect_log("event=read_failed .*gave up after 4 attempts")
@network
def test_store_faults_through_a_mount(backend, pushed, tmp_path):
    """A blob that keeps failing reads as EIO while the rest stays readable, and reads once
    the store recovers; one transient fault of each kind on other blobs is retried."""
    src, contents, folder, key, _, location = pushed
    proxy = backend.proxy
    with mount(backend, location, tmp_path / "mnt", key, *MOUNT_OPTIONS) as mnt:
        proxy.inject("503", path=blob_of(folder, key, "model.safetensors"), times=None)
        with pytest.raises(OSError) as failed:
            (mnt / "model.safetensors").read_bytes()
        assert failed.value.errno == errno.EIO
        for name in ("config.json", "exact-chunk.bin", "tokenizer/vocab.txt"):
            assert (mnt / name).read_bytes() == contents[name]
        proxy.reset()
        others = ["chunk-plus-one.bin", "chunk-minus-one.bin", "one-byte"]
        others += ["deep/a/b/c/d/e/f/leaf.bin", "ünïcödé/модель 日本.bin"]
        for fault, name in zip(FAULTS, others, strict=True):
            proxy.inject(fault, path=blob_of(folder, key, name))
        assert tree_digests(mnt) == tree_digests(src)
    assert proxy.pending() == []
    assert {s.fault for s in proxy.requests() if s.fault} == set(FAULTS)
