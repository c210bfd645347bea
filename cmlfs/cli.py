"""The ``cmlfs`` command: argument parsing and output only; the work is in the layers below.

Every failure ends as one line on stderr (``cmlfs: error: ...``) and a
non-zero exit status.
"""

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from cmlfs import __version__
from cmlfs.errors import CmlfsError
from cmlfs.format.aead import Algorithm
from cmlfs.format.layout import DEFAULT_CHUNK_SIZE, chunk_size_log2
from cmlfs.keys import FileKeySource, KeySource, generate_key_file, key_source_from_uri
from cmlfs.manifest import MANIFEST_NAME, read_envelope
from cmlfs.reader.reader import DEFAULT_CACHE_BYTES
from cmlfs.units import format_size, parse_size

log = logging.getLogger("cmlfs")


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _chunk_size(text: str) -> int:
    size = _size(text)
    try:
        chunk_size_log2(size)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return size


def _algorithm(text: str) -> Algorithm:
    try:
        return Algorithm.from_label(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_key_options(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--key-file", type=Path, metavar="KEYFILE", help="file holding the 32-byte model key"
    )
    group.add_argument(
        "--key-uri",
        metavar="URI",
        help="where the key comes from (file:///path); default: the URI recorded in the model",
    )


def _key_source(args: argparse.Namespace) -> KeySource | None:
    if args.key_file is not None:
        return FileKeySource(args.key_file)
    if args.key_uri is not None:
        return key_source_from_uri(args.key_uri)
    return None


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
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


def cmd_keygen(args: argparse.Namespace) -> int:
    generate_key_file(args.out)
    print(f"wrote a new 32-byte model key to {args.out} (mode 0600)")
    return 0


def cmd_encrypt(args: argparse.Namespace) -> int:
    from cmlfs.publish import EncryptSettings, encrypt_model, total_bytes

    key = FileKeySource(args.key_file).fetch_key()
    settings = EncryptSettings(
        chunk_size=args.chunk_size,
        algorithm=args.algorithm,
        model_name=args.model_name or args.src.resolve().name,
        model_version=args.model_version,
        key_uri=args.key_uri,
    )
    with _progress(total_bytes(args.src), "encrypting") as progress:
        manifest = encrypt_model(args.src, args.store, key, settings, progress)
    size = sum(f.size for f in manifest.files)
    print(
        f"encrypted {len(manifest.files)} files ({format_size(size)}) of {args.src} into "
        f"{args.store} with {manifest.algorithm.label}, {format_size(manifest.chunk_size)} chunks"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from cmlfs.daemon import open_model
    from cmlfs.stores import open_store

    store = open_store(args.store)
    envelope = read_envelope(store.read_all(MANIFEST_NAME))
    print(f"store:       {store.describe()}")
    print(f"format:      {envelope.format_version}")
    print(f"key id:      {envelope.key_id}")
    print(f"key uri:     {envelope.key_uri or '(none recorded)'}")
    blobs = [name for name in store.list() if name.startswith("blobs/")]
    print(f"blobs:       {len(blobs)}")
    source = _key_source(args)
    if source is None:
        return 0
    _, manifest, _ = open_model(args.store, source)
    print(f"model:       {manifest.name} {manifest.version}".rstrip())
    print(f"algorithm:   {manifest.algorithm.label}")
    print(f"chunk size:  {manifest.chunk_size}")
    print(f"files:       {len(manifest.files)}, {sum(f.size for f in manifest.files)} bytes")
    for entry in manifest.files:
        print(f"{entry.size:>14}  {entry.path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cmlfs.daemon import open_model
    from cmlfs.verify import verify_model

    store, manifest, key = open_model(args.store, _key_source(args))
    total = sum(f.size for f in manifest.files)
    with _progress(total, "verifying") as progress:
        verify_model(manifest, store, key, progress)
    print(f"ok: {len(manifest.files)} files, {total} bytes authenticated and digests match")
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from cmlfs.daemon import MountSettings, ready_pipe_notifier, serve_reporting, spawn

    if not args.foreground:
        child_args = [a for a in sys.argv[1:] if a != "--foreground"]
        spawn(child_args, args.log_file, args.ready_timeout)
        print(f"mounted {args.store} at {args.mountpoint}")
        return 0
    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.INFO)
    settings = MountSettings(
        store=args.store,
        mountpoint=args.mountpoint.absolute(),
        key_source=_key_source(args),
        cache_bytes=args.cache_size,
        allow_other=args.allow_other,
    )
    if args.ready_fd is not None:
        notify = ready_pipe_notifier(args.ready_fd)
    else:

        def notify(error: str | None) -> None:
            if error is None:
                log.info("event=ready mountpoint=%s", settings.mountpoint)

    return serve_reporting(settings, notify)


def cmd_umount(args: argparse.Namespace) -> int:
    from cmlfs.errors import MountError
    from cmlfs.mountpoint import is_cmlfs_mount, unmount

    if not is_cmlfs_mount(args.mountpoint):
        raise MountError(f"{args.mountpoint} is not a cmlfs mount")
    unmount(args.mountpoint)
    print(f"unmounted {args.mountpoint}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmlfs",
        description="Confidential model loader filesystem: encrypt a model folder into a store, "
        "then mount it read-only so an unmodified program reads the plaintext, decrypted "
        "lazily in memory.",
    )
    parser.add_argument("--version", action="version", version=f"cmlfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.set_defaults(func=cmd_keygen)

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
    p.add_argument(
        "--chunk-size",
        type=_chunk_size,
        default=DEFAULT_CHUNK_SIZE,
        metavar="SIZE",
        help="plaintext bytes per chunk, a power of two from 4K to 4M (default 64K)",
    )
    p.add_argument(
        "--algorithm",
        type=_algorithm,
        default=Algorithm.AES_256_GCM_SIV,
        metavar="NAME",
        help="aes-256-gcm-siv (default) or aes-256-gcm",
    )
    p.add_argument("--model-name", metavar="N", help="model name (default: the folder name)")
    p.add_argument("--model-version", default="", metavar="V", help="model version")
    p.add_argument(
        "--key-uri",
        metavar="URI",
        help="where servers will get the key, recorded in the clear envelope",
    )
    p.set_defaults(func=cmd_encrypt)

    p = sub.add_parser(
        "inspect",
        help="show a stored model's public envelope, or its files with a key",
        description="Without a key: the envelope readable by anyone (format, key id, key URI). "
        "With a key: also the model's files and sizes.",
    )
    p.add_argument("store", metavar="STORE")
    _add_key_options(p, required=False)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "verify",
        help="decrypt a whole stored model and check every digest",
        description="Authenticate every chunk and compare every file digest with the manifest. "
        "Exit 0 only when everything is intact; otherwise name the first bad file and chunk.",
    )
    p.add_argument("store", metavar="STORE")
    _add_key_options(p, required=False)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "mount",
        help="mount a stored model read-only at a folder",
        description="Obtain the key, authenticate the manifest and mount the plaintext view at "
        "MOUNTPOINT. Without --foreground, return once the mount is ready (exit 0) or has failed "
        "(non-zero, nothing mounted). A stale mount left by a killed daemon is cleared first. "
        "SIGTERM or SIGINT unmounts.",
    )
    p.add_argument("store", metavar="STORE")
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    _add_key_options(p, required=False)
    p.add_argument(
        "--cache-size",
        type=_size,
        default=DEFAULT_CACHE_BYTES,
        metavar="SIZE",
        help="decrypted chunk cache budget (default 256M)",
    )
    p.add_argument(
        "--foreground", action="store_true", help="serve in this process until unmounted"
    )
    p.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    p.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        help="where a background daemon logs (default: nowhere)",
    )
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for a background mount to be ready (default 300)",
    )
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser(
        "umount",
        help="unmount a cmlfs mount",
        description="Unmount MOUNTPOINT; the daemon then exits.",
    )
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return args.func(args)
    except CmlfsError as exc:
        print(f"cmlfs: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"cmlfs: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cmlfs: interrupted", file=sys.stderr)
        return 130
