"""cmlfs: the confidential model loader filesystem.

An encrypted model lives in a store; a daemon obtains the model key, then
mounts a read-only FUSE view whose files are the plaintext, decrypted lazily
chunk by chunk. See docs/FORMAT.md for the bytes and docs/SECURITY.md for the
guarantees.
"""

__version__ = "0.1.0"
