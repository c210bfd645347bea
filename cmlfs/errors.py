"""Error types shared by every layer.

Errors are types, caught at the edge: the CLI prints one line, the FUSE layer
maps them to an errno. Messages never contain key material or plaintext.
"""


class CmlfsError(Exception):
    """Base of every error cmlfs reports to a user."""


class FormatError(CmlfsError):
    """Bytes that do not follow docs/FORMAT.md (bad magic, version, sizes)."""


class IntegrityError(CmlfsError):
    """Authentication failed: the bytes were modified, or belong elsewhere."""


class WrongKeyError(CmlfsError):
    """The key does not match the key commitment of a manifest or blob."""


class StoreError(CmlfsError):
    """A store could not deliver or accept bytes."""


class KeySourceError(CmlfsError):
    """The model key could not be obtained."""


class MountError(CmlfsError):
    """The filesystem could not be mounted or unmounted."""
