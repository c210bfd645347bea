"""The ``cmlfs`` command: argument parsing and output only; the work is in the layers below.

One module per command group adds its subcommands, each parser next to its handler;
option groups several commands share, and the functions that turn them into settings
objects, are in ``cmlfs.cli.options``. A new command group is a module with an
``add_commands(sub)`` function, listed in ``COMMAND_GROUPS``.

Every failure ends as one line on stderr (``cmlfs: error: ...``) and a
non-zero exit status.
"""

import argparse
import logging
import sys

from cmlfs import __version__
from cmlfs.cli import development, keys, publishing, serving
from cmlfs.errors import CmlfsError

COMMAND_GROUPS = (publishing, serving, keys, development)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmlfs",
        description="Confidential model loader filesystem: encrypt a model folder into a store, "
        "then mount it read-only so an unmodified program reads the plaintext, decrypted "
        "lazily in memory.",
    )
    parser.add_argument("--version", action="version", version=f"cmlfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if getattr(args, "attester", None) == "sample":
        print(
            "cmlfs: warning: --attester sample proves nothing (any machine can make its "
            "evidence); development and tests only",
            file=sys.stderr,
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
