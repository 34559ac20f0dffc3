"""The upload scanner reads a file the same whatever chunks it arrives in: each line whole, at its
offset, however the chunks cut it (a chunk ending on a newline, a line split across many chunks, a
last line without its newline)."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.jsonl import FileIndex, JsonlScanner


def _line(i: int, *, provider: object = "openai", url: object = "/v1/chat/completions") -> bytes:
    body = {"model": "m-a" if i % 3 else "m-b", "messages": [{"role": "user", "content": "x" * i}]}
    line = {"custom_id": f"c{i}", "method": "POST", "url": url, "provider": provider, "body": body}
    return orjson.dumps(line)


FILE = b"\n".join(
    [
        *(_line(i) for i in range(12)),
        _line(3),  # a duplicate custom_id
        _line(20, provider="mistral"),  # a provider the target does not know
        _line(21, url="/v1/embeddings"),  # another url
        _line(22, provider=None),
        _line(23) + b"\r",  # a CRLF line
        _line(24),  # no final newline
    ]
)


def _scan(chunks: list[bytes]) -> FileIndex:
    scanner = JsonlScanner(EmulatorConfig())
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.finish()


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


WHOLE = _scan([FILE])


def test_the_whole_file_at_once() -> None:
    assert WHOLE.num_rows == 18
    starts = [0, *(i + 1 for i, byte in enumerate(FILE) if byte == ord("\n"))]
    assert list(WHOLE.offsets) == starts
    assert {p.code for p in WHOLE.problems} == {
        "duplicate_custom_id", "invalid_provider", "missing_required_parameter",
    }  # fmt: skip
    assert WHOLE.urls == {"/v1/chat/completions": 1, "/v1/embeddings": 15}
    assert WHOLE.models == ["m-b", "m-a"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(FILE)), max_size=40))
def test_any_chunking_gives_the_same_index(cuts: list[int]) -> None:
    assert _scan(_cut(FILE, cuts)) == WHOLE


def test_byte_by_byte_and_chunks_that_end_on_newlines() -> None:
    assert _scan([FILE[i : i + 1] for i in range(len(FILE))]) == WHOLE
    assert _scan([line + b"\n" for line in FILE.split(b"\n")[:-1]] + [FILE.split(b"\n")[-1]]) == (
        WHOLE
    )
