"""JweReader without FUSE: the order files authenticate in, and reads waiting for it."""

import os
import threading
import time

import pytest
import trio
from jwcrypto import jwk

import cmlfs.reader.jwe
from cmlfs.errors import StoreError
from cmlfs.format.jwe import CHUNK_BYTES
from cmlfs.reader.jwe import JweReader, list_jwe_folder
from cmlfs.stores import LocalStore
from tests.jwe_helpers import make_jwe


class SlowStore(LocalStore):
    """A folder store whose long ranged reads (a pass's, not the listing's) take a while,
    recording which object each was of."""

    def __init__(self, root) -> None:
        super().__init__(root, files=True)
        self.reads: list[str] = []
        self._lock = threading.Lock()

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        if length >= CHUNK_BYTES:
            with self._lock:
                self.reads.append(name)
            time.sleep(0.1)
        return super().read_range(name, offset, length)


def test_a_file_being_read_is_authenticated_before_the_background_gets_to_it(tmp_path):
    key = jwk.JWK.generate(kty="oct", size=256)
    data = {name: os.urandom(12 * CHUNK_BYTES) for name in ("a", "b", "c")}
    for name, plaintext in data.items():
        (tmp_path / f"{name}.jwe").write_bytes(make_jwe(plaintext, key))
    store = SlowStore(tmp_path)
    reader = JweReader(
        list_jwe_folder(store), store, jwk.base64url_decode(key["k"]), authenticators=1
    )
    got = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.authenticate_all)
            await trio.sleep(0.05)  # the background pass of a.jwe is under way (0.2 s)
            got["c"] = bytes(await reader.read(2, 5, 100))
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert got["c"] == data["c"][5:105]
    first_reads = list(dict.fromkeys(store.reads))
    assert first_reads[:2] == ["a.jwe", "c.jwe"]  # c went ahead of b, in order of access
    assert (
        store.reads.index("c.jwe") < store.reads.index("b.jwe") if "b.jwe" in store.reads else True
    )
    assert reader._done.keys() >= {2}


@pytest.mark.expect_log(
    'event=file_skipped path=a reason="two files serve this name"',
    'event=file_skipped path=c reason="a JWE file serves this name"',
    'event=file_refused path=[cd] reason="not a JWE file',
)
def test_listing_serves_jwe_names_without_clashes(tmp_path):
    key = jwk.JWK.generate(kty="oct", size=256)
    (tmp_path / "sub").mkdir()
    for name in ("a.jwe", "a", "b.JWE", "sub/.jwe", "c.jwe"):
        (tmp_path / name).write_bytes(make_jwe(b"x", key))
    (tmp_path / "c").write_bytes(b"plain, same name as c.jwe's")
    (tmp_path / "d").write_bytes(b"plain")
    shown = list_jwe_folder(LocalStore(tmp_path, files=True), show_plain=True)
    served = {f.path: (f.name, f.plain) for f in shown.files}
    assert served == {
        "b": ("b.JWE", False),  # the suffix in any case, as KServe
        "sub/.jwe": ("sub/.jwe", False),  # nothing would be left of the name
        "c": ("c.jwe", False),  # the JWE file, never the unchecked one
        "d": ("d", True),
    }  # "a.jwe" and "a" (eyJ...) both serve "a": neither is
    hidden = list_jwe_folder(LocalStore(tmp_path, files=True))
    assert {f.path for f in hidden.files} == {"b", "sub/.jwe", "c"}


def test_a_listing_keeps_a_bounded_total_of_headers(tmp_path, monkeypatch):
    """Each JWE header may take 8 KiB, and a folder 100,000 files; what a listing keeps of
    them is bounded in total, as a manifest is, so a hostile store cannot fill memory."""
    key = jwk.JWK.generate(kty="oct", size=256)
    padding = "x" * 3000  # a header member of its own: ~4 KiB of base64url header
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jwe").write_bytes(make_jwe(b"data", key, pad=padding))
    store = LocalStore(tmp_path, files=True)
    monkeypatch.setattr(cmlfs.reader.jwe, "MAX_LISTING_TEXT", 3 * 4200)
    assert len(list_jwe_folder(store).files) == 3
    monkeypatch.setattr(cmlfs.reader.jwe, "MAX_LISTING_TEXT", 2 * 4200)
    with pytest.raises(StoreError, match=r"headers and wrapped keys .* more than 8400 bytes"):
        list_jwe_folder(store)
