"""Development commands (tests and demos, never production): ``dev-kbs``."""

import argparse
import logging
import sys
from pathlib import Path

from cmlfs.cli import argtypes


def add_dev_kbs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dev-kbs",
        help="run a development key broker (tests and demos only, never production)",
        description="A key broker speaking Trustee's KBS protocol 0.4.0, as strict as Trustee "
        "about request bodies and admin tokens, that verifies 'sample' evidence and Azure vTPM "
        "evidence (az-snp-vtpm, az-tdx-vtpm, against the vendor roots given by --amd-chain and "
        "--intel-root), stores resources in clear in --repository, and applies the JSON "
        "resource policy of docs/KEYS.md. Development and tests only: it serves loopback "
        "unless --insecure-dev-listen-anywhere is given.",
    )
    p.add_argument("--repository", type=Path, required=True, metavar="DIR")
    p.add_argument(
        "--listen",
        type=argtypes.listen_address,
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:8080; port 0 picks a free port); "
        "a non-loopback address also needs --insecure-dev-listen-anywhere",
    )
    p.add_argument(
        "--insecure-dev-listen-anywhere",
        action="store_true",
        help="allow a non-loopback --listen address: other machines can then get keys from a "
        "broker that proves nothing about them (needs --admin-public-key too)",
    )
    p.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="resource policy (default: release to every verified TEE, to 'sample' evidence "
        "only on loopback)",
    )
    p.add_argument(
        "--admin-public-key",
        type=Path,
        metavar="PEM",
        help="Ed25519 public key of admin tokens (EdDSA JWTs with exp and role admin); "
        "without it the admin API is loopback-only and the broker refuses non-loopback addresses",
    )
    p.add_argument(
        "--admin-issuer",
        metavar="ISS",
        help="refuse admin tokens whose 'iss' is not this (as a Trustee identity provider entry)",
    )
    p.add_argument(
        "--admin-audience",
        metavar="AUD",
        help="refuse admin tokens whose 'aud' does not hold this",
    )
    p.add_argument(
        "--session-ttl",
        type=argtypes.timeout(86400),
        metavar="SECONDS",
        help="session lifetime (default 300, at most 86400)",
    )
    p.add_argument(
        "--amd-chain",
        type=Path,
        metavar="PEM",
        help="ASK then ARK (AMD KDS cert_chain format) that az-snp-vtpm VCEKs must chain to; "
        "Trustee uses AMD's own; without it az-snp-vtpm evidence is refused",
    )
    p.add_argument(
        "--intel-root",
        type=Path,
        metavar="PEM",
        help="root certificate az-tdx-vtpm TD quotes' PCK chains must end in (Trustee uses "
        "Intel's via DCAP); without it az-tdx-vtpm evidence is refused",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    p.set_defaults(func=dev_kbs)


def dev_kbs(args: argparse.Namespace) -> int:
    """Serve until interrupted; options left out keep DevKbsConfig's defaults."""
    from cmlfs.devkbs import BANNER, DevKbs, DevKbsConfig, load_policy_file

    logging.getLogger().setLevel(logging.INFO)
    given = {
        "policy": load_policy_file(args.policy) if args.policy else None,
        "session_ttl": args.session_ttl,
        "host": args.listen[0] if args.listen else None,
        "port": args.listen[1] if args.listen else None,
    }
    config = DevKbsConfig(
        repository=args.repository,
        admin_public_key=args.admin_public_key,
        amd_chain=args.amd_chain,
        intel_root=args.intel_root,
        admin_issuer=args.admin_issuer,
        admin_audience=args.admin_audience,
        listen_anywhere=args.insecure_dev_listen_anywhere,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        **{name: value for name, value in given.items() if value is not None},
    )
    kbs = DevKbs(config)
    # on the terminal itself, whatever happens to the log
    print(f"WARNING: {BANNER.format(repo=args.repository)}", file=sys.stderr)
    if config.listen_anywhere:
        print(
            f"WARNING: serving {config.host} to other machines (--insecure-dev-listen-anywhere)",
            file=sys.stderr,
        )
    print(f"dev-kbs listening on {kbs.url}", flush=True)
    try:
        kbs.serve()
    finally:
        kbs.httpd.server_close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    add_dev_kbs(sub)
