"""Strict JSON for hostile input, the one parser every layer's readers share (the KBS
protocol, key bundles, JWE headers, OCI manifests): UTF-8 only, no duplicate keys (two
parsers could read two different values), no NaN or Infinity. Pure: no I/O."""

import json
from typing import TypeVar

from cmlfs.errors import CmlfsError

E = TypeVar("E", bound=CmlfsError)


def loads_strict(data: bytes, what: str, error: type[E]) -> object:
    """Parse UTF-8 JSON from an untrusted peer: ``error`` naming ``what`` for anything else."""

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("duplicate key")
        return result

    def no_constants(name: str) -> object:
        raise ValueError(f"non-standard constant {name}")

    try:
        return json.loads(
            data.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{what} is not valid JSON") from None
