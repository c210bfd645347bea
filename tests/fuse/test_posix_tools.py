"""What everyday tools see in a real mount: `ls -a`, `find`, `du` and `cp -a` out of it.

A mount should look like any read-only filesystem holding the source folder: folders list
`.` and `..`, have 2 + subfolders links, a size and blocks; modes as published (write bits
included, set-ID bits dropped); a `cp -a` of the mount is the source tree again.
"""

import os
import stat
import subprocess
from pathlib import Path

import pytest
from jwcrypto import jwk

from cmlfs.fs import DIR_SIZE
from tests.conftest import mounted, run_cli, tree_digests, write_sample_model
from tests.jwe_helpers import make_jwe

pytestmark = pytest.mark.fuse

MODES = {  # model-relative path -> mode the publisher gave it
    "config.json": 0o600,
    "one-byte": 0o444,
    "model.safetensors": 0o640,
    "tokenizer": 0o750,
    "deep/a/b": 0o700,
    "empty-folder": 0o555,
}
SET_ID = "exact-chunk.bin"  # published 0o6755: shown and copied as 0o755


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(mountpoint, source folder) of a sample model with assorted modes, mounted read-only."""
    root = tmp_path_factory.mktemp("posix")
    src = root / "model"
    write_sample_model(src)
    for rel, mode in MODES.items():
        (src / rel).chmod(mode)
    (src / SET_ID).chmod(0o6755)
    key = root / "model.key"
    run_cli("keygen", "--out", key)
    run_cli("encrypt", src, root / "store", "--key-file", key)
    (src / SET_ID).chmod(0o755)  # what the mount must show
    with mounted(root / "store", root / "mnt", "--key-file", key) as mnt:
        yield mnt, src
    (src / "empty-folder").chmod(0o755)  # let pytest clean up


def _tool(*args: str | os.PathLike, cwd: Path | None = None) -> str:
    return subprocess.run(
        list(map(str, args)), capture_output=True, text=True, check=True, cwd=cwd, timeout=60
    ).stdout


def _folders(root: Path) -> list[Path]:
    return [root, *(p for p in sorted(root.rglob("*")) if p.is_dir())]


def test_ls_a_lists_dot_and_dotdot_with_their_inodes(model):
    mnt, src = model
    for folder in _folders(mnt):
        listed = _tool("ls", "-a1", folder).split("\n")[:-1]
        expected = _tool("ls", "-a1", src / folder.relative_to(mnt)).split("\n")[:-1]
        assert listed[:2] == [".", ".."] and listed == expected, folder
        inodes = dict(
            reversed(line.split(maxsplit=1)) for line in _tool("ls", "-ai1", folder).splitlines()
        )
        assert int(inodes["."]) == folder.stat().st_ino
        if folder != mnt:
            assert int(inodes[".."]) == folder.parent.stat().st_ino
    assert "drwx" in _tool("ls", "-la", mnt / "tokenizer").splitlines()[1]  # the "." line


def test_folders_have_two_plus_subfolder_links_so_find_walks_everything(model):
    mnt, src = model
    for folder in _folders(mnt):
        subfolders = sum(1 for p in folder.iterdir() if p.is_dir())
        assert folder.stat().st_nlink == 2 + subfolders, folder
        assert folder.stat().st_nlink == (src / folder.relative_to(mnt)).stat().st_nlink
    for args in ([], ["-type", "d"], ["-type", "f"], ["-type", "d", "-links", "2"]):
        assert sorted(_tool("find", ".", *args, cwd=mnt).split()) == sorted(
            _tool("find", ".", *args, cwd=src).split()
        ), args


def test_du_counts_file_bytes_and_blocks_and_one_block_per_folder(model):
    mnt, src = model
    files = [p for p in src.rglob("*") if p.is_file()]
    folders = len(_folders(src))
    assert (
        int(_tool("du", "-sb", mnt).split()[0])
        == sum(p.stat().st_size for p in files) + folders * DIR_SIZE
    )
    assert (
        int(_tool("du", "-s", "-B512", mnt).split()[0])
        == sum(-(-p.stat().st_size // 512) for p in files) + folders * DIR_SIZE // 512
    )
    for path in mnt.rglob("*"):
        st = path.stat()
        assert st.st_blocks == -(-st.st_size // 512), path


def test_modes_as_published_without_set_id_and_times_are_the_recorded_mtime(model):
    mnt, src = model
    for path in [mnt, *mnt.rglob("*")]:
        shown, source = path.stat(), (src / path.relative_to(mnt)).stat()
        assert stat.S_IMODE(shown.st_mode) == stat.S_IMODE(source.st_mode), path
        assert shown.st_mtime_ns == source.st_mtime_ns
        assert shown.st_atime_ns == shown.st_ctime_ns == shown.st_mtime_ns
    assert stat.S_IMODE((mnt / SET_ID).stat().st_mode) == 0o755
    with pytest.raises(OSError) as refused:
        (mnt / "config.json").open("r+b")  # write bits shown; the mount is still read-only
    assert refused.value.errno == 30  # EROFS


def test_cp_a_out_of_the_mount_gives_the_source_tree(model, tmp_path):
    mnt, src = model
    copy = tmp_path / "copy"
    _tool("cp", "-a", mnt, copy)
    try:
        assert tree_digests(copy) == tree_digests(src)
        assert sorted(_tool("find", ".", cwd=copy).split()) == sorted(
            _tool("find", ".", cwd=src).split()
        )
        for path in [copy, *copy.rglob("*")]:
            copied, source = path.stat(), (src / path.relative_to(copy)).stat()
            assert stat.S_IMODE(copied.st_mode) == stat.S_IMODE(source.st_mode), path
            assert copied.st_mtime_ns == source.st_mtime_ns, path
    finally:
        (copy / "empty-folder").chmod(0o755)


def test_cp_a_out_of_a_jwe_mount_gives_the_plaintext_tree_with_usual_modes(tmp_path):
    """A KServe JWE folder records no modes: the mount shows what KServe's storage initializer
    leaves (0644 files, 0755 folders), so a copy out of it is an ordinary, removable tree."""
    key = jwk.JWK.generate(kty="oct", size=256)
    contents = {"config.json": b'{"a": 1}', "weights/shard-1.bin": os.urandom(70_000)}
    folder = tmp_path / "model-jwe"
    for rel, data in contents.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{rel}.jwe").write_bytes(make_jwe(data, key))
    key_file = tmp_path / "key.jwk"
    key_file.write_text(key.export())
    with mounted(folder, tmp_path / "mnt", "--key-file", key_file) as mnt:
        assert _tool("ls", "-a1", mnt / "weights").split() == [".", "..", "shard-1.bin"]
        assert mnt.stat().st_nlink == 3
        copy = tmp_path / "copy"
        _tool("cp", "-a", mnt, copy)
    assert {str(p.relative_to(copy)): p.read_bytes() for p in copy.rglob("*.*")} == contents
    for path in [copy, *copy.rglob("*")]:
        assert stat.S_IMODE(path.stat().st_mode) == (0o755 if path.is_dir() else 0o644), path
