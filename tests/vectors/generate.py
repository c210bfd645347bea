"""Write the golden format vectors ``v1-*.json`` and ``v2-*.json`` (docs/FORMAT.md, 11 and 12).

Run once per format version, by hand: ``python tests/vectors/generate.py``.
The tests never run this script; they rebuild every vector from its stored
inputs and compare the bytes, so any change to the format fails them. Existing
files are never overwritten unless ``--force`` is given: a format change gets
new ``v3-*`` files next to these, because old models must stay readable.

Fixed keys, salts and nonces are used here only to make the bytes
reproducible; real writers draw salts and nonces from ``os.urandom``.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cmlfs.format.aead import Algorithm, RecordCipher
from cmlfs.format.hashlist import HASH_LEN, HashLayout, HashListBuilder
from cmlfs.format.header import BlobSealer, chunk_associated_data
from cmlfs.format.keys import Purpose, derive_object_key, key_id
from cmlfs.format.layout import NONCE_LEN, ChunkLayout
from cmlfs.manifest import (
    PREFIX_LEN,
    DirEntry,
    FileEntry,
    Manifest,
    manifest_digest,
    seal_manifest,
)

HERE = Path(__file__).resolve().parent
MODEL_KEY = bytes(range(0x00, 0x20))
CHUNK_SIZE = 4096
PLAINTEXT = bytes((i * 7 + 3) % 256 for i in range(2 * CHUNK_SIZE + 100))
# Two pages of leaf hashes (128 + 2 records): records are not stored, the plaintext and
# nonces follow the rules ``plaintext_rule`` and ``nonce_rule`` below.
LONG_PLAINTEXT = bytes((i * 7 + 3) % 256 for i in range(129 * CHUNK_SIZE + 100))
MTIME_NS = 1_700_000_000_000_000_000
KEY_URI = "file:///etc/cmlfs/example.key"


def salt(first: int) -> bytes:
    return bytes(range(first, first + 32))


def record_nonce(algorithm: Algorithm, index: int) -> bytes:
    return bytes([0xB0 + algorithm]) + index.to_bytes(NONCE_LEN - 1, "big")


def keys_vector(version: int) -> dict:
    derivations = []
    for purpose, first in ((Purpose.content(version), 0x20), (Purpose.manifest(version), 0x80)):
        aead_key, commitment = derive_object_key(MODEL_KEY, salt(first), purpose)
        derivations.append(
            {
                "info": purpose.value.decode(),
                "salt": salt(first).hex(),
                "aead_key": aead_key.hex(),
                "commitment": commitment.hex(),
            }
        )
    return {
        "description": "HKDF-SHA256 derivations from one model key (FORMAT.md, Keys)",
        "model_key": MODEL_KEY.hex(),
        "key_id": key_id(MODEL_KEY),
        "derivations": derivations,
    }


def blob_vector(version: int, algorithm: Algorithm, blob_salt: bytes, plaintext: bytes) -> dict:
    layout = ChunkLayout(CHUNK_SIZE, len(plaintext))
    nonces = iter([record_nonce(algorithm, i) for i in range(layout.n_chunks)])
    sealer = BlobSealer(
        MODEL_KEY, layout, algorithm, salt=blob_salt, nonces=lambda n: next(nonces), version=version
    )
    header = sealer.header.pack()
    records = []
    for index in range(layout.n_chunks):
        start = layout.chunk_offset(index)
        chunk = plaintext[start : start + layout.chunk_len(index)]
        last = layout.is_last(index)
        record = sealer.seal_chunk(index, chunk)
        records.append(
            {
                "index": index,
                "last": last,
                "offset": layout.record_offset(index),
                "associated_data": chunk_associated_data(sealer.header.digest, index, last).hex(),
                "nonce": record[:NONCE_LEN].hex(),
                "record": record.hex(),
            }
        )
    blob = header + b"".join(bytes.fromhex(r["record"]) for r in records)
    vector = {
        "description": f"a {len(plaintext)}-byte file sealed with {algorithm.label}",
        "format": version,
        "model_key": MODEL_KEY.hex(),
        "algorithm": algorithm.label,
        "algorithm_id": int(algorithm),
        "chunk_size": CHUNK_SIZE,
        "salt": blob_salt.hex(),
        "plaintext": plaintext.hex(),
        "header": header.hex(),
        "header_sha256": sealer.header.digest.hex(),
        "records": records,
    }
    if version == 1:  # the v1 files predate the "format" key: they stay byte for byte
        del vector["format"]
    else:
        blob += hash_list(vector, blob, layout)
    vector.update({"blob_size": len(blob), "blob_sha256": hashlib.sha256(blob).hexdigest()})
    return vector


def hash_list(vector: dict, blob: bytes, layout: ChunkLayout) -> bytes:
    """Add a format-2 blob's leaves, page digests and root to ``vector``; return the bytes
    that follow its records."""
    hashes = HashListBuilder()
    for index in range(layout.n_chunks):
        hashes.add(blob[layout.record_offset(index) :][: layout.record_len(index)])
    trailer, root = hashes.finish()
    where = HashLayout(layout)
    leaves = trailer[: HASH_LEN * layout.n_chunks]
    digests = trailer[HASH_LEN * layout.n_chunks :]
    vector.update(
        {
            "leaves_offset": where.leaves_offset,
            "leaves": [leaves[at : at + HASH_LEN].hex() for at in range(0, len(leaves), HASH_LEN)],
            "digests_offset": where.digests_offset,
            "page_digests": [
                digests[at : at + HASH_LEN].hex() for at in range(0, len(digests), HASH_LEN)
            ],
            "hash_root": root.hex(),
        }
    )
    return trailer


def long_blob_vector(algorithm: Algorithm, blob_salt: bytes) -> dict:
    """A format-2 blob of 130 records (two pages of leaves), without its records."""
    vector = blob_vector(2, algorithm, blob_salt, LONG_PLAINTEXT)
    vector["description"] = (
        f"a {len(LONG_PLAINTEXT)}-byte file sealed with {algorithm.label}: 130 records, "
        "two pages of leaves; records and plaintext left out, rebuild them from the rules"
    )
    vector["plaintext_size"] = len(LONG_PLAINTEXT)
    vector["plaintext_rule"] = "byte i of the file is (7 * i + 3) mod 256"
    vector["nonce_rule"] = f"record i's nonce is the byte {0xB0 + algorithm:#04x} then u88(i)"
    vector["plaintext_sha256"] = hashlib.sha256(LONG_PLAINTEXT).hexdigest()
    del vector["plaintext"], vector["records"]
    return vector


def file_entry(path: str, blob: dict) -> FileEntry:
    plaintext = bytes.fromhex(blob["plaintext"])
    root = {"hash_root": blob["hash_root"]} if "hash_root" in blob else {}
    return FileEntry(
        path=path,
        size=len(plaintext),
        mode=0o644,
        mtime_ns=MTIME_NS,
        blob=blob["blob_sha256"],
        blob_size=blob["blob_size"],
        header_sha256=blob["header_sha256"],
        sha256=hashlib.sha256(plaintext).hexdigest(),
        **root,
    )


def manifest_vector(
    version: int, algorithm: Algorithm, files: tuple[FileEntry, ...], first: int
) -> dict:
    dirs = (DirEntry("", 0o755, MTIME_NS), DirEntry("sub", 0o750, MTIME_NS))
    manifest = Manifest("example", "1", CHUNK_SIZE, algorithm, files, dirs, format_version=version)
    nonce = bytes(range(0xC0, 0xC0 + NONCE_LEN))
    sealed = seal_manifest(manifest, MODEL_KEY, KEY_URI, salt=salt(first), nonce=nonce)
    env_len = int.from_bytes(sealed[12:16], "big")  # prefix: magic, version, algorithm, length
    return {
        "description": f"a sealed manifest.cmlfs ({algorithm.label})",
        "model_key": MODEL_KEY.hex(),
        "key_uri": KEY_URI,
        "salt": salt(first).hex(),
        "nonce": nonce.hex(),
        "manifest": {
            "name": manifest.name,
            "version": manifest.version,
            "chunk_size": manifest.chunk_size,
            "algorithm": algorithm.label,
            "dirs": [vars(d) for d in dirs],
            "files": [file_fields(f) for f in files],
        },
        "prefix": sealed[:PREFIX_LEN].hex(),
        "envelope": sealed[PREFIX_LEN : PREFIX_LEN + env_len].decode(),
        "body": opened_body(version, sealed, algorithm, salt(first), env_len).decode(),
        "record": sealed[PREFIX_LEN + env_len :].hex(),
        "sealed": sealed.hex(),
        "manifest_sha256": manifest_digest(sealed),
    }


def file_fields(entry: FileEntry) -> dict:
    """A file entry's fields as the body holds them (no ``hash_root`` in format 1)."""
    return {k: v for k, v in vars(entry).items() if not (k == "hash_root" and v is None)}


def opened_body(
    version: int, sealed: bytes, algorithm: Algorithm, manifest_salt: bytes, env_len: int
) -> bytes:
    """The body JSON exactly as the writer serialised it, by opening its record."""
    aead_key, _ = derive_object_key(MODEL_KEY, manifest_salt, Purpose.manifest(version))
    associated = sealed[: PREFIX_LEN + env_len]
    return RecordCipher(algorithm, aead_key).open(sealed[PREFIX_LEN + env_len :], associated)


def negative_vector(manifest: dict, blob: dict) -> dict:
    """Damaged copies of the store of ``manifest`` (a v2 vector) and the error each must
    give: every case is one edit of one object of that store."""
    layout = ChunkLayout(CHUNK_SIZE, len(bytes.fromhex(blob["plaintext"])))
    record_1 = layout.record_offset(1)
    other = bytes(layout.chunk_len(1))  # a key holder's forgery: zeros, validly sealed
    aead_key, _ = derive_object_key(MODEL_KEY, bytes.fromhex(blob["salt"]), Purpose.CONTENT_V2)
    ad = chunk_associated_data(bytes.fromhex(blob["header_sha256"]), 1, False)
    forged = RecordCipher(Algorithm.AES_256_GCM_SIV, aead_key).seal(other, ad, bytes(12))
    body = json.loads(manifest["body"])
    shared = json.loads(manifest["body"])
    shared["files"][0].update({k: body["files"][1][k] for k in ("blob", "header_sha256")})
    rootless = json.loads(manifest["body"])
    del rootless["files"][1]["hash_root"]
    wrong_key = bytes(range(0x40, 0x60))

    def case(name: str, description: str, edit: dict, error: str, when: str, **extra) -> dict:
        return {"name": name, "description": description, "edit": edit, "error": error} | {
            "when": when,
            **extra,
        }

    m, w = "manifest.cmlfs", "weights.bin"
    digests = layout.blob_size + HASH_LEN * layout.n_chunks
    return {
        "description": "damaged stores and the error class a reader must give (FORMAT.md 12)",
        "base": "v2-manifest-aes-256-gcm-siv.json",
        "cases": [
            case(
                "manifest-magic",
                "first bit of the magic flipped",
                {"object": m, "op": "flip", "offset": 0, "bit": 0},
                "FormatError",
                "manifest",
            ),
            case(
                "manifest-version",
                "prefix version 3",
                {"object": m, "op": "replace", "offset": 8, "hex": "0003"},
                "FormatError",
                "manifest",
            ),
            case(
                "wrong-key",
                "opened with another model key (key id differs)",
                {"object": m, "op": "none"},
                "WrongKeyError",
                "manifest",
                key=wrong_key.hex(),
            ),
            case(
                "manifest-tag",
                "last bit of the manifest record's tag flipped",
                {
                    "object": m,
                    "op": "flip",
                    "offset": len(bytes.fromhex(manifest["sealed"])) - 1,
                    "bit": 7,
                },
                "IntegrityError",
                "manifest",
            ),
            case(
                "manifest-shared-blob",
                "validly sealed body whose two files name one blob",
                {"object": m, "op": "body", "body": canonical(shared)},
                "FormatError",
                "manifest",
            ),
            case(
                "manifest-no-hash-root",
                "validly sealed v2 body, a file without hash_root",
                {"object": m, "op": "body", "body": canonical(rootless)},
                "FormatError",
                "manifest",
            ),
            case(
                "header-salt",
                "a bit of the blob header's salt flipped",
                {"object": w, "op": "flip", "offset": 30, "bit": 2},
                "IntegrityError",
                "open",
            ),
            case(
                "blob-truncated",
                "the blob's last byte dropped",
                {"object": w, "op": "truncate", "length": blob["blob_size"] - 1},
                "IntegrityError",
                "open",
            ),
            case(
                "blob-extended",
                "a zero byte appended to the blob",
                {"object": w, "op": "append", "hex": "00"},
                "IntegrityError",
                "open",
            ),
            case(
                "page-digest",
                "a bit of the page digest flipped: the root does not match",
                {"object": w, "op": "flip", "offset": digests + 5, "bit": 1},
                "IntegrityError",
                "open",
            ),
            case(
                "leaf",
                "a bit of leaf 2 flipped: page 0 does not match its digest",
                {"object": w, "op": "flip", "offset": layout.blob_size + 2 * HASH_LEN, "bit": 0},
                "IntegrityError",
                "read",
                chunks=[0, 1, 2],
            ),
            case(
                "record-flip",
                "a bit of record 2's ciphertext flipped",
                {"object": w, "op": "flip", "offset": layout.record_offset(2) + 20, "bit": 3},
                "IntegrityError",
                "read",
                chunks=[2],
            ),
            case(
                "record-resealed",
                "record 1 re-sealed with the model key (zeros, nonce 0): "
                "its tag is valid, its hash is not the leaf",
                {"object": w, "op": "replace", "offset": record_1, "hex": forged.hex()},
                "IntegrityError",
                "read",
                chunks=[1],
            ),
        ],
    }


def canonical(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def vectors() -> dict[str, dict]:
    siv = Algorithm.AES_256_GCM_SIV
    gcm = Algorithm.AES_256_GCM
    result = {}
    for v in (1, 2):
        blob_siv = blob_vector(v, siv, salt(0x20), PLAINTEXT)
        blob_gcm = blob_vector(v, gcm, salt(0x40), PLAINTEXT)
        empty = blob_vector(v, siv, salt(0x60), b"")
        two_files = (file_entry("sub/empty.txt", empty), file_entry("weights.bin", blob_siv))
        result |= {
            f"v{v}-keys.json": keys_vector(v),
            f"v{v}-blob-aes-256-gcm-siv.json": blob_siv,
            f"v{v}-blob-aes-256-gcm.json": blob_gcm,
            f"v{v}-blob-empty-aes-256-gcm-siv.json": empty,
            f"v{v}-manifest-aes-256-gcm-siv.json": manifest_vector(v, siv, two_files, 0x80),
            f"v{v}-manifest-aes-256-gcm.json": manifest_vector(
                v, gcm, (file_entry("weights.bin", blob_gcm),), 0xA0
            ),
        }
    result["v2-blob-two-pages-aes-256-gcm.json"] = long_blob_vector(gcm, salt(0xE0))
    result["v2-negative.json"] = negative_vector(
        result["v2-manifest-aes-256-gcm-siv.json"], result["v2-blob-aes-256-gcm-siv.json"]
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite existing vector files")
    args = parser.parse_args()
    for name, vector in vectors().items():
        path = HERE / name
        if path.exists() and not args.force:
            print(f"{name}: exists, not overwritten (use --force)", file=sys.stderr)
            continue
        path.write_text(json.dumps(vector, indent=2, sort_keys=True) + "\n")
        print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
