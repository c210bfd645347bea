"""KServe-style JWE model folders mounted through real mounts: bytes, tampering, keys.

The JWE files are made with jwcrypto, as KServe's users make them (its confidential
serving docs and kserve python/storage/kserve_storage/confidential/jwe_decryptor.py,
which decrypts them with jwcrypto).
"""

import errno
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jwcrypto import jwe, jwk

from cmlfs.format.jwe import CHUNK_BYTES, CHUNK_CHARS
from cmlfs.mountpoint import mount_entry
from tests.conftest import mounted, run_cli
from tests.deploy.conftest import http_get, metrics, status_url
from tests.jwe_helpers import flip_char, make_jwe, part_span

CACHE = "1M"


@pytest.fixture(scope="module")
def jwe_model(tmp_path_factory):
    """(folder, contents by served path, jwcrypto key) of a JWE model folder."""
    root = tmp_path_factory.mktemp("jwe")
    key = jwk.JWK.generate(kty="oct", size=256)
    rng = random.Random(7)
    contents = {
        "config.json": json.dumps({"hidden_size": 384, "layers": 6}).encode(),
        "model.safetensors": rng.randbytes(3 * CHUNK_BYTES + 12345),  # > the 1M cache
        "tokenizer/vocab.txt": b"\n".join(b"tok%d" % i for i in range(5000)),
        "empty.bin": b"",
    }
    folder = root / "model"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "config.json.jwe").write_bytes(make_jwe(contents["config.json"], key))
    # No suffix: detected by the eyJ prefix; a direct key.
    (folder / "model.safetensors").write_bytes(
        make_jwe(contents["model.safetensors"], key, alg="dir")
    )
    (folder / "tokenizer/vocab.txt.jwe").write_bytes(
        make_jwe(contents["tokenizer/vocab.txt"], key, alg="A256KW")
    )
    (folder / "empty.bin.jwe").write_bytes(make_jwe(b"", key, alg="dir"))
    (folder / "README.md").write_text("not encrypted\n")
    return folder, contents, key


def key_forms(root: Path, key: jwk.JWK) -> dict[str, Path]:
    """The key as KServe accepts it: a JWK, its base64url k value, raw bytes."""
    forms = {
        "jwk": key.export().encode(),
        "k": key["k"].encode() + b"\n",
        "raw": jwk.base64url_decode(key["k"]),
    }
    paths = {}
    for name, data in forms.items():
        paths[name] = root / f"key.{name}"
        paths[name].write_bytes(data)
    return paths


@pytest.mark.expect_log("event=file_refused path=README.md")
@pytest.mark.parametrize("form", ["jwk", "k", "raw"])
def test_jwe_folder_reads_byte_for_byte(jwe_model, tmp_path, form):
    folder, contents, key = jwe_model
    key_file = key_forms(tmp_path, key)[form]
    with mounted(folder, tmp_path / "mnt", "--key-file", key_file, "--cache-size", CACHE) as mnt:
        served = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file())
        assert served == sorted(contents)  # README.md (not JWE) is left out, .jwe dropped
        for path, data in contents.items():
            assert (mnt / path).read_bytes() == data, path
        big = contents["model.safetensors"]
        with open(mnt / "model.safetensors", "rb") as f:  # random ranges, across chunks
            for offset in (CHUNK_BYTES - 7, 5, 2 * CHUNK_BYTES + 1, len(big) - 3):
                assert os.pread(f.fileno(), 4096, offset) == big[offset : offset + 4096]


def test_plain_files_only_when_asked(jwe_model, tmp_path):
    folder, contents, key = jwe_model
    key_file = key_forms(tmp_path, key)["jwk"]
    with mounted(folder, tmp_path / "mnt", "--key-file", key_file, "--show-plain-files") as mnt:
        assert (mnt / "README.md").read_text() == "not encrypted\n"
        assert (mnt / "config.json").read_bytes() == contents["config.json"]


def tampered_folder(root: Path, key: jwk.JWK) -> tuple[Path, dict[str, bytes]]:
    """A folder with one good file and one file per kind of damage."""
    rng = random.Random(3)
    data = rng.randbytes(3 * CHUNK_BYTES + 999)
    good = make_jwe(data, key)
    ct_start, ct_end = part_span(good, 3)
    damaged = {
        "header": flip_char(good, 5),
        "encrypted-key": flip_char(good, part_span(good, 1)[0] + 3),
        "iv": flip_char(good, part_span(good, 2)[0] + 2),
        "ciphertext-first": flip_char(good, ct_start),
        "ciphertext-middle": flip_char(good, ct_start + CHUNK_CHARS + 100),
        "ciphertext-last": flip_char(good, ct_end - 2),
        "tag": flip_char(good, part_span(good, 4)[0] + 1),
        "truncated": good[: ct_start + CHUNK_CHARS] + good[ct_end:],
        # a ciphertext of 4n+1 characters: no whole number of bytes
        "truncated-base64": good[: ct_end - ((ct_end - ct_start - 1) % 4 or 4)] + good[ct_end:],
        "cut-off": good[: len(good) // 2],
        "cbc": make_jwe(data[:1000], key, enc="A256CBC-HS512"),
        "zip": make_jwe(data[:1000], key, zip="DEF"),
        "gcmkw": make_jwe(data[:1000], key, alg="A256GCMKW"),
        "other-key": make_jwe(data[:1000], jwk.JWK.generate(kty="oct", size=256)),
        "empty-bad-tag": flip_char(make_jwe(b"", key), len(make_jwe(b"", key)) - 2),
    }
    crit = make_jwe(data[:1000], key)
    header = jwe.base64url_encode(json.dumps({"alg": "A256KW", "enc": "A256GCM", "crit": ["x"]}))
    damaged["crit"] = header.encode() + crit[crit.index(b".") :]
    folder = root / "tampered"
    folder.mkdir()
    (folder / "good.bin.jwe").write_bytes(good)
    for name, text in damaged.items():
        (folder / f"{name}.jwe").write_bytes(text)
    return folder, {"good.bin": data, **{name: b"" for name in damaged}}


@pytest.mark.expect_log("event=jwe_refused")
def test_every_tamper_reads_eio_with_no_wrong_byte(jwe_model, tmp_path):
    _, _, key = jwe_model
    folder, expected = tampered_folder(tmp_path, key)
    key_file = key_forms(tmp_path, key)["jwk"]
    log = tmp_path / "daemon.log"
    args = ("--key-file", key_file, "--log-file", log, "--cache-size", CACHE)
    with mounted(folder, tmp_path / "mnt", *args) as mnt:
        assert (mnt / "good.bin").read_bytes() == expected["good.bin"]
        for name in expected:
            if name == "good.bin":
                continue
            with open(mnt / name, "rb") as f:  # not its first byte, nor its last, nor any
                for offset in sorted({0, os.fstat(f.fileno()).st_size - 1}):
                    with pytest.raises(OSError) as raised:
                        os.pread(f.fileno(), 4096, offset)
                    assert raised.value.errno == errno.EIO, (name, offset)
    refusals = [line for line in log.read_text().splitlines() if "event=jwe_refused" in line]
    refused = {line.split("path=")[1].split()[0] for line in refusals}
    assert refused == set(expected) - {"good.bin"}
    assert len(refusals) == len(refused)  # one line per file, however often it was read
    text = log.read_text()
    for reason in ("'zip'", "'crit'", "A256CBC-HS512", "A256GCMKW", "tag does not authenticate"):
        assert reason in text, reason


@pytest.mark.expect_log("event=chunk_rejected path=weights.bin .*changed in the store after")
def test_ciphertext_changed_after_authentication_reads_eio(jwe_model, tmp_path):
    _, _, key = jwe_model
    data = random.Random(5).randbytes(24 * CHUNK_BYTES)  # far beyond the kernel's readahead
    folder = tmp_path / "model"
    folder.mkdir()
    text = make_jwe(data, key)
    (folder / "weights.bin.jwe").write_bytes(text)
    key_file = key_forms(tmp_path, key)["raw"]
    mnt = tmp_path / "mnt"
    args = ("--key-file", key_file, "--cache-size", CACHE)
    with mounted(folder, mnt, *args), open(mnt / "weights.bin", "rb") as f:
        assert f.read(10) == data[:10]  # authenticated now
        ct_start = part_span(text, 3)[0]
        at = ct_start + 20 * CHUNK_CHARS + 8
        with open(folder / "weights.bin.jwe", "r+b") as store_file:
            store_file.seek(at)
            store_file.write(flip_char(text, at)[at : at + 1])
        with pytest.raises(OSError) as raised:
            os.pread(f.fileno(), 4096, 20 * CHUNK_BYTES)
        assert raised.value.errno == errno.EIO
        # An unchanged chunk still reads.
        offset = 22 * CHUNK_BYTES
        assert os.pread(f.fileno(), 4096, offset) == data[offset : offset + 4096]


def test_mount_refused_when_nothing_authenticates(jwe_model, tmp_path):
    folder, _, key = jwe_model
    wrong = tmp_path / "wrong.jwk"
    wrong.write_text(jwk.JWK.generate(kty="oct", size=256).export())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run_cli("mount", folder, mnt, "--key-file", wrong, check=False)
    assert result.returncode != 0 and mount_entry(mnt) is None
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no file of the model could be authenticated" in lines[0], lines
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    result = run_cli("mount", plain, mnt, "--key-file", wrong, check=False)
    assert result.returncode != 0 and "neither a cmlfs model nor a JWE file" in result.stderr
    good = key_forms(tmp_path, key)["jwk"]
    for option in (("--workers", "2"), ("--key-id", "0" * 32)):
        result = run_cli("mount", folder, mnt, "--key-file", good, *option, check=False)
        assert result.returncode != 0 and "served by one process" in result.stderr, option
    assert mount_entry(mnt) is None


def test_import_round_trip_keeps_the_key(jwe_model, tmp_path):
    """import seals the folder with the same key: the same JWK key file (or broker
    resource) mounts the new store, and its bytes are the JWE files' plaintext."""
    folder, contents, key = jwe_model
    keys = key_forms(tmp_path, key)
    store = tmp_path / "store"
    verified = run_cli("verify", folder, "--key-file", keys["k"]).stdout
    assert verified.startswith("ok: 4 JWE files")
    result = run_cli("import", folder, store, "--key-uri", f"file://{keys['jwk']}")
    assert "imported 4 JWE files" in result.stdout
    assert "event=file_refused path=README.md" in result.stderr  # left out, and said so
    assert f"file://{keys['jwk']}" in run_cli("inspect", store).stdout  # recorded
    assert "ok:" in run_cli("verify", store, "--key-file", keys["raw"]).stdout
    with mounted(store, tmp_path / "mnt", "--key-file", keys["jwk"]) as mnt:
        served = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*") if p.is_file())
        assert served == sorted(contents)
        for path, data in contents.items():
            assert (mnt / path).read_bytes() == data, path


# Runs cmlfs with an audit hook that reports every file it opens for writing (builtin
# open and os.open both raise the "open" audit event, tempfile's files too).
WRITES_AUDITED = """
import atexit, os, runpy, sys
written = []
def hook(event, args):
    if event == "open" and args[0] is not None and (
        any(c in (args[1] or "") for c in "wax+") or args[2] & (os.O_WRONLY | os.O_RDWR)
    ):
        written.append(os.fsdecode(args[0]) if not isinstance(args[0], int) else args[0])
sys.addaudithook(hook)
atexit.register(lambda: print(*(f"opened-for-writing {p}" for p in written), sep="\\n",
                              file=sys.stderr))
sys.argv[0] = "cmlfs"
runpy.run_module("cmlfs", run_name="__main__")
"""


def test_import_writes_no_plaintext_anywhere(jwe_model, tmp_path):
    """The only files import opens for writing are its store's blobs and manifest (each
    kept, renamed from its partial name), and none holds 64 bytes of plaintext: no
    temporary plaintext file, on the model volume or elsewhere."""
    from tests.zz_leaks.scan import PlaintextIndex, scan

    folder, contents, key = jwe_model
    key_file = key_forms(tmp_path, key)["jwk"]
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", WRITES_AUDITED, "import", folder, store, "--key-file", key_file],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = [
        line.removeprefix("opened-for-writing ")
        for line in result.stderr.splitlines()
        if line.startswith("opened-for-writing ")
    ]
    written = [path for path in written if path != os.devnull]
    partials = [
        p
        for p in written
        if re.fullmatch(re.escape(f"{store}/blobs/.partial-") + "[0-9a-f]{16}", p)
    ]
    assert sorted(written) == sorted([f"{store}/.manifest.cmlfs.partial", *partials]), written
    blobs = list((store / "blobs").iterdir())
    assert len(partials) == len(blobs) == len(contents)  # every one kept, under its name
    index = PlaintextIndex(list(contents.items()))
    assert index.windows_in(contents["model.safetensors"])  # the scan sees plaintext
    report = scan([tmp_path], index, {})
    assert report.files > len(blobs) and report.plaintext_hits == []


def test_import_refuses_any_damage_and_leaves_nothing(jwe_model, tmp_path):
    folder, _, key = jwe_model
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for source in folder.glob("*.jwe"):
        (damaged / source.name).write_bytes(source.read_bytes())
    text = bytearray((damaged / "config.json.jwe").read_bytes())
    text[-30] = ord("A") if text[-30] != ord("A") else ord("B")  # in the tag
    (damaged / "config.json.jwe").write_bytes(bytes(text))
    key_file = key_forms(tmp_path, key)["jwk"]
    result = run_cli("verify", damaged, "--key-file", key_file, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().endswith(
        "config.json: the JWE tag does not authenticate this file"
    )
    for target in (tmp_path / "new-store", tmp_path / "empty-store"):
        if target.name == "empty-store":
            target.mkdir()
        result = run_cli("import", damaged, target, "--key-file", key_file, check=False)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("cmlfs: error: config.json: the JWE tag"), lines
        assert not target.exists() or not any(target.iterdir())
    short = tmp_path / "short.jwk"
    short.write_text(jwk.JWK.generate(kty="oct", size=128).export())
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.jwe").write_bytes(
        make_jwe(b"x", jwk.JWK.from_json(short.read_text()), alg="A128KW")
    )
    result = run_cli("import", small, tmp_path / "s", "--key-file", short, check=False)
    assert result.returncode != 0 and "32-byte key" in result.stderr
    assert not (tmp_path / "s").exists()


def test_benchmark_smoke(tmp_path):
    """benchmarks/bench_jwe.py with a tiny file (the benchmark runs late, by hand); its
    streamed JWE writer must make what jwcrypto reads."""
    if os.geteuid() != 0:
        pytest.skip("the benchmark drops caches: root only")
    from benchmarks.bench_jwe import main, write_jwe

    key = os.urandom(32)
    plaintext = random.Random(9).randbytes(3 * CHUNK_BYTES + 5)
    write_jwe(tmp_path / "check.jwe", key, len(plaintext), io.BytesIO(plaintext).read)
    token = jwe.JWE()
    token.deserialize((tmp_path / "check.jwe").read_text())
    token.decrypt(jwk.JWK(kty="oct", k=jwk.base64url_encode(key)))
    assert token.payload == plaintext
    main(["--size", "2M", "--rounds", "1", "--work", str(tmp_path / "work"), "--no-save"])


@pytest.mark.expect_log("event=file_refused path=README.md")
def test_status_metrics_count_jwe_reads(jwe_model, tmp_path):
    folder, contents, key = jwe_model
    key_file = key_forms(tmp_path, key)["jwk"]
    args = ("--key-file", key_file, "--http", "127.0.0.1:0")
    with mounted(folder, tmp_path / "mnt", *args) as mnt:
        url = status_url(mnt)
        assert http_get(url + "/readyz") == (200, "ready\n")
        data = (mnt / "model.safetensors").read_bytes()
        after = metrics(url)
        assert after["cmlfs_read_bytes_total"] == len(data)
        assert after["cmlfs_decrypted_bytes_total"] == len(contents["model.safetensors"])
        assert after["cmlfs_decrypted_chunks_total"] == 4  # 3 chunks and 12345 bytes
