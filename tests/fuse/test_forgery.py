"""The key-holder forgery of issue 18 through a real mount, and old stores still mounting.

Anyone who ever held the model key (every attested TEE it was released to) can re-seal
a chunk of a blob in place with other plaintext; the manifest stays as it was, so a key
bundle's manifest pin still matches. Format 1 serves the forged bytes (FORMAT.md 10.4
says so); format 2 answers EIO for that chunk's range only, every time, and logs it once.
"""

import errno
import json
import os
from pathlib import Path

import pytest

from cmlfs.format.aead import RecordCipher
from cmlfs.format.header import BlobHeader, chunk_associated_data
from cmlfs.format.keys import Purpose, derive_object_key
from cmlfs.format.layout import HEADER_LEN
from cmlfs.manifest import MANIFEST_NAME, manifest_digest, open_manifest
from tests.conftest import mounted, run_cli

pytestmark = pytest.mark.fuse

CHUNK = 4096
VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def reseal(store: Path, key: bytes, path: str, index: int, plaintext: bytes) -> None:
    """Seal ``plaintext`` as chunk ``index`` of ``path``'s blob with the model key, in place."""
    manifest = open_manifest((store / MANIFEST_NAME).read_bytes(), key)
    blob = store / next(f.blob_name for f in manifest.files if f.path == path)
    data = bytearray(blob.read_bytes())
    header = BlobHeader.parse(bytes(data[:HEADER_LEN]))
    aead_key, _ = derive_object_key(key, header.salt, Purpose.content(header.version))
    ad = chunk_associated_data(header.digest, index, header.layout.is_last(index))
    record = RecordCipher(header.algorithm, aead_key).seal(plaintext, ad, os.urandom(12))
    start = header.layout.record_offset(index)
    data[start : start + len(record)] = record
    blob.write_bytes(data)


def read_range(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    """A model encrypted in format 1 and in format 2, chunk 3 of weights.bin re-sealed."""
    root = tmp_path_factory.mktemp("forgery")
    src = root / "model"
    src.mkdir()
    plain = os.urandom(8 * CHUNK + 123)
    (src / "weights.bin").write_bytes(plain)
    key = root / "model.key"
    run_cli("keygen", "--out", key)
    for version in ("1", "2"):
        store = root / f"v{version}"
        run_cli("encrypt", src, store, "--key-file", key, "--chunk-size", "4K", "--format", version)
        reseal(store, key.read_bytes(), "weights.bin", 3, b"POISON" * (CHUNK // 6) + b"!!!!")
    return root, key, plain


def test_inspect_shows_the_format_and_the_manifest_digest(forged):
    root, _, _ = forged
    for version in ("1", "2"):
        store = root / f"v{version}"
        shown = run_cli("inspect", store).stdout
        assert f"format:      {version}\n" in shown
        digest = manifest_digest((store / MANIFEST_NAME).read_bytes())
        assert f"manifest:    sha256:{digest}\n" in shown


def test_format_1_serves_the_key_holders_forgery(forged):
    root, key, plain = forged
    with mounted(root / "v1", root / "mnt1", "--key-file", key) as mnt:
        served = (mnt / "weights.bin").read_bytes()
    assert served[3 * CHUNK : 3 * CHUNK + 6] == b"POISON"
    assert served[: 3 * CHUNK] == plain[: 3 * CHUNK]


@pytest.mark.expect_log("event=chunk_rejected")
def test_format_2_refuses_the_forgery_with_eio_every_time_and_logs_it_once(forged):
    root, key, plain = forged
    log = root / "v2.log"
    with mounted(root / "v2", root / "mnt2", "--key-file", key, "--log-file", log) as mnt:
        weights = mnt / "weights.bin"
        for _ in range(2):  # a forged record is never cached: the second read fails too
            with pytest.raises(OSError) as caught:
                read_range(weights, 3 * CHUNK + 10, 100)
            assert caught.value.errno == errno.EIO
            with pytest.raises(OSError) as caught:
                weights.read_bytes()
            assert caught.value.errno == errno.EIO
        assert read_range(weights, 0, 3 * CHUNK) == plain[: 3 * CHUNK]
        assert read_range(weights, 4 * CHUNK, len(plain)) == plain[4 * CHUNK :]
    lines = [line for line in log.read_text().splitlines() if "chunk 3" in line]
    assert len(lines) == 1 and "event=chunk_rejected" in lines[0]
    assert "record does not match its hash" in lines[0]


def test_a_store_made_from_the_v1_golden_vectors_still_mounts(tmp_path):
    """Stores written before format 2 keep mounting: the v1 vectors as a store folder."""
    manifest = json.loads((VECTORS / "v1-manifest-aes-256-gcm-siv.json").read_text())
    store = tmp_path / "store"
    (store / "blobs").mkdir(parents=True)
    (store / MANIFEST_NAME).write_bytes(bytes.fromhex(manifest["sealed"]))
    plaintexts = {}
    for name in ("v1-blob-aes-256-gcm-siv.json", "v1-blob-empty-aes-256-gcm-siv.json"):
        blob = json.loads((VECTORS / name).read_text())
        data = bytes.fromhex(blob["header"]) + b"".join(
            bytes.fromhex(r["record"]) for r in blob["records"]
        )
        (store / "blobs" / blob["blob_sha256"]).write_bytes(data)
        plaintexts[blob["header_sha256"]] = bytes.fromhex(blob["plaintext"])
    key = tmp_path / "vector.key"
    key.write_bytes(bytes.fromhex(manifest["model_key"]))
    key.chmod(0o600)
    with mounted(store, tmp_path / "mnt", "--key-file", key) as mnt:
        for f in manifest["manifest"]["files"]:
            assert (mnt / f["path"]).read_bytes() == plaintexts[f["header_sha256"]]


@pytest.mark.expect_log("event=integrity_failed reason=.*(hash_root|hash page 0)")
def test_damaged_hash_material_fails_the_file_through_a_mount(tmp_path):
    """A page digest that no longer matches the sealed root: every read of the file is EIO.
    A leaf changed: its page no longer matches its digest, so the page's chunks are EIO."""
    src = tmp_path / "model"
    src.mkdir()
    plain = {"a.bin": os.urandom(5 * CHUNK), "b.bin": os.urandom(5 * CHUNK), "c.txt": b"ok"}
    for name, data in plain.items():
        (src / name).write_bytes(data)
    key = tmp_path / "model.key"
    run_cli("keygen", "--out", key)
    store = tmp_path / "store"
    run_cli("encrypt", src, store, "--key-file", key, "--chunk-size", "4K")
    manifest = open_manifest((store / MANIFEST_NAME).read_bytes(), key.read_bytes())
    blobs = {f.path: store / f.blob_name for f in manifest.files}
    for path, offset in (("a.bin", -1), ("b.bin", -6 * 32)):  # last digest byte; leaf 0
        data = bytearray(blobs[path].read_bytes())
        data[offset] ^= 0x10
        blobs[path].write_bytes(data)
    with mounted(store, tmp_path / "mnt", "--key-file", key) as mnt:
        for path in ("a.bin", "b.bin"):
            for offset in (0, 4 * CHUNK):
                with pytest.raises(OSError) as caught:
                    read_range(mnt / path, offset, 10)
                assert caught.value.errno == errno.EIO
        assert (mnt / "c.txt").read_bytes() == b"ok"
