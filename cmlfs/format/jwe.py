"""KServe-style compact JWE files (RFC 7516): structure, keys, and ranges of their plaintext.

A compact JWE is ``B64(header).B64(encrypted_key).B64(iv).B64(ciphertext).B64(tag)`` with
one AES-GCM tag over the whole file, so no byte of it may be trusted before every
ciphertext byte has been authenticated (``Authenticator``, one streaming pass that keeps
no plaintext). Afterwards any range decrypts on its own: GCM's keystream is AES-CTR from
counter block J0 + 1, so plaintext block ``b`` is ``AES(K, IV || uint32(2 + b))`` XOR
ciphertext (``decrypt_chunk``). The base64url ciphertext is cut into chunks of
``CHUNK_CHARS`` characters (``CHUNK_BYTES`` ciphertext bytes, a whole number of AES
blocks), the unit a reader fetches, checks against the digest recorded while
authenticating (``ChunkDigests``), and decrypts.

Pure: no I/O. Reading a JWK and unwrapping a content key use jwcrypto, imported there (a
mount of a cmlfs store never needs it); never puts a key or a plaintext byte in a message.
"""

import base64
import binascii
import hmac
import os
from dataclasses import dataclass, field
from functools import cached_property

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap
from cryptography.hazmat.primitives.poly1305 import Poly1305

from cmlfs.errors import FormatError, IntegrityError, WrongKeyError
from cmlfs.format.layout import Chunking
from cmlfs.format.strictjson import loads_strict

# What KServe's storage initializer (jwcrypto's defaults with an oct key) decrypts and what
# range decryption can serve: AES key wrap or a direct key, then AES-GCM.
KEY_ALGORITHMS = {"A128KW": 16, "A192KW": 24, "A256KW": 32, "dir": None}
ENCRYPTIONS = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
JWE_SUFFIX = ".jwe"
JWE_MAGIC = b"eyJ"  # base64url of '{"': how a compact JWE starts
IV_LEN = 12
TAG_LEN = 16
AES_BLOCK = 16
CHUNK_BYTES = 768 * 1024  # ciphertext bytes per chunk: a multiple of 3 and of 16
CHUNK_CHARS = CHUNK_BYTES // 3 * 4  # 1 MiB of base64url text
MAX_HEADER_CHARS = 8192
MAX_KEY_CHARS = 1024
HEAD_BYTES = MAX_HEADER_CHARS + MAX_KEY_CHARS + 64  # where the first three parts must lie
TAIL_BYTES = 64  # where the tag (22 characters) and a final newline must lie
MAX_RESOURCE_LEN = 4096
# GCM's counter is 32 bits: at most 2^32 - 2 blocks of plaintext (NIST SP 800-38D).
MAX_CIPHERTEXT_BYTES = (2**32 - 2) * AES_BLOCK


def is_jwe_name(name: str) -> bool:
    return name.lower().endswith(JWE_SUFFIX)


def served_name(name: str) -> str:
    """The name a JWE file is served under: without its ``.jwe`` suffix (a file named just
    ``.jwe`` keeps it: nothing would be left)."""
    base = name.rpartition("/")[2]
    return name[: -len(JWE_SUFFIX)] if is_jwe_name(name) and len(base) > len(JWE_SUFFIX) else name


def b64url_decode(text: bytes, what: str) -> bytes:
    """Strict unpadded base64url: only its alphabet, a valid length, zero trailing bits.

    pybase64's SIMD decoder: the standard library's would be most of the time a JWE takes
    to authenticate (benchmarks/RESULTS.md)."""
    # pybase64 validates the rest of the alphabet; with altchars it would take + and / too.
    if len(text) % 4 == 1 or b"+" in text or b"/" in text or b"=" in text:
        raise FormatError(f"{what} is not base64url")
    padding = -len(text) % 4
    try:
        data = pybase64.b64decode(text + b"=" * padding if padding else text, b"-_", True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not base64url") from None
    tail = len(text) % 4  # a final partial group must carry no bits beyond its bytes
    if tail and pybase64.urlsafe_b64encode(data[-(tail - 1) :])[:tail] != text[-tail:]:
        raise FormatError(f"{what} is not canonical base64url")
    return data


def key_from_resource(resource: bytes) -> bytes:
    """The symmetric key in a released resource, read as KServe's storage initializer
    reads it: UTF-8 text is a JWK (``kty`` ``oct``) or else a base64url ``k`` value;
    anything else is the raw key."""
    if len(resource) > MAX_RESOURCE_LEN:
        raise FormatError(f"the key resource is larger than {MAX_RESOURCE_LEN} bytes")
    try:
        text = resource.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(resource)
    from jwcrypto import jwk
    from jwcrypto.common import JWException

    try:
        key = jwk.JWK.from_json(text)
    except (ValueError, TypeError, JWException):
        value = text.strip()
    else:
        if key.get("kty") != "oct" or not isinstance(key.get("k"), str):
            raise FormatError("the key resource is a JWK but not a symmetric one (kty oct)")
        value = key["k"]
    return b64url_decode(value.encode("ascii", "replace"), "the key resource's k value")


@dataclass(frozen=True)
class JweParts:
    """Where the five parts of a compact JWE file lie: the small ones as text, the
    ciphertext as a range of the file."""

    header: bytes  # the protected header's base64url text (also the AAD)
    encrypted_key: bytes
    iv: bytes
    tag: bytes
    ct_start: int  # offset of the ciphertext's first base64url character
    ct_chars: int

    @property
    def ciphertext_size(self) -> int:
        return self.ct_chars * 3 // 4

    @cached_property
    def chunks(self) -> Chunking:
        """The ciphertext cut into ``CHUNK_BYTES`` chunks; the plaintext is cut alike (GCM
        keeps sizes and offsets)."""
        return Chunking(CHUNK_BYTES, self.ciphertext_size)

    @property
    def n_chunks(self) -> int:
        return self.chunks.n_chunks

    def chunk_chars(self, chunk: int) -> tuple[int, int]:
        """(file offset, length) of chunk ``chunk``'s base64url text."""
        start = chunk * CHUNK_CHARS
        return self.ct_start + start, min(CHUNK_CHARS, self.ct_chars - start)


def find_parts(head: bytes, tail: bytes, size: int) -> JweParts:
    """The parts of a compact JWE of ``size`` bytes from its first bytes (``head``, at
    least ``HEAD_BYTES`` of them or the whole file) and its last ``tail`` bytes."""
    if not head.startswith(JWE_MAGIC):
        raise FormatError("not a compact JWE (it does not start with 'eyJ')")
    dots, at = [], -1
    for _ in range(3):
        at = head.find(b".", at + 1)
        if at < 0:
            raise FormatError("not a compact JWE: fewer than five parts, or a part too long")
        dots.append(at)
    if dots[0] > MAX_HEADER_CHARS or dots[2] - dots[0] > MAX_KEY_CHARS:
        raise FormatError("the JWE header or encrypted key is too long")
    end = size - len(tail)
    body = tail.removesuffix(b"\n").removesuffix(b"\r")
    last = body.rfind(b".")
    if last < 0 or end + last <= dots[2]:
        raise FormatError("not a compact JWE: its tag part is missing")
    ct_start, ct_end = dots[2] + 1, end + last
    parts = JweParts(
        header=head[: dots[0]],
        encrypted_key=head[dots[0] + 1 : dots[1]],
        iv=head[dots[1] + 1 : dots[2]],
        tag=body[last + 1 :],
        ct_start=ct_start,
        ct_chars=ct_end - ct_start,
    )
    if parts.ct_chars % 4 == 1:
        raise FormatError("the JWE ciphertext is truncated (its base64url length is invalid)")
    if parts.ciphertext_size > MAX_CIPHERTEXT_BYTES:
        raise FormatError("the JWE ciphertext is longer than AES-GCM allows")
    return parts


@dataclass(frozen=True)
class JweHeader:
    alg: str
    enc: str

    @classmethod
    def parse(cls, text: bytes) -> "JweHeader":
        """The protected header, refused unless it is one this reader can serve safely:
        a KW or direct key, AES-GCM content, no compression, no critical extensions."""
        fields = loads_strict(b64url_decode(text, "the JWE header"), "the JWE header", FormatError)
        if not isinstance(fields, dict):
            raise FormatError("the JWE header is not a JSON object")
        alg, enc = fields.get("alg"), fields.get("enc")
        if alg not in KEY_ALGORITHMS:
            raise FormatError(f"unsupported JWE alg {alg!r} (A128KW, A192KW, A256KW or dir)")
        if enc not in ENCRYPTIONS:
            raise FormatError(f"unsupported JWE enc {enc!r} (A128GCM, A192GCM or A256GCM)")
        for name in ("zip", "crit"):
            if name in fields:
                raise FormatError(f"a JWE header with {name!r} is refused")
        return cls(alg, enc)


@dataclass(frozen=True)
class JweKey:
    """What a JWE file is opened with once its header and key checked out."""

    parts: JweParts
    header: JweHeader
    cek: bytes = field(repr=False)
    iv: bytes
    tag: bytes


def open_parts(parts: JweParts, key: bytes) -> JweKey:
    """Check ``parts``' header, IV and tag shapes and unwrap the content key with ``key``.

    WrongKeyError when ``key`` cannot be this file's key (wrong length, or the key
    wrap's integrity check fails); with ``dir`` a wrong key of the right length only
    shows when the tag fails."""
    header = JweHeader.parse(parts.header)
    iv = b64url_decode(parts.iv, "the JWE IV")
    tag = b64url_decode(parts.tag, "the JWE tag")
    encrypted_key = b64url_decode(parts.encrypted_key, "the JWE encrypted key")
    if len(iv) != IV_LEN or len(tag) != TAG_LEN:
        raise FormatError("the JWE IV or tag has the wrong length")
    wanted = KEY_ALGORITHMS[header.alg] or ENCRYPTIONS[header.enc]
    if len(key) != wanted:
        raise WrongKeyError(
            f"the key is {len(key)} bytes; {header.alg}/{header.enc} needs {wanted}"
        )
    from jwcrypto import jwa, jwk
    from jwcrypto.common import JWException

    oct_key = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(key).rstrip(b"=").decode())
    try:
        unwrapper = jwa.JWA.keymgmt_alg(header.alg)
        cek = unwrapper.unwrap(oct_key, ENCRYPTIONS[header.enc] * 8, encrypted_key, {})
    except (ValueError, TypeError, JWException, InvalidUnwrap):
        raise WrongKeyError("the key does not unwrap this JWE's content key") from None
    return JweKey(parts, header, cek, iv, tag)


class Authenticator:
    """One streaming pass over a JWE's ciphertext text, chunk by chunk in order: checks
    the GCM tag at the end and records each chunk's digest. The plaintext it must compute
    is written over one reused buffer and never returned."""

    def __init__(self, key: JweKey) -> None:
        self._key = key
        cipher = Cipher(algorithms.AES(key.cek), modes.GCM(key.iv, key.tag))
        self._decryptor = cipher.decryptor()
        self._decryptor.authenticate_additional_data(key.parts.header)
        self._scratch = bytearray(CHUNK_BYTES + AES_BLOCK)
        self.digests = ChunkDigests()

    def update(self, text: bytes) -> None:
        """The next chunk's base64url text."""
        chunk = len(self.digests)
        ciphertext = b64url_decode(text, f"JWE ciphertext chunk {chunk}")
        self.digests.append(ciphertext)
        self._decryptor.update_into(ciphertext, self._scratch)

    def finish(self) -> "ChunkDigests":
        """The chunks' digests, once the tag authenticated every chunk given;
        IntegrityError otherwise."""
        if len(self.digests) != self._key.parts.n_chunks:
            raise IntegrityError("the JWE ciphertext was not read whole")
        try:
            self._decryptor.finalize()
        except InvalidTag:
            raise IntegrityError("the JWE tag does not authenticate this file") from None
        finally:
            self._scratch[:] = bytes(len(self._scratch))
        return self.digests


class ChunkDigests:
    """A 16-byte digest of each chunk's ciphertext, to recognize it when it is read again.

    Poly1305 under a one-time key per chunk: AES of the chunk's index under a random
    secret drawn for this pass (another secret for every pass, so no two chunks, files or
    processes share a key). A read recomputes its chunk's tag under that key and compares
    it, as an AEAD's receiver does. Neither the store nor the model's key holder knows the
    secret or ever sees a digest (none is logged or leaves this object), so each read of a
    changed chunk matches with probability at most 8 * ceil(L/16) / 2^106, about 2^-87
    for L = 768 KiB (Poly1305's bound). A hash such as SHA-256 made most of a read's
    cost; Poly1305 is several times faster (benchmarks/RESULTS.md, notes).
    """

    def __init__(self) -> None:
        self._secret = os.urandom(32)
        self._digests: list[bytes] = []

    def __len__(self) -> int:
        return len(self._digests)

    def append(self, ciphertext: bytes | memoryview) -> None:
        self._digests.append(self._digest(len(self._digests), ciphertext))

    def check(self, chunk: int, ciphertext: bytes | memoryview) -> None:
        """IntegrityError unless ``ciphertext`` is what chunk ``chunk`` held when recorded."""
        if not hmac.compare_digest(self._digest(chunk, ciphertext), self._digests[chunk]):
            raise IntegrityError(f"chunk {chunk} changed in the store after it was authenticated")

    def _digest(self, chunk: int, ciphertext: bytes | memoryview) -> bytes:
        blocks = b"".join((chunk << 1 | half).to_bytes(AES_BLOCK, "big") for half in (0, 1))
        one_time_key = Cipher(algorithms.AES(self._secret), modes.ECB()).encryptor().update(blocks)
        return Poly1305.generate_tag(one_time_key, ciphertext)


def decrypt_chunk(key: JweKey, chunk: int, text: bytes, digests: ChunkDigests) -> bytes:
    """The plaintext of chunk ``chunk`` of a file that authenticated, from its base64url
    ``text`` as the store holds it now: IntegrityError unless its ciphertext is what the
    authentication pass saw (``digests``); then GCM's keystream from the chunk's first
    block."""
    ciphertext = b64url_decode(text, f"JWE ciphertext chunk {chunk}")
    digests.check(chunk, ciphertext)
    counter = 2 + key.parts.chunks.chunk_offset(chunk) // AES_BLOCK
    nonce = key.iv + counter.to_bytes(4, "big")
    decryptor = Cipher(algorithms.AES(key.cek), modes.CTR(nonce)).decryptor()
    return decryptor.update(ciphertext)  # CTR: finalize() adds nothing
