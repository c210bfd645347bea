"""The model owner's commands: keygen, encrypt, import, sign, push, inspect, verify."""

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from cmlfs.cli import argtypes
from cmlfs.cli.keys import check_registrable, register
from cmlfs.cli.options import (
    add_broker_admin_options,
    add_insecure_http,
    add_key_options,
    add_store_options,
    add_trust_options,
    key_settings,
    key_source,
    store_settings,
)
from cmlfs.errors import CmlfsError
from cmlfs.format import FORMAT_VERSIONS
from cmlfs.keys import FileKeySource, generate_key_file
from cmlfs.manifest import Manifest
from cmlfs.publish import EncryptSettings
from cmlfs.units import format_size

if TYPE_CHECKING:
    from cmlfs.stores import Store


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm  # imported here: it would slow every start (benchmarks/RESULTS.md)

    with tqdm(
        total=total,
        desc=what,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not sys.stderr.isatty(),
        leave=False,
    ) as bar:
        yield bar.update


def _add_stored_model(p: argparse.ArgumentParser) -> None:
    """STORE and the options to open it, of the commands that read a stored model."""
    p.add_argument("store", metavar="STORE")
    add_key_options(p, required=False)
    add_insecure_http(p)
    add_store_options(p)


def add_keygen(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "keygen",
        help="create a new random model key file",
        description="Write 32 random bytes to a new file of mode 0600.",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="KEYFILE",
        help="file to create (never overwritten)",
    )
    p.set_defaults(func=keygen)


def keygen(args: argparse.Namespace) -> int:
    generate_key_file(args.out)
    print(f"wrote a new 32-byte model key to {args.out} (mode 0600)")
    return 0


def _add_sealing_options(p: argparse.ArgumentParser) -> None:
    """How a new store is sealed: chunk size, algorithm, format, name and version."""
    p.add_argument(
        "--chunk-size",
        type=argtypes.chunk_size,
        default=EncryptSettings.chunk_size,
        metavar="SIZE",
        help="plaintext bytes per chunk, a power of two from 4K to 4M (default 64K)",
    )
    p.add_argument(
        "--algorithm",
        type=argtypes.algorithm,
        default=EncryptSettings.algorithm,
        metavar="NAME",
        help="aes-256-gcm-siv (default) or aes-256-gcm",
    )
    p.add_argument(
        "--format",
        type=int,
        choices=FORMAT_VERSIONS,
        default=EncryptSettings.format_version,
        dest="format_version",
        help=f"on-store format (default {EncryptSettings.format_version}: a hash list binds every "
        "chunk to the manifest, so not even a key holder can change one; 1 only for readers "
        "older than format 2)",
    )
    p.add_argument("--model-name", metavar="N", help="model name (default: the folder name)")
    p.add_argument(
        "--model-version",
        default=EncryptSettings.model_version,
        metavar="V",
        help="model version, sealed; a dotted number (such as 3 or 1.2.0) lets servers refuse "
        "older versions with --min-model-version",
    )
    p.add_argument(
        "--sign-key",
        type=Path,
        metavar="PRIVATE.pem",
        help="then sign the new store with this EC private key, as cmlfs sign does",
    )


def _check_sign_key(args: argparse.Namespace) -> None:
    """Refuse an unusable --sign-key before anything is sealed."""
    if args.sign_key is not None:
        from cmlfs.signature import signing_key_fingerprint

        signing_key_fingerprint(args.sign_key)


def _sign(store: Path, private_key: Path) -> None:
    from cmlfs.push import sign_store
    from cmlfs.signature import SIGNATURE_NAME

    signer, envelope = sign_store(store, private_key)
    print(f"signed {store} into {store / SIGNATURE_NAME} with key {signer}")
    if envelope.format_version < 2:
        print(
            "note: a format 1 store cannot be mounted with --trust-publisher; re-encrypt it "
            "(format 2) to have its signature checked at mount",
            file=sys.stderr,
        )


def _sealing_settings(args: argparse.Namespace, default_name: str) -> EncryptSettings:
    return EncryptSettings(
        chunk_size=args.chunk_size,
        algorithm=args.algorithm,
        model_name=args.model_name or default_name,
        model_version=args.model_version,
        key_uri=args.key_uri,
        format_version=args.format_version,
    )


def _sealed(manifest: Manifest) -> str:
    """How a new store was sealed, for the line a command prints."""
    chunks = format_size(manifest.chunk_size)
    return f"{manifest.algorithm.label}, {chunks} chunks, format {manifest.format_version}"


def add_encrypt(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encrypt",
        help="encrypt a model folder into a new store folder",
        description="Encrypt every regular file under SRC_DIR (nested folders, any UTF-8 names) "
        "into the new or empty folder STORE_DIR: one blob per file and a sealed manifest. "
        "Symlinks are followed only to files inside SRC_DIR.",
    )
    p.add_argument("src", type=Path, metavar="SRC_DIR")
    p.add_argument("store", type=Path, metavar="STORE_DIR")
    p.add_argument(
        "--key-file",
        type=Path,
        required=True,
        metavar="KEYFILE",
        help="the model key (cmlfs keygen)",
    )
    _add_sealing_options(p)
    p.add_argument(
        "--key-uri",
        metavar="URI",
        help="where servers will get the key, recorded in the clear envelope",
    )
    p.add_argument(
        "--register",
        action="store_true",
        help="also store the key at the kbs:// --key-uri, as a key bundle pinning this manifest",
    )
    add_broker_admin_options(p)
    p.set_defaults(func=encrypt)


def add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert a KServe JWE model folder into a cmlfs store, with the same key",
        description="Authenticate every JWE file of the KServe confidential model folder SRC "
        "(a folder, s3:// prefix, or one .jwe file over http(s)://) and seal its plaintext, "
        "in memory only, into the new or empty folder STORE_DIR with the same key, so the "
        "broker's resource and release policy stay as they are. Refused, leaving nothing "
        "behind, if any file fails to authenticate; files that are not JWE are left out "
        "(logged). --key-uri is recorded in the store as encrypt --key-uri does.",
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("store", type=Path, metavar="STORE_DIR")
    add_key_options(p, required=True)
    add_insecure_http(p)
    add_store_options(p)
    _add_sealing_options(p)
    p.set_defaults(func=import_jwe)


def import_jwe(args: argparse.Namespace) -> int:
    from cmlfs.model import import_jwe_folder

    _check_sign_key(args)
    store, listing, key = _open_jwe_folder(args, args.src)
    settings = _sealing_settings(args, Path(args.src.rstrip("/")).name)
    total = 2 * sum(f.size for f in listing.files)
    try:
        with _progress(total, "authenticating and sealing") as progress:
            manifest = import_jwe_folder(store, listing, key, args.store, settings, progress)
    finally:
        store.close()
    size = sum(f.size for f in manifest.files)
    print(
        f"imported {len(manifest.files)} JWE files ({format_size(size)}) of {args.src} into "
        f"{args.store} with {_sealed(manifest)}, sealed with the same key"
    )
    if args.sign_key is not None:
        _sign(args.store, args.sign_key)
    return 0


def encrypt(args: argparse.Namespace) -> int:
    from cmlfs.publish import encrypt_model, total_bytes

    if args.register:
        check_registrable(args.key_uri)
    _check_sign_key(args)
    key = FileKeySource(args.key_file).fetch_key()
    settings = _sealing_settings(args, args.src.resolve().name)
    with _progress(total_bytes(args.src), "encrypting") as progress:
        manifest = encrypt_model(args.src, args.store, key, settings, progress)
    size = sum(f.size for f in manifest.files)
    print(
        f"encrypted {len(manifest.files)} files ({format_size(size)}) of {args.src} into "
        f"{args.store} with {_sealed(manifest)}"
    )
    if args.sign_key is not None:
        _sign(args.store, args.sign_key)
    if args.register:
        register(args.key_uri, args.key_file, args.store, args)
    return 0


def add_sign(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sign",
        help="sign an encrypted store folder (OpenSSF model signing, EC key)",
        description="Sign the manifest and blobs of STORE_DIR (cmlfs encrypt output) with an EC "
        "P-256/384/521 private key in the OpenSSF model-signing format, offline, into "
        "STORE_DIR/model.sig (replacing an older signature); cmlfs push carries it. Servers "
        "check it with --trust-publisher PUBLIC.pem; `model_signing verify key STORE_DIR "
        "--signature STORE_DIR/model.sig --public_key PUBLIC.pem` accepts it too. Prints the "
        "key's fingerprint (SHA-256 of its public key DER).",
    )
    p.add_argument("store", type=Path, metavar="STORE_DIR")
    p.add_argument(
        "--key",
        type=Path,
        required=True,
        metavar="PRIVATE.pem",
        help="unencrypted EC private key in PEM (openssl ecparam -name prime256v1 -genkey)",
    )
    p.set_defaults(func=sign)


def sign(args: argparse.Namespace) -> int:
    _sign(args.store, args.key)
    return 0


def add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload an encrypted store folder to s3://, oci:// or another folder",
        description="Upload the blobs, manifest and signature of STORE_DIR (cmlfs encrypt "
        "output) to DEST: "
        "s3://BUCKET/PREFIX, oci://REGISTRY/REPO:TAG or a folder. Blobs already there are "
        "skipped, so an interrupted push resumes. Prints the reference to mount (for OCI, the "
        "manifest digest).",
    )
    p.add_argument("src", type=Path, metavar="STORE_DIR")
    p.add_argument("dest", metavar="DEST")
    add_insecure_http(p)
    add_store_options(p)
    p.set_defaults(func=push)


def push(args: argparse.Namespace) -> int:
    from cmlfs.push import push_bytes, push_model
    from cmlfs.stores import open_store

    store = open_store(args.dest, store_settings(args), create=True)
    try:
        with _progress(push_bytes(args.src), "pushing") as progress:
            result = push_model(args.src, store, progress)
    finally:
        store.close()
    print(
        f"pushed {args.src} to {store.describe()}: {result.uploaded} objects uploaded, "
        f"{result.skipped} already there"
    )
    print(f"mount with: cmlfs mount {result.reference} MOUNTPOINT")
    return 0


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="show a stored model's public envelope, or its files with a key",
        description="Without a key: the envelope readable by anyone (format, key id, key URI). "
        "With a key: also the model's files and sizes.",
    )
    _add_stored_model(p)
    p.set_defaults(func=inspect)


def inspect(args: argparse.Namespace) -> int:
    from cmlfs.hardening import disable_core_dumps
    from cmlfs.model import open_model, read_sealed
    from cmlfs.stores import open_store
    from cmlfs.stores.base import ListingUnsupported

    settings = store_settings(args)
    store = open_store(args.store, settings)
    sealed = read_sealed(store)
    envelope = sealed.envelope
    print(f"store:       {store.describe()}")
    print(f"format:      {envelope.format_version}")
    print(f"manifest:    sha256:{sealed.sha256}")
    print(f"key id:      {envelope.key_id}")
    print(f"key uri:     {envelope.key_uri or '(none recorded)'}")
    try:
        blobs = str(sum(name.startswith("blobs/") for name in store.list()))
    except ListingUnsupported:
        blobs = "(this store cannot list its objects)"
    print(f"blobs:       {blobs}")
    print(f"signature:   {_signer(store)}")
    source = key_source(args)
    if source is None:
        return 0
    disable_core_dumps()  # the key and the manifest are about to be in this process
    _, manifest, _ = open_model(args.store, source, settings, key_settings(args), args.key_id)
    print(f"model:       {manifest.name} {manifest.version}".rstrip())
    print(f"algorithm:   {manifest.algorithm.label}")
    print(f"chunk size:  {manifest.chunk_size}")
    print(f"files:       {len(manifest.files)}, {sum(f.size for f in manifest.files)} bytes")
    for entry in manifest.files:
        print(f"{entry.size:>14}  {entry.path}")
    return 0


def _signer(store: "Store") -> str:
    """Who signed the store, not checked against anyone (that is --trust-publisher's job)."""
    from cmlfs.signature import MAX_SIGNATURE_LEN, SIGNATURE_NAME, SignatureError, signer_of
    from cmlfs.stores.base import ObjectMissing

    try:
        data = store.read_all(SIGNATURE_NAME, MAX_SIGNATURE_LEN)
    except ObjectMissing:
        return "(none)"
    try:
        return f"{SIGNATURE_NAME} by key {signer_of(data)} (not checked: see --trust-publisher)"
    except SignatureError as exc:
        return f"{SIGNATURE_NAME}: {exc}"


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="decrypt a whole stored model and check every digest",
        description="Authenticate every chunk and compare every file digest with the manifest "
        "(of a KServe JWE model folder: authenticate every JWE file). Exit 0 only when "
        "everything is intact; otherwise name the first bad file and chunk. With "
        "--trust-publisher, first check the store's signature as a mount does; with "
        "--trust-publisher and no key, check the signature and every object's SHA-256 "
        "against the signed digests (as model_signing verify does, on any store kind).",
    )
    _add_stored_model(p)
    add_trust_options(p)
    p.set_defaults(func=verify)


def verify(args: argparse.Namespace) -> int:
    from cmlfs.hardening import disable_core_dumps
    from cmlfs.model import holds_cmlfs_model, open_model
    from cmlfs.verify import verify_model

    disable_core_dumps()  # the key and every plaintext chunk are about to be in this process
    if not holds_cmlfs_model(args.store, store_settings(args)):
        return _verify_jwe(args)
    if args.trust_publisher is not None and not (args.key_file or args.key_uri or args.key_id):
        return _verify_signed(args)
    store, manifest, key = open_model(
        args.store,
        key_source(args),
        store_settings(args),
        key_settings(args),
        args.key_id,
        args.trust_publisher,
        args.min_model_version,
    )
    total = sum(f.size for f in manifest.files)
    with _progress(total, "verifying") as progress:
        verify_model(manifest, store, key, progress)
    print(f"ok: {len(manifest.files)} files, {total} bytes authenticated and digests match")
    return 0


def _verify_signed(args: argparse.Namespace) -> int:
    """Without a key: the signature, then every object's SHA-256 against its signed digest."""
    from cmlfs.model import open_signed_store
    from cmlfs.stores.base import is_object_name
    from cmlfs.verify import verify_signed_objects

    if args.min_model_version is not None:
        raise CmlfsError("the model version is sealed: --min-model-version needs the key")
    store, digests = open_signed_store(args.store, args.trust_publisher, store_settings(args))
    total = sum(store.size(name) for name in digests if is_object_name(name))
    with _progress(total, "hashing") as progress:
        verify_signed_objects(store, digests, progress)
    print(
        f"ok: {len(digests)} objects match the digests signed by {args.trust_publisher.fingerprint}"
        " (nothing decrypted: give the key to authenticate every chunk too)"
    )
    return 0


def _open_jwe_folder(args: argparse.Namespace, location: str, **trust: object):
    """A KServe JWE model folder and its key, from the stored-model options (``trust``:
    open_jwe_folder's ``publisher`` and ``min_version``, which refuse it)."""
    from cmlfs.model import open_jwe_folder

    if args.key_id is not None:
        raise CmlfsError("a JWE model folder has no cmlfs key id: leave out --key-id")
    return open_jwe_folder(location, key_source(args), store_settings(args), **trust)


def _verify_jwe(args: argparse.Namespace) -> int:
    from cmlfs.verify import verify_jwe_folder

    store, listing, key = _open_jwe_folder(
        args, args.store, publisher=args.trust_publisher, min_version=args.min_model_version
    )
    total = sum(f.size for f in listing.files)
    with _progress(total, "authenticating") as progress:
        verify_jwe_folder(listing, store, key, progress)
    print(f"ok: {len(listing.files)} JWE files, {total} bytes authenticated")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    for add in (add_keygen, add_encrypt, add_import, add_sign, add_push, add_inspect, add_verify):
        add(sub)
