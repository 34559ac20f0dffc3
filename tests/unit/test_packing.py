from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.packing import Chunk, Packer, pack, pages


def test_chunks_respect_the_request_count() -> None:
    chunks = list(pack(((i, 10) for i in range(120_000)), max_requests=50_000, max_bytes=10**12))
    assert [c.count for c in chunks] == [50_000, 50_000, 20_000]
    assert (chunks[0].first_seq, chunks[0].last_seq) == (0, 49_999)
    assert (chunks[2].first_seq, chunks[2].last_seq) == (100_000, 119_999)


def test_chunks_respect_the_byte_budget() -> None:
    chunks = list(pack(((i, 400) for i in range(10)), max_requests=100, max_bytes=1000))
    # two of 400 bytes fit in 1,000, not three; no token estimate given: 0 tokens, no model
    assert chunks == [Chunk(i, i + 1, 2, 800, 0, None) for i in range(0, 10, 2)]


def test_a_request_larger_than_the_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        Packer(max_requests=5, max_bytes=10).add(1, 11)


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=100), max_size=300),
    max_requests=st.integers(min_value=1, max_value=50),
    max_bytes=st.integers(min_value=100, max_value=1000),
)
def test_packing_covers_every_request_once_in_order_within_limits(
    sizes: list[int], max_requests: int, max_bytes: int
) -> None:
    chunks = list(pack(enumerate(sizes), max_requests=max_requests, max_bytes=max_bytes))
    covered = [seq for c in chunks for seq in range(c.first_seq, c.last_seq + 1)]
    assert covered == list(range(len(sizes)))
    for c in chunks:
        assert c.count <= max_requests and c.bytes <= max_bytes
        assert c.bytes == sum(sizes[c.first_seq : c.last_seq + 1])
    # greedy: no two neighbours could have been one chunk
    for a, b in itertools.pairwise(chunks):
        assert a.count + b.count > max_requests or a.bytes + b.bytes > max_bytes


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200))
def test_pages_hold_at_most_the_budget_and_a_larger_item_alone(sizes: list[int]) -> None:
    got = list(pages(enumerate(sizes), max_bytes=100, max_count=7))
    assert [seq for p in got for seq in range(p.first_seq, p.last_seq + 1)] == list(
        range(len(sizes))
    )
    for p in got:
        assert p.count == p.last_seq - p.first_seq + 1 <= 7
        assert p.bytes == sum(sizes[p.first_seq : p.last_seq + 1])
        assert p.bytes <= 100 or p.count == 1
    for p, after in itertools.pairwise(got):
        assert p.count == 7 or p.bytes + sizes[after.first_seq] > 100  # as full as allowed


def test_chunks_stay_within_a_token_budget_and_carry_their_tokens_and_model() -> None:
    packer = Packer(max_requests=100, max_bytes=10_000, max_tokens=250, model="m")
    closed = [packer.add(seq, 10, tokens) for seq, tokens in enumerate([100, 100, 100, 300, 20])]
    last = packer.finish()
    chunks = [c for c in closed if c] + [last]
    # 100 + 100 fit; the third would make 300; 300 alone is over it but has to go somewhere
    assert chunks == [
        Chunk(0, 1, 2, 20, 200, "m"),
        Chunk(2, 2, 1, 10, 100, "m"),
        Chunk(3, 3, 1, 10, 300, "m"),
        Chunk(4, 4, 1, 10, 20, "m"),
    ]


@pytest.mark.parametrize(
    ("max_requests", "max_bytes", "max_tokens"),
    [(0, 10, None), (10, 0, None), (10, 10, 0), (-1, -1, -1)],
)
def test_a_packer_refuses_limits_that_are_not_positive(
    max_requests: int, max_bytes: int, max_tokens: int | None
) -> None:
    with pytest.raises(ValueError, match=r"^limits must be positive$"):
        Packer(max_requests=max_requests, max_bytes=max_bytes, max_tokens=max_tokens)


@pytest.mark.parametrize(("max_bytes", "max_count"), [(0, 10), (10, 0)])
def test_pages_refuse_limits_that_are_not_positive(max_bytes: int, max_count: int) -> None:
    with pytest.raises(ValueError, match=r"^limits must be positive$"):
        list(pages([(1, 1)], max_bytes=max_bytes, max_count=max_count))


def test_the_smallest_limits_make_one_request_chunks() -> None:
    packer = Packer(max_requests=1, max_bytes=1, max_tokens=1, model="m")
    assert [packer.add(seq, 1, 1) for seq in (5, 6, 7)] == [
        None,
        Chunk(5, 5, 1, 1, 1, "m"),
        Chunk(6, 6, 1, 1, 1, "m"),
    ]
    assert packer.finish() == Chunk(7, 7, 1, 1, 1, "m")
    assert packer.finish() is None  # nothing left to close
    assert list(pages([(5, 1), (6, 1)], max_bytes=1, max_count=1)) == [
        Chunk(5, 5, 1, 1),
        Chunk(6, 6, 1, 1),
    ]


def test_a_chunk_may_fill_its_limits_exactly() -> None:
    # 100 + 150 tokens = the budget of 250, 60 + 40 bytes = the 100 allowed, 2 = the count allowed
    packer = Packer(max_requests=2, max_bytes=100, max_tokens=250)
    assert [
        packer.add(seq, size, tokens) for seq, size, tokens in [(1, 60, 100), (2, 40, 150)]
    ] == [
        None,
        None,
    ]
    assert packer.add(3, 1, 1) == Chunk(1, 2, 2, 100, 250)
    assert list(pages([(1, 60), (2, 40), (3, 50)], max_bytes=100, max_count=5)) == [
        Chunk(1, 2, 2, 100),
        Chunk(3, 3, 1, 50),
    ]
