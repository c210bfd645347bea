"""Chunk arithmetic (cmlfs.format.layout) at every boundary, and against brute force."""

from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlfs.format.layout import (
    DEFAULT_CHUNK_SIZE,
    HEADER_LEN,
    MAX_PLAINTEXT_SIZE,
    RECORD_OVERHEAD,
    Chunking,
    ChunkLayout,
    chunk_size_log2,
)

C = 4096


@pytest.mark.parametrize(
    ("size", "n_chunks", "last_len"),
    [
        (0, 0, None),
        (1, 1, 1),
        (C - 1, 1, C - 1),
        (C, 1, C),
        (C + 1, 2, 1),
        (2 * C - 1, 2, C - 1),
        (2 * C, 2, C),
        (10 * C + 7, 11, 7),
    ],
)
def test_chunk_counts_lengths_and_blob_size(size: int, n_chunks: int, last_len: int | None):
    layout = ChunkLayout(C, size)
    assert layout.n_chunks == n_chunks
    assert layout.blob_size == HEADER_LEN + n_chunks * RECORD_OVERHEAD + size
    assert sum(layout.chunk_len(i) for i in range(n_chunks)) == size
    if last_len is not None:
        assert layout.chunk_len(n_chunks - 1) == last_len
        assert layout.is_last(n_chunks - 1)
        assert not any(layout.is_last(i) for i in range(n_chunks - 1))
        end = layout.record_offset(n_chunks - 1) + layout.record_len(n_chunks - 1)
        assert end == layout.blob_size


def test_record_offsets_follow_the_header_at_a_fixed_stride():
    layout = ChunkLayout(C, 3 * C + 5)
    assert layout.record_stride == C + 28
    assert [layout.record_offset(i) for i in range(4)] == [88, 88 + 4124, 88 + 2 * 4124, 12460]
    assert [layout.record_len(i) for i in range(4)] == [4124, 4124, 4124, 33]
    assert [layout.chunk_offset(i) for i in range(4)] == [0, C, 2 * C, 3 * C]


@pytest.mark.parametrize("index", [-1, 3, 100])
def test_chunk_index_outside_the_blob_is_refused(index: int):
    layout = ChunkLayout(C, 2 * C + 1)
    for method in (layout.chunk_len, layout.record_offset, layout.record_len):
        with pytest.raises(IndexError):
            method(index)


def test_an_empty_plaintext_has_no_chunk_at_all():
    layout = ChunkLayout(C, 0)
    assert layout.blob_size == HEADER_LEN
    assert layout.chunks_for_range(0, 100) == range(0)
    with pytest.raises(IndexError):
        layout.record_offset(0)


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [
        (0, 0, range(0)),
        (0, 1, range(0, 1)),
        (0, C, range(0, 1)),
        (0, C + 1, range(0, 2)),
        (C - 1, 1, range(0, 1)),
        (C - 1, 2, range(0, 2)),
        (C, 1, range(1, 2)),
        (C, C, range(1, 2)),
        (2 * C, 5, range(2, 3)),  # the short last chunk
        (2 * C + 4, 1, range(2, 3)),  # its last byte
        (2 * C + 5, 1, range(0)),  # exactly at EOF
        (2 * C + 4, 100, range(2, 3)),  # clipped at EOF
        (10 * C, 1, range(0)),  # past EOF
        (0, 1 << 60, range(0, 3)),  # huge length
    ],
)
def test_chunks_for_range_at_edges(offset: int, length: int, expected: range):
    assert ChunkLayout(C, 2 * C + 5).chunks_for_range(offset, length) == expected


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1)])
def test_chunks_for_range_refuses_negative_values(offset: int, length: int):
    with pytest.raises(ValueError):
        ChunkLayout(C, C).chunks_for_range(offset, length)


def test_span_len_counts_the_plaintext_of_consecutive_chunks_short_last_one_included():
    layout = ChunkLayout(C, 3 * C + 5)
    assert layout.span_len(range(0, 1)) == C
    assert layout.span_len(range(1, 3)) == 2 * C
    assert layout.span_len(range(2, 4)) == C + 5
    assert layout.span_len(range(0, 4)) == 3 * C + 5
    assert layout.span_len(range(3, 4)) == 5


def test_records_span_covers_consecutive_records_exactly():
    layout = ChunkLayout(C, 3 * C + 5)
    assert layout.records_span(range(0, 1)) == (88, 4124)
    assert layout.records_span(range(0, 4)) == (88, layout.blob_size - HEADER_LEN)
    assert layout.records_span(range(1, 3)) == (88 + 4124, 2 * 4124)
    assert layout.records_span(range(3, 4)) == (88 + 3 * 4124, 33)
    with pytest.raises(ValueError):
        layout.records_span(range(2, 2))
    with pytest.raises(IndexError):
        layout.records_span(range(0, 5))


@pytest.mark.parametrize("log2", [12, 16, 22])
def test_valid_chunk_sizes(log2: int):
    assert chunk_size_log2(1 << log2) == log2
    assert ChunkLayout(1 << log2, 0).chunk_size == 1 << log2


@pytest.mark.parametrize(
    "chunk_size", [0, -4096, 1, 2048, 4095, 4097, 3 * 4096, 1 << 23, DEFAULT_CHUNK_SIZE + 1]
)
def test_invalid_chunk_sizes_are_refused(chunk_size: int):
    with pytest.raises(ValueError):
        chunk_size_log2(chunk_size)
    with pytest.raises(ValueError):
        ChunkLayout(chunk_size, 0)


@pytest.mark.parametrize("size", [-1, MAX_PLAINTEXT_SIZE + 1])
def test_plaintext_size_out_of_range_is_refused(size: int):
    with pytest.raises(ValueError):
        ChunkLayout(C, size)


def test_the_largest_plaintext_is_accepted():
    layout = ChunkLayout(1 << 22, MAX_PLAINTEXT_SIZE)
    assert layout.n_chunks == 1 << 26


def brute_force_chunks(layout: Chunking, offset: int, length: int) -> list[int]:
    """Chunk index of every plaintext byte in the range, in order, without duplicates."""
    end = min(offset + length, layout.plaintext_size)
    return sorted({byte // layout.chunk_size for byte in range(offset, end)})


@settings(max_examples=300)
@given(
    size=st.integers(0, 6 * C),
    offset=st.integers(0, 7 * C),
    length=st.integers(0, 3 * C),
)
def test_chunks_for_range_matches_brute_force(size: int, offset: int, length: int):
    layout = ChunkLayout(C, size)
    assert list(layout.chunks_for_range(offset, length)) == brute_force_chunks(
        layout, offset, length
    )


@settings(max_examples=300, deadline=None)  # chunk size 1: thousands of chunks
@given(
    chunk_size=st.integers(1, 3 * C),
    size=st.integers(0, 6 * C),
    offset=st.integers(0, 7 * C),
    length=st.integers(0, 3 * C),
)
def test_any_chunk_size_cuts_like_the_blob_layout(
    chunk_size: int, size: int, offset: int, length: int
):
    """Chunking, which a JWE file's 768 KiB chunks use too, is ChunkLayout's arithmetic for
    any positive chunk size: the same chunks for a range, which tile the size exactly."""
    chunking = Chunking(chunk_size, size)
    assert list(chunking.chunks_for_range(offset, length)) == brute_force_chunks(
        chunking, offset, length
    )
    starts = [chunking.chunk_offset(i) for i in range(chunking.n_chunks)]
    lengths = [chunking.chunk_len(i) for i in range(chunking.n_chunks)]
    assert starts == list(accumulate([0, *lengths[:-1]]))[: chunking.n_chunks]
    assert sum(lengths) == size and all(n == chunk_size for n in lengths[:-1])
    assert chunking.is_last(chunking.n_chunks - 1)


def test_chunking_refuses_what_no_layout_can_have():
    for chunk_size, size in [(0, 1), (-1, 1), (768 * 1024, -1), (1, MAX_PLAINTEXT_SIZE + 1)]:
        with pytest.raises(ValueError):
            Chunking(chunk_size, size)
    assert Chunking(768 * 1024, 0).chunks_for_range(0, 1) == range(0)
    with pytest.raises(ValueError):  # a blob's chunks stay powers of two
        ChunkLayout(768 * 1024, 0)


@given(
    log2=st.integers(12, 22),
    size=st.integers(1, 1 << 40),
    data=st.data(),
)
def test_records_tile_the_blob_without_gaps(log2: int, size: int, data: st.DataObject):
    layout = ChunkLayout(1 << log2, size)
    first = data.draw(st.integers(0, layout.n_chunks - 1))
    last = data.draw(st.integers(first, layout.n_chunks - 1))
    offset, length = layout.records_span(range(first, last + 1))
    assert offset == HEADER_LEN + first * layout.record_stride
    plaintext = min(size, (last + 1) * layout.chunk_size) - first * layout.chunk_size
    assert length == plaintext + (last - first + 1) * RECORD_OVERHEAD
