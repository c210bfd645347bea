"""Write the golden format vectors ``v1-*.json`` (docs/FORMAT.md, "Worked example").

Run once per format version, by hand: ``python tests/vectors/generate.py``.
The tests never run this script; they rebuild every vector from its stored
inputs and compare the bytes, so any change to the format fails them. Existing
files are never overwritten unless ``--force`` is given: a format change gets
new ``v2-*`` files next to these, because old models must stay readable.

Fixed keys, salts and nonces are used here only to make the bytes
reproducible; real writers draw salts and nonces from ``os.urandom``.
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

from cmlfs.format.aead import Algorithm, RecordCipher
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
MTIME_NS = 1_700_000_000_000_000_000
KEY_URI = "file:///etc/cmlfs/example.key"


def salt(first: int) -> bytes:
    return bytes(range(first, first + 32))


def record_nonce(algorithm: Algorithm, index: int) -> bytes:
    return bytes([0xB0 + algorithm]) + index.to_bytes(NONCE_LEN - 1, "big")


def keys_vector() -> dict:
    derivations = []
    for purpose, first in ((Purpose.CONTENT, 0x20), (Purpose.MANIFEST, 0x80)):
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


def blob_vector(algorithm: Algorithm, blob_salt: bytes, plaintext: bytes) -> dict:
    layout = ChunkLayout(CHUNK_SIZE, len(plaintext))
    nonces = iter([record_nonce(algorithm, i) for i in range(layout.n_chunks)])
    sealer = BlobSealer(MODEL_KEY, layout, algorithm, salt=blob_salt, nonces=lambda n: next(nonces))
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
    return {
        "description": f"a {len(plaintext)}-byte file sealed with {algorithm.label}",
        "model_key": MODEL_KEY.hex(),
        "algorithm": algorithm.label,
        "algorithm_id": int(algorithm),
        "chunk_size": CHUNK_SIZE,
        "salt": blob_salt.hex(),
        "plaintext": plaintext.hex(),
        "header": header.hex(),
        "header_sha256": sealer.header.digest.hex(),
        "records": records,
        "blob_size": len(blob),
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
    }


def file_entry(path: str, blob: dict) -> FileEntry:
    plaintext = bytes.fromhex(blob["plaintext"])
    return FileEntry(
        path=path,
        size=len(plaintext),
        mode=0o644,
        mtime_ns=MTIME_NS,
        blob=blob["blob_sha256"],
        blob_size=blob["blob_size"],
        header_sha256=blob["header_sha256"],
        sha256=hashlib.sha256(plaintext).hexdigest(),
    )


def manifest_vector(algorithm: Algorithm, files: tuple[FileEntry, ...], first: int) -> dict:
    dirs = (DirEntry("", 0o755, MTIME_NS), DirEntry("sub", 0o750, MTIME_NS))
    manifest = Manifest("example", "1", CHUNK_SIZE, algorithm, files, dirs)
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
            "files": [vars(f) for f in files],
        },
        "prefix": sealed[:PREFIX_LEN].hex(),
        "envelope": sealed[PREFIX_LEN : PREFIX_LEN + env_len].decode(),
        "body": opened_body(sealed, algorithm, salt(first), env_len).decode(),
        "record": sealed[PREFIX_LEN + env_len :].hex(),
        "sealed": sealed.hex(),
        "manifest_sha256": manifest_digest(sealed),
    }


def opened_body(sealed: bytes, algorithm: Algorithm, manifest_salt: bytes, env_len: int) -> bytes:
    """The body JSON exactly as the writer serialised it, by opening its record."""
    aead_key, _ = derive_object_key(MODEL_KEY, manifest_salt, Purpose.MANIFEST)
    associated = sealed[: PREFIX_LEN + env_len]
    return RecordCipher(algorithm, aead_key).open(sealed[PREFIX_LEN + env_len :], associated)


def vectors() -> dict[str, dict]:
    siv = Algorithm.AES_256_GCM_SIV
    gcm = Algorithm.AES_256_GCM
    blob_siv = blob_vector(siv, salt(0x20), PLAINTEXT)
    blob_gcm = blob_vector(gcm, salt(0x40), PLAINTEXT)
    empty = blob_vector(siv, salt(0x60), b"")
    return {
        "v1-keys.json": keys_vector(),
        "v1-blob-aes-256-gcm-siv.json": blob_siv,
        "v1-blob-aes-256-gcm.json": blob_gcm,
        "v1-blob-empty-aes-256-gcm-siv.json": empty,
        "v1-manifest-aes-256-gcm-siv.json": manifest_vector(
            siv, (file_entry("sub/empty.txt", empty), file_entry("weights.bin", blob_siv)), 0x80
        ),
        "v1-manifest-aes-256-gcm.json": manifest_vector(
            gcm, (file_entry("weights.bin", blob_gcm),), 0xA0
        ),
    }


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
