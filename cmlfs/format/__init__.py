"""The cmlfs on-store format (docs/FORMAT.md): pure functions, no I/O, no FUSE.

- ``layout``: offset arithmetic between plaintext bytes, chunks and records.
- ``keys``: HKDF derivations and key commitment.
- ``aead``: sealing and opening one record with the algorithm a header names.
- ``header``: the blob header, and sealing/opening a blob's chunks.
"""
