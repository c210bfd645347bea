"""Argument types: turn one command-line word into a checked value, or an argparse error.

Each wraps a parser of the layer that owns the value, so the rules live in one place
and the CLI only converts ``ValueError`` into argparse's one-line usage error.
"""

import argparse
import functools
import re
from collections.abc import Callable
from pathlib import Path

from cmlfs.errors import CmlfsError
from cmlfs.format.aead import Algorithm
from cmlfs.format.layout import chunk_size_log2
from cmlfs.manifest import version_order
from cmlfs.signature import PublisherKey, load_publisher_key
from cmlfs.units import parse_size


def _reported(*errors: type[Exception]) -> Callable[[Callable], Callable]:
    """Make a converter an argument type: its ``errors`` become argparse's one-line error
    (the converter keeps its name, which argparse shows for other failures)."""

    def wrap(convert: Callable) -> Callable:
        @functools.wraps(convert)
        def checked(text: str):
            try:
                return convert(text)
            except errors as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return checked

    return wrap


@_reported(ValueError)
def size(text: str) -> int:
    return parse_size(text)


@_reported(ValueError)
def size_or_auto(text: str) -> int | None:
    """A size, or None for ``auto`` (the option's own default)."""
    return None if text == "auto" else parse_size(text)


@_reported(ValueError)
def chunk_size(text: str) -> int:
    value = parse_size(text)
    chunk_size_log2(value)
    return value


@_reported(ValueError)
def algorithm(text: str) -> Algorithm:
    return Algorithm.from_label(text)


@_reported(CmlfsError)
def model_version(text: str) -> str:
    """A version ``--min-model-version`` can order (cmlfs.manifest.version_order)."""
    version_order(text)
    return text


@_reported(CmlfsError)
def publisher_key(text: str) -> PublisherKey:
    return load_publisher_key(Path(text))


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(text)


def workers(text: str) -> int:
    from cmlfs.daemon.workers import MAX_WORKERS

    value = count(text)
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"workers must be 1 to {MAX_WORKERS}, not {value}")
    return value


def key_id(text: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        raise argparse.ArgumentTypeError("a key id is 32 lowercase hex digits")
    return text


@_reported(ValueError)
def http_address(text: str) -> tuple[str, int]:
    from cmlfs.status import parse_address

    return parse_address(text)


@_reported(ValueError)
def listen_address(text: str) -> tuple[str, int]:
    from cmlfs.devkbs import parse_listen

    return parse_listen(text)


def cdh_address(text: str) -> str:
    """HOST:PORT of the data hub; ``http://HOST:PORT`` too, the form of KServe's ``CDH_ADDR``."""
    address = text.removeprefix("http://").rstrip("/")
    host, colon, port = address.rpartition(":")
    if not colon or not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"a data hub address is HOST:PORT, not {text!r}")
    return address


def _number_of_seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None


def seconds(text: str) -> float:
    value = _number_of_seconds(text)
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"seconds must be 0 to 600, not {text}")
    return value


def timeout(limit: float) -> Callable[[str], float]:
    """A parser of a time limit: seconds above 0 and at most ``limit`` (no NaN or infinity,
    which the timers below would take as no limit or fail on with a traceback)."""

    def parse(text: str) -> float:
        value = _number_of_seconds(text)
        if not 0 < value <= limit:  # NaN fails this too
            raise argparse.ArgumentTypeError(
                f"seconds must be above 0 and at most {limit:g}, not {text}"
            )
        return value

    return parse


def metadata_url(text: str) -> str:
    """An ``http://HOST[:PORT]`` origin: the metadata service speaks plain HTTP, no path."""
    if not re.fullmatch(r"http://[A-Za-z0-9.\-\[\]:]+", text):
        raise argparse.ArgumentTypeError(f"a metadata URL is http://HOST[:PORT], not {text!r}")
    return text
