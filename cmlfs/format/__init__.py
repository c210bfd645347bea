"""The cmlfs on-store format (docs/FORMAT.md): pure functions, no I/O, no FUSE.

- ``layout``: offset arithmetic between plaintext bytes, chunks and records.
- ``keys``: HKDF derivations and key commitment.
- ``aead``: sealing and opening one record with the algorithm a header names.
- ``header``: the blob header, and sealing/opening a blob's chunks.
- ``hashlist``: format 2's hash list binding every record to the manifest.
"""

FORMAT_VERSIONS = (1, 2)  # every version a reader opens; writers write the last by default
FORMAT_VERSION = FORMAT_VERSIONS[-1]
