"""Option groups that several commands share, each next to the function that reads it.

A group is a pair: ``add_X_options(parser)`` declares the options, and ``X_settings(args)``
(or ``X_source``) turns the parsed options into the settings object of the layer that
uses them. Defaults come from those settings classes, so a default lives in one place.
To add an option to a group, add it in the ``add_`` function and read it in the settings
function next to it; every command that uses the group then has it.
"""

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cmlfs.cli import argtypes
from cmlfs.daemon.settings import MountSettings
from cmlfs.errors import CmlfsError, StoreError
from cmlfs.keys import KeySettings, KeySource, key_file_source, key_source_from_uri
from cmlfs.keys.attesters import ATTESTERS
from cmlfs.stores.base import StoreSettings, parse_header

if TYPE_CHECKING:
    from cmlfs.keys.kbs import AdminIdentity

Parser = argparse.ArgumentParser | argparse._ArgumentGroup


# --- plain HTTP: one switch for stores and registries, another for key brokers ---------------


def add_insecure_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP to registries, and credentials over http:// to stores; never "
        "to a key broker (that is --insecure-kbs-http)",
    )


def _add_insecure_kbs_http(parser: Parser) -> None:
    parser.add_argument(
        "--insecure-kbs-http",
        action="store_true",
        help="allow plain HTTP (no TLS) to kbs:// key brokers and to cdh:// data hubs off "
        "loopback. Anyone on that path can play the broker and hand out a key of their own, "
        "so a mount uses such a key only for a model pinned with --key-id",
    )


class _RenamedForBrokers(argparse.Action):
    """``--insecure-http`` on a command that only talks to a key broker: its old meaning."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error("--insecure-http no longer reaches key brokers: give --insecure-kbs-http")


# --- key options: where the model key comes from and how it is released ----------------------


def add_key_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """``--key-file``/``--key-uri``, ``--key-id`` and key release; needs ``add_insecure_http``."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument(
        "--key-file",
        type=Path,
        metavar="KEYFILE",
        help="file holding the model key: 32 raw bytes (a JWE folder's key also as a JWK or "
        "base64url text, as KServe reads it)",
    )
    group.add_argument(
        "--key-uri",
        metavar="URI",
        help="where the key comes from (file:///path, kbs://HOST:PORT/REPO/TYPE/TAG, "
        "kbs:///REPO/TYPE/TAG or cdh:///REPO/TYPE/TAG through the data hub); default: the "
        "URI recorded in the model",
    )
    parser.add_argument(
        "--key-id",
        type=argtypes.key_id,
        metavar="ID",
        help="the model's key id as published by its owner (32 hex digits, shown by "
        "cmlfs inspect); required to use the key URI recorded in the store or a key that "
        "comes over plain HTTP (--insecure-kbs-http), and always checked when given",
    )
    keys = parser.add_argument_group("key release (kbs://, cdh://)")
    keys.add_argument(
        "--attester",
        choices=ATTESTERS,
        default=KeySettings.attester,
        help="TEE evidence for the key broker: auto (the configfs-tsm TEE of this machine, "
        "else an Azure vTPM holding an HCL report; never falls back to sample), tdx, snp, "
        "az-snp-vtpm or az-tdx-vtpm (Azure confidential VMs, through the vTPM), or sample "
        "(no TEE, proves nothing; development only). Default auto",
    )
    keys.add_argument(
        "--tee-key",
        choices=("ec", "rsa"),
        default=KeySettings.tee_key_type,
        help="ephemeral key the broker encrypts to: ec (P-256, ECDH-ES+A256KW; default) "
        "or rsa (RSA-OAEP-256)",
    )
    keys.add_argument(
        "--tsm-root",
        type=Path,
        default=KeySettings.tsm_report_root,
        metavar="DIR",
        help=f"configfs-tsm report folder (default {KeySettings.tsm_report_root})",
    )
    keys.add_argument(
        "--tpm-tcti",
        default=KeySettings.tpm_tcti,
        metavar="TCTI",
        help=f"tpm2-tss TCTI of the vTPM for az-*-vtpm evidence (default {KeySettings.tpm_tcti})",
    )
    keys.add_argument(
        "--metadata-url",
        type=argtypes.metadata_url,
        default=KeySettings.metadata_url,
        metavar="URL",
        help="Azure instance metadata service, for the VCEK and TD quotes "
        f"(default {KeySettings.metadata_url})",
    )
    keys.add_argument(
        "--vtpm-report-wait",
        type=argtypes.seconds,
        default=KeySettings.vtpm_report_wait,
        metavar="SECONDS",
        help="time the paravisor is given to renew the HCL report after the request "
        f"(default {KeySettings.vtpm_report_wait:g}, as Azure's tooling waits)",
    )
    _add_kbs_ca(keys)
    keys.add_argument(
        "--cdh-address",
        type=argtypes.cdh_address,
        default=os.environ.get("CDH_ADDR", KeySettings.cdh_address),
        metavar="HOST:PORT",
        help="the CoCo data hub behind kbs:///... and cdh:///... key URIs (default: "
        f"$CDH_ADDR as KServe reads it, else {KeySettings.cdh_address})",
    )
    _add_insecure_kbs_http(keys)


def key_settings(args: argparse.Namespace) -> KeySettings:
    """KeySettings from ``add_key_options``."""
    return KeySettings(
        attester=args.attester,
        kbs_ca=args.kbs_ca,
        insecure_kbs_http=args.insecure_kbs_http,
        tee_key_type=args.tee_key,
        tsm_report_root=args.tsm_root,
        cdh_address=args.cdh_address,
        tpm_tcti=args.tpm_tcti,
        metadata_url=args.metadata_url,
        vtpm_report_wait=args.vtpm_report_wait,
    )


def key_source(args: argparse.Namespace) -> KeySource | None:
    """The key source the options name; None: the key URI recorded in the model."""
    if args.key_file is not None:
        return key_file_source(args.key_file, key_settings(args))
    if args.key_uri is not None:
        return key_source_from_uri(args.key_uri, key_settings(args))
    return None


def _add_kbs_ca(parser: Parser) -> None:
    parser.add_argument(
        "--kbs-ca",
        type=Path,
        metavar="FILE",
        help="CA certificate(s) that sign the key broker's TLS certificate (default: the "
        "system trust store, OpenSSL's default CA file or else folder, on Debian "
        "/etc/ssl/certs/ca-certificates.crt from update-ca-certificates; never certifi "
        "and no CA variable of requests)",
    )


# --- broker admin options: the model owner's side of a key broker ----------------------------


def add_broker_admin_options(parser: argparse.ArgumentParser) -> None:
    """``--admin-key`` (with its ``iss``/``aud``), ``--kbs-ca`` and ``--insecure-kbs-http`` of
    commands that write to a broker; ``--insecure-http`` there is refused with the new name."""
    parser.add_argument(
        "--admin-key",
        type=Path,
        metavar="PEM",
        help="Ed25519 private key that signs the broker's admin token (EdDSA JWT, role admin)",
    )
    parser.add_argument(
        "--admin-issuer",
        metavar="ISS",
        help="'iss' claim of the admin token, for a Trustee whose admin identity provider "
        "entry names an issuer (it must match exactly)",
    )
    parser.add_argument(
        "--admin-audience",
        metavar="AUD",
        help="'aud' claim of the admin token, for a Trustee whose admin identity provider "
        "entry names an audience",
    )
    _add_kbs_ca(parser)
    _add_insecure_kbs_http(parser)
    parser.add_argument("--insecure-http", action=_RenamedForBrokers)


def broker_admin_identity(args: argparse.Namespace) -> "AdminIdentity | None":
    """Who signs admin tokens, from ``add_broker_admin_options``; None: send no token."""
    from cmlfs.keys.kbs import AdminIdentity

    if args.admin_key is None:
        if args.admin_issuer is not None or args.admin_audience is not None:
            raise CmlfsError("--admin-issuer and --admin-audience go with --admin-key")
        return None
    return AdminIdentity(args.admin_key, args.admin_issuer, args.admin_audience)


def broker_admin_settings(args: argparse.Namespace) -> KeySettings:
    """KeySettings from ``add_broker_admin_options``: TLS to the broker, no attestation."""
    return KeySettings(kbs_ca=args.kbs_ca, insecure_kbs_http=args.insecure_kbs_http)


# --- store options: how network stores are reached -------------------------------------------


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """Headers, credentials, TLS and retries of network stores; needs ``add_insecure_http``."""
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
        "registries and their token services, S3 endpoints (default: the file "
        "$REQUESTS_CA_BUNDLE or $CURL_CA_BUNDLE names for https:// and oci://, $AWS_CA_BUNDLE "
        "or the AWS profile's ca_bundle for s3://, else the system trust store as for --kbs-ca; "
        "never certifi)",
    )
    group.add_argument(
        "--store-timeout",
        type=argtypes.timeout(3600),
        default=StoreSettings.timeout,
        metavar="SECONDS",
        help="connect timeout and longest silence while reading an answer "
        f"(default {StoreSettings.timeout:g}, at most 3600)",
    )
    group.add_argument(
        "--store-attempts",
        type=int,
        choices=range(1, 11),
        default=StoreSettings.attempts,
        metavar="N",
        help=f"tries per request before the read fails with EIO (1-10, default "
        f"{StoreSettings.attempts})",
    )


def store_settings(args: argparse.Namespace) -> StoreSettings:
    """StoreSettings from ``add_store_options``; secrets are read here and kept in memory."""
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


# --- trust options: whose model, and how new, a mount or verify accepts ----------------------


def add_trust_options(parser: argparse.ArgumentParser) -> None:
    """``--trust-publisher`` (a PublisherKey) and ``--min-model-version``: ``open_model``'s
    ``publisher`` and ``min_version``, as MountSettings carries them."""
    group = parser.add_argument_group("publisher and version")
    group.add_argument(
        "--trust-publisher",
        type=argtypes.publisher_key,
        metavar="PUBLIC.pem",
        help="accept only a format 2 store whose signature (model.sig, OpenSSF model signing, "
        "written by cmlfs sign or model_signing sign key) is by this EC public key and lists "
        "the store's manifest; checked before the key is asked for, without reading the blobs",
    )
    group.add_argument(
        "--min-model-version",
        type=argtypes.model_version,
        metavar="VERSION",
        help="refuse a model whose sealed version (cmlfs encrypt --model-version) is older: "
        "dotted numbers compared part by part (1.2 = 1.2.0 < 1.10 < 2); a model whose version "
        "is not a dotted number is refused",
    )


# --- mount options: shared by ``mount`` and ``run`` ------------------------------------------


def add_mount_options(p: argparse.ArgumentParser) -> None:
    """Options of ``mount`` that ``run`` shares: key, trust, store, cache, status server."""
    add_key_options(p, required=False)
    add_insecure_http(p)
    add_trust_options(p)
    p.add_argument(
        "--cache-size",
        type=argtypes.size,
        default=MountSettings.cache_bytes,
        metavar="SIZE",
        help="decrypted chunk cache budget (default 64M)",
    )
    p.add_argument(
        "--fetch-size",
        type=argtypes.chunk_size,
        metavar="SIZE",
        help="the aligned run a store request rounds a read up to, a power of two "
        "(default: just the chunks a read misses from a folder or with --workers, "
        "4M from a network store)",
    )
    p.add_argument(
        "--threads",
        type=argtypes.count,
        metavar="N",
        help="worker threads for store reads and decryption; 0 runs them on the daemon's "
        "event loop (default: 0 for a local folder or with --workers, 8 for a network store)",
    )
    p.add_argument(
        "--workers",
        type=argtypes.workers,
        default=MountSettings.workers,
        metavar="N",
        help="processes serving the mount, each fetching and decrypting on its own core "
        "with 1/N of the cache (default 1; more help where cores are free; not with "
        "--threads or --disk-cache)",
    )
    p.add_argument(
        "--warm-up",
        type=argtypes.size_or_auto,
        default=MountSettings.warm_up_bytes,
        metavar="SIZE",
        help="once a file is opened, decrypt it in the background and push its plaintext "
        "into the kernel's page cache, so a server that mmaps the model finds its pages "
        "there instead of waiting for the daemon on each fault; at most SIZE bytes per "
        "mount (default auto: half the memory available at mount; 0 turns it off; one "
        "process only, not with --workers)",
    )
    p.add_argument(
        "--disk-cache",
        type=Path,
        metavar="DIR",
        help="keep fetched ciphertext (never plaintext) in DIR across mounts",
    )
    p.add_argument(
        "--disk-cache-size",
        type=argtypes.size,
        default=MountSettings.disk_cache_bytes,
        metavar="SIZE",
        help="disk cache budget (default 8G)",
    )
    add_store_options(p)
    p.add_argument("--allow-other", action="store_true", help="let other users read the mount")
    p.add_argument(
        "--show-plain-files",
        action="store_true",
        help="a JWE model folder: also serve its files that are not JWE, as the store holds "
        "them (unauthenticated: whoever can write to the store can change them); default: "
        "left out",
    )
    p.add_argument(
        "--ready-timeout",
        type=argtypes.timeout(3600),
        default=300.0,
        metavar="SECONDS",
        help="how long to wait for the mount to be ready (default 300, at most 3600)",
    )
    p.add_argument("--debug", action="store_true", help="log every request")
    p.add_argument(
        "--http",
        type=argtypes.http_address,
        metavar="HOST:PORT",
        help="serve /healthz, /readyz and /metrics (Prometheus) there, e.g. 127.0.0.1:9100; "
        "see `cmlfs status`",
    )


def mount_settings(args: argparse.Namespace, store: str, mountpoint: Path) -> MountSettings:
    """MountSettings from ``add_mount_options``, for ``store`` mounted at ``mountpoint``."""
    status = None
    if args.http is not None:
        from cmlfs.status import StatusSettings, default_runtime_dir

        runtime_dir = default_runtime_dir(dict(os.environ), os.geteuid())
        status = StatusSettings(*args.http, runtime_dir=runtime_dir)
    return MountSettings(
        store=store,
        mountpoint=mountpoint.absolute(),
        key_source=key_source(args),
        cache_bytes=args.cache_size,
        allow_other=args.allow_other,
        store_settings=store_settings(args),
        fetch_bytes=args.fetch_size,
        threads=args.threads,
        workers=args.workers,
        disk_cache=args.disk_cache.absolute() if args.disk_cache else None,
        disk_cache_bytes=args.disk_cache_size,
        key_settings=key_settings(args),
        expected_key_id=args.key_id,
        publisher=args.trust_publisher,
        min_version=args.min_model_version,
        status=status,
        show_plain=args.show_plain_files,
        warm_up_bytes=args.warm_up,
    )
