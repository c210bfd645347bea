"""Random-access decrypting reads over a store (no FUSE here)."""

from cmlfs.reader.cache import ChunkCache, SingleFlight, Span
from cmlfs.reader.reader import ModelReader, ReaderStats

__all__ = ["ChunkCache", "ModelReader", "ReaderStats", "SingleFlight", "Span"]
