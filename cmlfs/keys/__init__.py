"""Key sources: where the model key comes from (a key file, a KBS after attestation, CoCo CDH).

A source returns the 32-byte model key to the daemon's memory. It never writes
the key anywhere and never puts it in a message.
"""

from cmlfs.keys.base import KeySettings, KeySource, ReleasedKey
from cmlfs.keys.file import FileKeySource, generate_key_file, key_file_source
from cmlfs.keys.uri import key_source_from_uri

__all__ = [
    "FileKeySource",
    "KeySettings",
    "KeySource",
    "ReleasedKey",
    "generate_key_file",
    "key_file_source",
    "key_source_from_uri",
]
