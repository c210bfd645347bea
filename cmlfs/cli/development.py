"""Development commands (tests and demos, never production): ``dev-kbs``."""

import argparse
import logging
from pathlib import Path

from cmlfs.cli import argtypes


def add_dev_kbs(sub: argparse._SubParsersAction) -> None:
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
        type=argtypes.listen_address,
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
        metavar="SECONDS",
        help="session lifetime (default 300)",
    )
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this chain")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    p.set_defaults(func=dev_kbs)


def dev_kbs(args: argparse.Namespace) -> int:
    """Serve until interrupted; options left out keep DevKbsConfig's defaults."""
    from cmlfs.devkbs import DevKbs, DevKbsConfig, load_policy_file

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
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        **{name: value for name, value in given.items() if value is not None},
    )
    kbs = DevKbs(config)
    print(f"dev-kbs listening on {kbs.url}", flush=True)
    try:
        kbs.serve()
    finally:
        kbs.httpd.server_close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    add_dev_kbs(sub)
