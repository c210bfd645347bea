"""The ``cmlfs`` command: argument parsing and output only; the work is in the layers below.

Every failure ends as one line on stderr (``cmlfs: error: ...``) and a
non-zero exit status.
"""

import argparse
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from cmlfs import __version__
from cmlfs.errors import CmlfsError, StoreError
from cmlfs.format.aead import Algorithm
from cmlfs.format.layout import DEFAULT_CHUNK_SIZE, chunk_size_log2
from cmlfs.keys import (
    FileKeySource,
    KeySettings,
    KeySource,
    generate_key_file,
    key_source_from_uri,
)
from cmlfs.keys.attesters import ATTESTERS
from cmlfs.keys.base import TSM_REPORT_ROOT
from cmlfs.manifest import MANIFEST_NAME, read_envelope
from cmlfs.reader.reader import DEFAULT_CACHE_BYTES
from cmlfs.stores.base import StoreSettings, parse_header
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
        help="where the key comes from (file:///path, kbs://HOST:PORT/REPO/TYPE/TAG, "
        "cdh:///REPO/TYPE/TAG); default: the URI recorded in the model",
    )
    parser.add_argument(
        "--key-id",
        type=_key_id,
        metavar="ID",
        help="the model's key id as published by its owner (32 hex digits, shown by "
        "cmlfs inspect); required to use the key URI recorded in the store, and always "
        "checked when given",
    )
    keys = parser.add_argument_group("key release (kbs://, cdh://)")
    keys.add_argument(
        "--attester",
        choices=ATTESTERS,
        default="auto",
        help="TEE evidence for the key broker: auto (the configfs-tsm TEE of this machine; "
        "never falls back to sample), tdx, snp, or sample (no TEE, proves nothing; "
        "development only). Default auto",
    )
    keys.add_argument(
        "--tee-key",
        choices=("ec", "rsa"),
        default="ec",
        help="ephemeral key the broker encrypts to: ec (P-256, ECDH-ES+A256KW; default) "
        "or rsa (RSA-OAEP-256)",
    )
    keys.add_argument(
        "--tsm-root",
        type=Path,
        default=TSM_REPORT_ROOT,
        metavar="DIR",
        help=f"configfs-tsm report folder (default {TSM_REPORT_ROOT})",
    )
    _add_kbs_ca(keys)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def _workers(text: str) -> int:
    from cmlfs.workers import MAX_WORKERS

    count = _count(text)
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"workers must be 1 to {MAX_WORKERS}, not {count}")
    return count


def _key_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError("a key id is 32 lowercase hex digits")
    return text


def _add_kbs_ca(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--kbs-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) that sign the key broker's TLS certificate (default: system CAs)",
    )


def _key_settings(args: argparse.Namespace) -> KeySettings:
    return KeySettings(
        attester=getattr(args, "attester", "auto"),
        kbs_ca=args.kbs_ca,
        insecure_http=args.insecure_http,
        tee_key_type=getattr(args, "tee_key", "ec"),
        tsm_report_root=getattr(args, "tsm_root", TSM_REPORT_ROOT),
    )


def _add_insecure_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP to the key broker and registries, and credentials over http://",
    )


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("network stores (http(s)://, s3://, oci://)")
    group.add_argument(
        "--store-header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra header on every http(s):// store request (repeatable)",
    )
    group.add_argument(
        "--store-header-file",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="file of 'NAME: VALUE' lines, e.g. a secret Authorization header (repeatable)",
    )
    group.add_argument(
        "--store-token-env",
        metavar="VAR",
        help="send 'Authorization: Bearer $VAR' to an http(s):// store",
    )
    group.add_argument(
        "--registry-auth-file",
        type=Path,
        metavar="FILE",
        help="docker/podman auth.json with registry credentials (default: $REGISTRY_AUTH_FILE, "
        "else $DOCKER_CONFIG/config.json or ~/.docker/config.json)",
    )
    group.add_argument(
        "--store-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) that sign the store's TLS certificate: https:// stores, "
        "registries and their token services, S3 endpoints (default: system CAs)",
    )
    group.add_argument(
        "--store-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="connect timeout and longest silence while reading an answer (default 30)",
    )
    group.add_argument(
        "--store-attempts",
        type=int,
        choices=range(1, 11),
        default=4,
        metavar="N",
        help="tries per request before the read fails with EIO (1-10, default 4)",
    )


def _store_settings(args: argparse.Namespace) -> StoreSettings:
    lines = list(args.store_header)
    for path in args.store_header_file:
        lines.extend(
            line for line in path.read_text().splitlines() if line.strip() and line[0] != "#"
        )
    headers = [parse_header(line) for line in lines]
    if args.store_token_env:
        token = os.environ.get(args.store_token_env)
        if not token:
            raise StoreError(f"environment variable {args.store_token_env} is not set")
        headers.append(parse_header(f"Authorization: Bearer {token}"))
    return StoreSettings(
        headers=tuple(headers),
        insecure_http=args.insecure_http,
        timeout=args.store_timeout,
        attempts=args.store_attempts,
        registry_auth_file=args.registry_auth_file or _default_registry_auth_file(),
        ca_file=args.store_ca.absolute() if args.store_ca else None,
    )


def _default_registry_auth_file() -> Path | None:
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return Path(os.environ["REGISTRY_AUTH_FILE"])
    docker = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    return docker if docker.is_file() else None


def _key_source(args: argparse.Namespace) -> KeySource | None:
    if args.key_file is not None:
        return FileKeySource(args.key_file)
    if args.key_uri is not None:
        return key_source_from_uri(args.key_uri, _key_settings(args))
    return None


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    from tqdm import tqdm  # imported here: it costs a mount's start ~0.1 s

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

    if args.register:
        _check_registrable(args.key_uri)
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
    if args.register:
        _register(args.key_uri, args.key_file, args.store, args)
    return 0


def _register(
    uri: str | None, key_file: Path, pin_store: Path | None, args: argparse.Namespace
) -> None:
    """Store the key (or a key bundle pinning ``pin_store``'s manifest) at a kbs:// URI."""
    from cmlfs.keys.bundle import make_bundle
    from cmlfs.keys.kbs import register_resource
    from cmlfs.manifest import manifest_digest

    _check_registrable(uri)
    key = FileKeySource(key_file).fetch_key()
    resource = key
    if pin_store is not None:
        resource = make_bundle(key, manifest_digest((pin_store / MANIFEST_NAME).read_bytes()))
    settings = KeySettings(kbs_ca=args.kbs_ca, insecure_http=args.insecure_http)
    registered = register_resource(uri, resource, settings, args.admin_key)
    what = "a key bundle pinning the manifest of " + str(pin_store) if pin_store else "the key"
    print(f"registered {what} at {registered}")


def _check_registrable(uri: str | None) -> None:
    if not uri or not uri.startswith("kbs://"):
        raise CmlfsError("registering needs a kbs://HOST:PORT/REPO/TYPE/TAG key URI")


def _add_register_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-key",
        type=Path,
        metavar="PEM",
        help="Ed25519 private key that signs the broker's admin token (EdDSA JWT)",
    )
    _add_kbs_ca(parser)
    _add_insecure_http(parser)


def cmd_key_register(args: argparse.Namespace) -> int:
    _register(args.uri, args.key_file, args.pin_manifest, args)
    return 0


def cmd_key_policy(args: argparse.Namespace) -> int:
    from cmlfs.keys.kbs import set_resource_policy

    settings = KeySettings(kbs_ca=args.kbs_ca, insecure_http=args.insecure_http)
    set_resource_policy(args.broker, args.policy_file.read_bytes(), settings, args.admin_key)
    print(f"set the resource policy of {args.broker} from {args.policy_file}")
    return 0


def cmd_dev_kbs(args: argparse.Namespace) -> int:
    from cmlfs.devkbs import ALLOW_ALL, DevKbs, DevKbsConfig, load_policy_file

    logging.getLogger().setLevel(logging.INFO)
    config = DevKbsConfig(
        repository=args.repository,
        host=args.listen[0],
        port=args.listen[1],
        policy=load_policy_file(args.policy) if args.policy else ALLOW_ALL,
        admin_public_key=args.admin_public_key,
        session_ttl=args.session_ttl,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    kbs = DevKbs(config)
    print(f"dev-kbs listening on {kbs.url}", flush=True)
    try:
        kbs.serve()
    finally:
        kbs.httpd.server_close()
    return 0


def _listen(text: str) -> tuple[str, int]:
    from cmlfs.devkbs import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_key_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "key",
        help="publish keys and release policies to a key broker",
        description="Model owner's side of key release: store a model key (or a key bundle "
        "pinning one manifest) and the resource policy with a Trustee KBS or cmlfs dev-kbs.",
    )
    key_sub = p.add_subparsers(dest="key_command", required=True, metavar="SUBCOMMAND")
    r = key_sub.add_parser(
        "register",
        help="store a model key at a kbs:// URI through the broker's admin API",
        description="POST the key to /kbs/v0/resource/REPO/TYPE/TAG. With --pin-manifest, "
        "store a key bundle that releases the key only for that store's manifest.",
    )
    r.add_argument("uri", metavar="URI", help="kbs://HOST:PORT/REPO/TYPE/TAG")
    r.add_argument("--key-file", type=Path, required=True, metavar="KEYFILE")
    r.add_argument(
        "--pin-manifest",
        type=Path,
        metavar="STORE_DIR",
        help="register a key bundle pinning the manifest in this store folder",
    )
    _add_register_options(r)
    r.set_defaults(func=cmd_key_register)
    r = key_sub.add_parser(
        "policy",
        help="replace the broker's resource policy",
        description="POST the policy file, base64url-encoded, to /kbs/v0/resource-policy: "
        "Rego for Trustee, the JSON format of docs/KEYS.md for cmlfs dev-kbs.",
    )
    r.add_argument("broker", metavar="BROKER", help="kbs://HOST:PORT")
    r.add_argument("--policy-file", type=Path, required=True, metavar="FILE")
    _add_register_options(r)
    r.set_defaults(func=cmd_key_policy)

    p = sub.add_parser(
        "dev-kbs",
        help="run a development key broker (tests and demos only, never production)",
        description="A key broker speaking Trustee's KBS protocol 0.4.0 that verifies only "
        "'sample' evidence, stores resources in clear in --repository, and applies the JSON "
        "resource policy of docs/KEYS.md. Development and tests only.",
    )
    p.add_argument("--repository", type=Path, required=True, metavar="DIR")
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8080),
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8080; port 0 picks a free port)",
    )
    p.add_argument("--policy", type=Path, metavar="FILE", help="resource policy (default: allow)")
    p.add_argument(
        "--admin-public-key",
        type=Path,
        metavar="PEM",
        help="Ed25519 public key of admin tokens; without it the admin API is loopback-only "
        "and the broker refuses non-loopback addresses",
    )
    p.add_argument(
        "--session-ttl",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="session lifetime (default 300)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    p.set_defaults(func=cmd_dev_kbs)


def cmd_inspect(args: argparse.Namespace) -> int:
    from cmlfs.daemon import disable_core_dumps, open_model
    from cmlfs.manifest import MAX_MANIFEST_LEN
    from cmlfs.stores import open_store
    from cmlfs.stores.base import ListingUnsupported

    settings = _store_settings(args)
    store = open_store(args.store, settings)
    envelope = read_envelope(store.read_all(MANIFEST_NAME, MAX_MANIFEST_LEN))
    print(f"store:       {store.describe()}")
    print(f"format:      {envelope.format_version}")
    print(f"key id:      {envelope.key_id}")
    print(f"key uri:     {envelope.key_uri or '(none recorded)'}")
    try:
        blobs = str(sum(name.startswith("blobs/") for name in store.list()))
    except ListingUnsupported:
        blobs = "(this store cannot list its objects)"
    print(f"blobs:       {blobs}")
    source = _key_source(args)
    if source is None:
        return 0
    disable_core_dumps()  # the key and the manifest are about to be in this process
    _, manifest, _ = open_model(args.store, source, settings, _key_settings(args), args.key_id)
    print(f"model:       {manifest.name} {manifest.version}".rstrip())
    print(f"algorithm:   {manifest.algorithm.label}")
    print(f"chunk size:  {manifest.chunk_size}")
    print(f"files:       {len(manifest.files)}, {sum(f.size for f in manifest.files)} bytes")
    for entry in manifest.files:
        print(f"{entry.size:>14}  {entry.path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cmlfs.daemon import disable_core_dumps, open_model
    from cmlfs.verify import verify_model

    disable_core_dumps()  # the key and every plaintext chunk are about to be in this process
    store, manifest, key = open_model(
        args.store, _key_source(args), _store_settings(args), _key_settings(args), args.key_id
    )
    total = sum(f.size for f in manifest.files)
    with _progress(total, "verifying") as progress:
        verify_model(manifest, store, key, progress)
    print(f"ok: {len(manifest.files)} files, {total} bytes authenticated and digests match")
    return 0


def _mount_settings(args: argparse.Namespace, store: str, mountpoint: Path):
    """MountSettings from the options ``mount`` and ``run`` share."""
    from cmlfs.daemon import MountSettings

    status = None
    if args.http is not None:
        from cmlfs.status import StatusSettings, default_runtime_dir

        runtime_dir = default_runtime_dir(dict(os.environ), os.geteuid())
        status = StatusSettings(*args.http, runtime_dir=runtime_dir)
    return MountSettings(
        store=store,
        mountpoint=mountpoint.absolute(),
        key_source=_key_source(args),
        cache_bytes=args.cache_size,
        allow_other=args.allow_other,
        store_settings=_store_settings(args),
        fetch_bytes=args.fetch_size,
        threads=args.threads,
        workers=args.workers,
        disk_cache=args.disk_cache.absolute() if args.disk_cache else None,
        disk_cache_bytes=args.disk_cache_size,
        key_settings=_key_settings(args),
        expected_key_id=args.key_id,
        status=status,
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from cmlfs.daemon import await_ready, fork_daemon, serve_reporting

    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.INFO)
    settings = _mount_settings(args, args.store, args.mountpoint)
    if not args.foreground:
        pid, ready_fd = fork_daemon(settings, args.log_file or Path(os.devnull))
        await_ready(ready_fd, pid, args.ready_timeout)
        print(f"mounted {args.store} at {args.mountpoint}", flush=True)
        # As daemon(3) does, the parent leaves without tearing down its interpreter: the
        # teardown of the modules a mount imports takes ~0.1 s and protects nothing.
        os._exit(0)

    def notify(error: str | None) -> None:
        if error is None:
            log.info("event=ready mountpoint=%s", settings.mountpoint)

    return serve_reporting(settings, notify)


def cmd_run(args: argparse.Namespace) -> int:
    from cmlfs.run import CommandError, run_with_mount

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CmlfsError("give the server command after --, e.g. cmlfs run ... -- vllm serve /m")
    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.INFO)
    settings = _mount_settings(args, args.store, args.mount)
    try:
        return run_with_mount(settings, command, args.ready_timeout)
    except CommandError as exc:
        print(f"cmlfs: error: {exc}", file=sys.stderr)
        return exc.status


def cmd_status(args: argparse.Namespace) -> int:
    from cmlfs.status import default_runtime_dir, report_lines

    runtime_dir = default_runtime_dir(dict(os.environ), os.geteuid())
    lines, ready = report_lines(args.mountpoint, args.http, runtime_dir)
    print("\n".join(lines))
    return 0 if ready else 1


def cmd_push(args: argparse.Namespace) -> int:
    from cmlfs.push import push_bytes, push_model
    from cmlfs.stores import open_store

    store = open_store(args.dest, _store_settings(args), create=True)
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


def cmd_umount(args: argparse.Namespace) -> int:
    from cmlfs.errors import MountError
    from cmlfs.mountpoint import is_cmlfs_mount, unmount

    if not is_cmlfs_mount(args.mountpoint):
        raise MountError(f"{args.mountpoint} is not a cmlfs mount")
    unmount(args.mountpoint)
    print(f"unmounted {args.mountpoint}")
    return 0


def _http_address(text: str) -> tuple[str, int]:
    from cmlfs.status import parse_address

    try:
        return parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    """Options of ``mount`` that ``run`` shares: key, store, cache, status server."""
    _add_key_options(p, required=False)
    _add_insecure_http(p)
    p.add_argument(
        "--cache-size",
        type=_size,
        default=DEFAULT_CACHE_BYTES,
        metavar="SIZE",
        help="decrypted chunk cache budget (default 64M)",
    )
    p.add_argument(
        "--fetch-size",
        type=_chunk_size,
        metavar="SIZE",
        help="the aligned run a store request rounds a read up to, a power of two "
        "(default: just the chunks a read misses from a folder or with --workers, "
        "4M from a network store)",
    )
    p.add_argument(
        "--threads",
        type=_count,
        metavar="N",
        help="worker threads for store reads and decryption; 0 runs them on the daemon's "
        "event loop (default: 0 for a local folder or with --workers, 8 for a network store)",
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="processes serving the mount, each fetching and decrypting on its own core "
        "with 1/N of the cache (default 1; more help where cores are free; not with "
        "--threads or --disk-cache)",
    )
    p.add_argument(
        "--disk-cache",
        type=Path,
        metavar="DIR",
        help="keep fetched ciphertext (never plaintext) in DIR across mounts",
    )
    p.add_argument(
        "--disk-cache-size",
        type=_size,
        default=8 << 30,
        metavar="SIZE",
        help="disk cache budget (default 8G)",
    )
    _add_store_options(p)
    p.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    p.add_argument(
        "--ready-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the mount to be ready (default 300)",
    )
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument(
        "--http",
        type=_http_address,
        metavar="HOST:PORT",
        help="serve /healthz, /readyz and /metrics (Prometheus) there, e.g. 127.0.0.1:9100; "
        "see `cmlfs status`",
    )


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
    p.add_argument(
        "--register",
        action="store_true",
        help="also store the key at the kbs:// --key-uri, as a key bundle pinning this manifest",
    )
    _add_register_options(p)
    p.set_defaults(func=cmd_encrypt)

    p = sub.add_parser(
        "inspect",
        help="show a stored model's public envelope, or its files with a key",
        description="Without a key: the envelope readable by anyone (format, key id, key URI). "
        "With a key: also the model's files and sizes.",
    )
    p.add_argument("store", metavar="STORE")
    _add_key_options(p, required=False)
    _add_insecure_http(p)
    _add_store_options(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "verify",
        help="decrypt a whole stored model and check every digest",
        description="Authenticate every chunk and compare every file digest with the manifest. "
        "Exit 0 only when everything is intact; otherwise name the first bad file and chunk.",
    )
    p.add_argument("store", metavar="STORE")
    _add_key_options(p, required=False)
    _add_insecure_http(p)
    _add_store_options(p)
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
    _add_mount_options(p)
    p.add_argument(
        "--foreground", action="store_true", help="serve in this process until unmounted"
    )
    p.add_argument(
        "--log-file",
        type=Path,
        metavar="FILE",
        help="where a background daemon logs (default: nowhere)",
    )
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser(
        "push",
        help="upload an encrypted store folder to s3://, oci:// or another folder",
        description="Upload the blobs and manifest of STORE_DIR (cmlfs encrypt output) to DEST: "
        "s3://BUCKET/PREFIX, oci://REGISTRY/REPO:TAG or a folder. Blobs already there are "
        "skipped, so an interrupted push resumes. Prints the reference to mount (for OCI, the "
        "manifest digest).",
    )
    p.add_argument("src", type=Path, metavar="STORE_DIR")
    p.add_argument("dest", metavar="DEST")
    _add_insecure_http(p)
    _add_store_options(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser(
        "umount",
        help="unmount a cmlfs mount",
        description="Unmount MOUNTPOINT; the daemon then exits.",
    )
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.set_defaults(func=cmd_umount)

    p = sub.add_parser(
        "run",
        help="mount, run a server until it exits, unmount (in-container mode)",
        description="Mount STORE at DIR (created if missing), wait until the mount is ready, "
        "run COMMAND as a child "
        "with signals forwarded, then unmount and exit with COMMAND's status (128+N if signal "
        "N killed it; 1 if the mount was lost). For pods where mounts do not propagate between "
        "containers, e.g. Confidential Containers.",
    )
    p.add_argument("--store", required=True, metavar="STORE", help="where the model is stored")
    p.add_argument("--mount", type=Path, required=True, metavar="DIR", help="where to mount it")
    _add_mount_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "status",
        help="show readiness and counters of a mount's daemon",
        description="Ask the daemon serving MOUNTPOINT (mounted with --http) whether the mount "
        "answers, and show its counters. Exit 0 when ready, 1 otherwise.",
    )
    p.add_argument("mountpoint", type=Path, metavar="MOUNTPOINT")
    p.add_argument(
        "--http",
        metavar="URL",
        help="the daemon's status server (default: the address the daemon recorded)",
    )
    p.set_defaults(func=cmd_status)

    _add_key_commands(sub)
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
