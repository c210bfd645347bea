"""Property tests of every parser of untrusted input (hypothesis).

Each parser either accepts its input within its documented bounds or refuses it
with a typed cmlfs error; no input makes it raise anything else, and sizes are
refused before anything of that size is allocated.
"""

import json
import struct
import threading
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmlfs.errors import CmlfsError, FormatError, StoreError
from cmlfs.format.header import BLOB_MAGIC, BlobHeader
from cmlfs.format.layout import HEADER_LEN, MAX_PLAINTEXT_SIZE
from cmlfs.keys import FileKeySource
from cmlfs.manifest import MANIFEST_MAGIC, MANIFEST_NAME, MAX_MANIFEST_LEN, read_envelope
from cmlfs.model import open_model
from cmlfs.stores.base import Identity, StoreSettings
from cmlfs.stores.http import HttpStore, HttpTransport, parse_content_range
from tests.fuzz import targets

pytestmark = pytest.mark.hardening

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LARGE_ALLOCATION = 1 << 20  # any refused oversize input must cost less than this to refuse


@st.composite
def mutated_seed(draw, name: str) -> bytes:
    """A seed of ``name`` with random bit flips, byte runs, cuts and insertions."""
    data = bytearray(draw(st.sampled_from(targets.seeds()[name])))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "run", "cut", "insert"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "run":
            data[at : at + 8] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
    return bytes(data)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
@FAST
@given(data=st.data())
def test_parsers_refuse_hostile_input_only_with_typed_errors(name, data):
    raw = data.draw(st.one_of(st.binary(max_size=2048), mutated_seed(name)))
    targets.run(name, raw)


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_are_accepted_or_typed_refusals(name):
    for seed in targets.seeds()[name]:
        targets.run(name, seed)


JSON_TARGETS = [
    "manifest_envelope",
    "manifest_body",
    "key_bundle",
    "kbs_challenge",
    "kbs_jwe",
    "devkbs_request",
    "devkbs_attestation",
    "oci_image_manifest",
    "oci_token_answer",
    "publisher_signature",
]


@pytest.mark.parametrize("name", JSON_TARGETS)
def test_deeply_nested_json_is_refused_not_a_recursion_error(name):
    """Regression: the OCI token answer raised RecursionError (a traceback, not a refusal)."""
    deep = b"[" * 100_000 + b"]" * 100_000
    if name == "manifest_envelope":
        envelope = b'{"format":' + deep + b"}"
        deep = struct.pack(
            ">8sHHI32s32s", MANIFEST_MAGIC, 1, 1, len(envelope), bytes(32), bytes(32)
        )
        deep += envelope
    with pytest.raises(CmlfsError):
        targets.TARGETS[name](deep)


@FAST
@given(
    version=st.integers(0, 0xFFFF),
    algorithm=st.integers(0, 0xFFFF),
    log2=st.integers(0, 255),
    reserved=st.binary(min_size=3, max_size=3),
    size=st.one_of(
        st.integers(0, (1 << 64) - 1), st.sampled_from([1 << 48, (1 << 48) + 1, 1 << 60])
    ),
)
def test_blob_header_accepts_exactly_the_documented_fields(
    version, algorithm, log2, reserved, size
):
    raw = struct.pack(
        ">8sHHB3sQ32s32s",
        BLOB_MAGIC,
        version,
        algorithm,
        log2,
        reserved,
        size,
        b"s" * 32,
        b"c" * 32,
    )
    valid = (
        version == 1
        and algorithm in (1, 2)
        and 12 <= log2 <= 22
        and reserved == bytes(3)
        and size <= MAX_PLAINTEXT_SIZE
    )
    tracemalloc.start()
    try:
        header = BlobHeader.parse(raw)
    except FormatError:
        header = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert (header is not None) == valid
    assert peak < LARGE_ALLOCATION


def test_a_header_claiming_a_2_pow_60_byte_file_is_refused_without_allocating():
    raw = struct.pack(
        ">8sHHB3sQ32s32s", BLOB_MAGIC, 1, 1, 16, bytes(3), 1 << 60, bytes(32), bytes(32)
    )
    tracemalloc.start()
    try:
        with pytest.raises(FormatError):
            BlobHeader.parse(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(raw) == HEADER_LEN and peak < LARGE_ALLOCATION


@FAST
@given(envelope_len=st.integers(0, (1 << 32) - 1), tail=st.binary(max_size=256))
def test_a_manifest_prefix_never_makes_the_reader_read_past_its_bytes(envelope_len, tail):
    prefix = struct.pack(">8sHHI32s32s", MANIFEST_MAGIC, 1, 1, envelope_len, bytes(32), bytes(32))
    with pytest.raises(FormatError):
        read_envelope(prefix + tail)


def test_an_oversized_manifest_is_refused_before_it_is_read(tmp_path):
    """Regression: open_model read up to 128 MiB of manifest before refusing it; now the
    manifest limit (67 MB) is checked against the object's size first, and a 4 GiB
    manifest costs nothing to refuse either."""
    key = tmp_path / "k"
    key.write_bytes(bytes(range(32)))
    for size in (MAX_MANIFEST_LEN + 1, 100 << 20, 4 << 30):
        store = tmp_path / f"store-{size}"
        store.mkdir()
        with open(store / MANIFEST_NAME, "wb") as f:
            f.truncate(size)  # sparse: no disk used
        tracemalloc.start()
        try:
            with pytest.raises(StoreError, match="more than"):
                open_model(str(store), FileKeySource(key))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < LARGE_ALLOCATION, f"{size}: {peak} bytes allocated to refuse it"
        (store / MANIFEST_NAME).unlink()  # sparse gigabytes would only slow the leak scan


@FAST
@given(
    offset=st.integers(0, 1 << 40),
    length=st.integers(1, 1 << 24),
    first=st.integers(0, 1 << 41),
    last=st.integers(0, 1 << 41),
    total=st.integers(0, 1 << 42),
)
def test_content_range_must_name_exactly_the_bytes_asked(offset, length, first, last, total):
    value = f"bytes {first}-{last}/{total}"
    exact = first == offset and last == offset + length - 1 and total > last
    try:
        assert parse_content_range(value, offset, length, None) == total
        assert exact
    except StoreError:
        assert not exact


# --- a hostile HTTP server: the real transport against arbitrary answers ---------------------


class _Script:
    status = 206
    headers: dict[str, str] = {}  # noqa: RUF012 - replaced per example
    body = b""


@pytest.fixture(scope="module")
def hostile_http() -> Iterator[tuple[str, type[_Script]]]:
    script = _Script

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            self.send_response_only(script.status)
            for name, value in script.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(script.body)
            self.close_connection = True

        do_GET = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)


@settings(FAST, max_examples=120)
@given(
    status=st.sampled_from([200, 206, 301, 404, 416, 500]),
    content_range=st.one_of(
        HEADER_TEXT, st.builds("bytes {}-{}/{}".format, *[st.integers(0, 300)] * 3)
    ),
    body=st.binary(max_size=300),
    announce=st.one_of(st.none(), HEADER_TEXT, st.integers(0, 400).map(str)),
)
def test_range_reads_return_exactly_the_bytes_asked_or_fail(
    hostile_http, status, content_range, body, announce
):
    url, script = hostile_http
    offset, length = 10, 100
    script.status, script.body = status, body
    script.headers = {"Content-Range": content_range, "Connection": "close"}
    if announce is not None:
        script.headers["Content-Length"] = announce
    transport = HttpTransport(StoreSettings(timeout=2, attempts=1))
    try:
        data = transport.get_range(f"{url}/blobs/x", offset, length, Identity(1000, None))
    except StoreError:
        return
    finally:
        transport.close()
    assert len(data) == length
    assert data == body[:length]
    assert status == 206 and content_range == f"bytes {offset}-{offset + length - 1}/1000"


@pytest.mark.parametrize("length", ["\xb2", "\xb9", "1" * 17, "-1", "", "0x10"])
def test_a_hostile_content_length_is_a_store_error(hostile_http, length):
    """Regression: a HEAD answer with ``Content-Length: \\xb2`` (superscript two, which
    ``str.isdigit`` accepts) raised ValueError out of the store instead of StoreError."""
    url, script = hostile_http
    script.status, script.body = 200, b""
    script.headers = {"Content-Length": length, "Connection": "close"}
    store = HttpStore(url, StoreSettings(timeout=2, attempts=1))
    try:
        with pytest.raises(StoreError):
            store.size(MANIFEST_NAME)
    finally:
        store.close()


def test_every_target_has_seeds_and_the_corpus_folder_names_only_targets():
    corpus = Path(__file__).parent / "corpus"
    assert set(targets.seeds()) == set(targets.TARGETS)
    assert {p.name for p in corpus.iterdir()} <= set(targets.TARGETS)


def test_valid_seeds_round_trip_where_they_are_valid():
    """Sanity: the seeds used to start fuzzing are real accepted inputs, not refusals."""
    for name in ("blob_header", "sealed_manifest", "key_bundle", "oci_image_manifest"):
        targets.TARGETS[name](targets.seeds()[name][0])
    assert json.loads(targets.seeds()["manifest_body"][0])
