"""The model owner's side of key release: ``key register`` and ``key policy``."""

import argparse
from pathlib import Path

from cmlfs.cli.options import (
    add_broker_admin_options,
    broker_admin_identity,
    broker_admin_settings,
)
from cmlfs.errors import CmlfsError
from cmlfs.keys import FileKeySource
from cmlfs.manifest import MANIFEST_NAME


def register(
    uri: str | None, key_file: Path, pin_store: Path | None, args: argparse.Namespace
) -> None:
    """Store the key (or a key bundle pinning ``pin_store``'s manifest) at a kbs:// URI."""
    from cmlfs.keys.bundle import make_bundle
    from cmlfs.keys.kbs import register_resource
    from cmlfs.manifest import manifest_digest

    check_registrable(uri)
    key = FileKeySource(key_file).fetch_key()
    resource = key
    if pin_store is not None:
        resource = make_bundle(key, manifest_digest((pin_store / MANIFEST_NAME).read_bytes()))
    settings = broker_admin_settings(args)
    registered = register_resource(uri, resource, settings, broker_admin_identity(args))
    what = "a key bundle pinning the manifest of " + str(pin_store) if pin_store else "the key"
    print(f"registered {what} at {registered}")


def check_registrable(uri: str | None) -> None:
    if not uri or not uri.startswith("kbs://"):
        raise CmlfsError("registering needs a kbs://HOST:PORT/REPO/TYPE/TAG key URI")


def add_register(key_sub: argparse._SubParsersAction) -> None:
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
    add_broker_admin_options(r)
    r.set_defaults(func=key_register)


def key_register(args: argparse.Namespace) -> int:
    register(args.uri, args.key_file, args.pin_manifest, args)
    return 0


def add_policy(key_sub: argparse._SubParsersAction) -> None:
    r = key_sub.add_parser(
        "policy",
        help="replace the broker's resource policy",
        description="POST the policy file, base64url-encoded, to /kbs/v0/resource-policy: "
        "Rego for Trustee, the JSON format of docs/KEYS.md for cmlfs dev-kbs.",
    )
    r.add_argument("broker", metavar="BROKER", help="kbs://HOST:PORT")
    r.add_argument("--policy-file", type=Path, required=True, metavar="FILE")
    add_broker_admin_options(r)
    r.set_defaults(func=key_policy)


def key_policy(args: argparse.Namespace) -> int:
    from cmlfs.keys.kbs import set_resource_policy

    settings = broker_admin_settings(args)
    policy = args.policy_file.read_bytes()
    set_resource_policy(args.broker, policy, settings, broker_admin_identity(args))
    print(f"set the resource policy of {args.broker} from {args.policy_file}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "key",
        help="publish keys and release policies to a key broker",
        description="Model owner's side of key release: store a model key (or a key bundle "
        "pinning one manifest) and the resource policy with a Trustee KBS or cmlfs dev-kbs.",
    )
    key_sub = p.add_subparsers(dest="key_command", required=True, metavar="SUBCOMMAND")
    add_register(key_sub)
    add_policy(key_sub)
