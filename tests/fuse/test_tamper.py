"""Every kind of modified store, through a real mount: refusal or EIO, never a wrong byte.

Each case copies a freshly encrypted store, damages it one way, then mounts it.
Either the mount is refused, or every read returns the source bytes or fails
with EIO, and reads that touch the damage do fail.
"""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cmlfs.format.layout import HEADER_LEN, RECORD_OVERHEAD
from cmlfs.manifest import MANIFEST_NAME, PREFIX_LEN, open_manifest
from tests.conftest import force_unmount, run_cli

pytestmark = pytest.mark.fuse

CHUNK = 4096
STRIDE = CHUNK + RECORD_OVERHEAD
VICTIM = "victim.bin"  # 10 chunks + 100 bytes
OTHER = "other.bin"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Two encryptions of the same model with the same key, and the model's contents."""
    root = tmp_path_factory.mktemp("tamper")
    src = root / "model"
    src.mkdir()
    contents = {
        VICTIM: os.urandom(10 * CHUNK + 100),
        OTHER: os.urandom(3 * CHUNK),
        "config.json": b'{"a": 1}',
    }
    for name, data in contents.items():
        (src / name).write_bytes(data)
    key = root / "k"
    run_cli("keygen", "--out", key)
    for store in ("store", "store2"):
        run_cli("encrypt", src, root / store, "--key-file", key, "--chunk-size", "4K")
    return root, contents, key


def blob_paths(store: Path, key: Path) -> dict[str, Path]:
    manifest = open_manifest((store / MANIFEST_NAME).read_bytes(), key.read_bytes())
    return {f.path: store / f.blob_name for f in manifest.files}


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(data)


def edit(path: Path, change) -> None:
    path.write_bytes(change(bytearray(path.read_bytes())))


def record(data: bytearray, index: int) -> bytes:
    start = HEADER_LEN + index * STRIDE
    return bytes(data[start : start + STRIDE])


def put_record(data: bytearray, index: int, value: bytes) -> bytearray:
    start = HEADER_LEN + index * STRIDE
    data[start : start + STRIDE] = value
    return data


def swap_records(data: bytearray, i: int, j: int) -> bytearray:
    a, b = record(data, i), record(data, j)
    return put_record(put_record(data, i, b), j, a)


def drop_record(data: bytearray, index: int) -> bytearray:
    start = HEADER_LEN + index * STRIDE
    return data[:start] + data[start + STRIDE :]


# case id -> (function(store, blobs, other_store_blobs), damaged chunk indices of VICTIM or None
# for "the whole file")
BLOB_CASES = {
    "header-bit": (lambda b, o: flip(b[VICTIM], 30), None),
    "chunk-bit": (lambda b, o: flip(b[VICTIM], HEADER_LEN + 4 * STRIDE + 500), {4}),
    "nonce-bit": (lambda b, o: flip(b[VICTIM], HEADER_LEN + 2 * STRIDE), {2}),
    "tag-bit": (lambda b, o: flip(b[VICTIM], HEADER_LEN + 6 * STRIDE - 1), {5}),
    "last-chunk-bit": (lambda b, o: flip(b[VICTIM], HEADER_LEN + 10 * STRIDE + 5), {10}),
    "chunks-swapped": (lambda b, o: edit(b[VICTIM], lambda d: swap_records(d, 1, 7)), {1, 7}),
    "chunk-duplicated": (
        lambda b, o: edit(b[VICTIM], lambda d: put_record(d, 3, record(d, 2))),
        {3},
    ),
    "chunk-dropped": (lambda b, o: edit(b[VICTIM], lambda d: drop_record(d, 5)), None),
    "truncated": (lambda b, o: edit(b[VICTIM], lambda d: d[:-1]), None),
    "truncated-at-record": (
        lambda b, o: edit(b[VICTIM], lambda d: d[: HEADER_LEN + 9 * STRIDE]),
        None,
    ),
    "extended": (lambda b, o: edit(b[VICTIM], lambda d: d + b"\0" * STRIDE), None),
    "blobs-swapped": (lambda b, o: _swap_files(b[VICTIM], b[OTHER]), None),
    "blob-from-other-encryption": (lambda b, o: shutil.copyfile(o[VICTIM], b[VICTIM]), None),
    "chunk-from-other-encryption": (
        lambda b, o: edit(
            b[VICTIM], lambda d: put_record(d, 6, record(bytearray(o[VICTIM].read_bytes()), 6))
        ),
        {6},
    ),
}


def _swap_files(a: Path, b: Path) -> None:
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def damaged_store(pristine, tmp_path: Path) -> tuple[Path, dict[str, Path], dict[str, Path]]:
    root, _, key = pristine
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    return store, blob_paths(store, key), blob_paths(root / "store2", key)


def read_or_eio(path: Path, offset: int, size: int) -> bytes | None:
    """The bytes read, or None when the read failed with EIO (any other error fails the test)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        assert exc.errno == errno.EIO, f"expected EIO, got {exc}"
        return None
    finally:
        os.close(fd)


def mount(store: Path, mnt: Path, key: Path) -> subprocess.CompletedProcess:
    mnt.mkdir(exist_ok=True)
    return run_cli("mount", store, mnt, "--key-file", key, "--cache-size", "0", check=False)


@pytest.mark.parametrize("case", sorted(BLOB_CASES))
def test_damaged_blob_reads_fail_with_eio_and_never_return_wrong_bytes(pristine, tmp_path, case):
    _, contents, key = pristine
    store, blobs, other = damaged_store(pristine, tmp_path)
    damage, bad_chunks = BLOB_CASES[case]
    damage(blobs, other)
    mnt = tmp_path / "mnt"
    result = mount(store, mnt, key)
    assert result.returncode == 0, result.stderr
    try:
        victim = contents[VICTIM]
        for index in range(11):
            offset = index * CHUNK
            data = read_or_eio(mnt / VICTIM, offset, CHUNK)
            touches_damage = bad_chunks is None or index in bad_chunks
            if data is None:
                assert touches_damage, f"chunk {index} failed but is intact"
            else:
                assert data == victim[offset : offset + CHUNK], f"wrong bytes in chunk {index}"
                assert not touches_damage, f"damaged chunk {index} was served"
        # Undamaged files stay readable, unless the case damaged them on purpose.
        for name in ("config.json", OTHER):
            data = read_or_eio(mnt / name, 0, 1 << 20)
            if case == "blobs-swapped" and name == OTHER:
                assert data is None
            else:
                assert data == contents[name]
        # A whole-file read across the damage fails; it never yields a wrong byte.
        whole = read_or_eio(mnt / VICTIM, 0, len(victim))
        assert whole is None or whole == victim[: len(whole)]
    finally:
        force_unmount(mnt)


MANIFEST_CASES = {
    "prefix-magic": lambda m: flip(m, 0),
    "prefix-salt": lambda m: flip(m, 20),
    "prefix-commitment": lambda m: flip(m, 60),
    "envelope": lambda m: flip(m, PREFIX_LEN + 3),
    "body": lambda m: flip(m, len(m.read_bytes()) - 40),
    "tag": lambda m: flip(m, len(m.read_bytes()) - 1),
    "truncated": lambda m: edit(m, lambda d: d[:-1]),
    "extended": lambda m: edit(m, lambda d: d + b"\0"),
    "empty": lambda m: m.write_bytes(b""),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_damaged_manifest_refuses_the_mount(pristine, tmp_path, case):
    _, _, key = pristine
    store, _, _ = damaged_store(pristine, tmp_path)
    MANIFEST_CASES[case](store / MANIFEST_NAME)
    mnt = tmp_path / "mnt"
    result = mount(store, mnt, key)
    try:
        assert result.returncode != 0
        assert result.stderr.startswith("cmlfs: error: ")
        assert len(result.stderr.strip().splitlines()) == 1
        assert not os.path.ismount(mnt)
    finally:
        force_unmount(mnt)


def test_manifest_from_another_encryption_serves_no_wrong_bytes(pristine, tmp_path):
    root, contents, key = pristine
    store, _, _ = damaged_store(pristine, tmp_path)
    shutil.copyfile(root / "store2" / MANIFEST_NAME, store / MANIFEST_NAME)
    mnt = tmp_path / "mnt"
    assert mount(store, mnt, key).returncode == 0
    try:
        for name in contents:
            assert read_or_eio(mnt / name, 0, 1 << 20) is None
    finally:
        force_unmount(mnt)


def test_wrong_key_refuses_the_mount(pristine, tmp_path):
    store, _, _ = damaged_store(pristine, tmp_path)
    wrong = tmp_path / "wrong.key"
    run_cli("keygen", "--out", wrong)
    mnt = tmp_path / "mnt"
    result = mount(store, mnt, wrong)
    try:
        assert result.returncode == 1
        assert "wrong key" in result.stderr
        assert not os.path.ismount(mnt)
    finally:
        force_unmount(mnt)
