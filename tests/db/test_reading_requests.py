"""Reading requests without holding their bodies: upload pages bounded in bytes (not in rows), a
body larger than a page read in slices, and planning's checks run on a body's shape, never on the
body itself."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import psycopg
import pytest
import sqlalchemy as sa

from orchestrator import steps
from orchestrator.db import queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain import requests as rq
from tests.support import query

PAGE = 64 * 1024
# Body contents (characters; multi-byte ones where marked, so that bytes and characters differ and
# slices cut characters) around the page: tiny, a few KB, nearly a page, just over one, several
# pages. Any fixed number of rows per fetch (2 or more) would put more than a page into a fetch.
CONTENTS: list[tuple[int, bool]] = [
    (50, False), (9_000, True), (30_000, False), (200, False), (63_000, False), (1, True),
    (70_000, False), (12_000, False), (4_000, True), (12_000, False), (12_000, False),
    (90_000, True), (40, False), *[(3_000, False)] * 60, (150_000, False), (5, True),
]  # fmt: skip


def _content(n: int, multibyte: bool) -> str:
    return ("é€😀x" * (n // 4 + 1))[:n] if multibyte else "x" * n


def _enqueue_batch(db_url: str, contents: list[tuple[int, bool]]) -> tuple[int, int]:
    """A running job with one request per entry of ``contents`` (in that order), all in one
    planned batch; the custom_ids do not sort in seq order."""
    with psycopg.connect(db_url) as conn:
        job = conn.execute(
            "INSERT INTO orchestrator.jobs (name) VALUES ('pages') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        for i, (n, multibyte) in enumerate(contents):
            body = {"model": "m", "messages": [{"role": "user", "content": _content(n, multibyte)}]}
            conn.execute(
                "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
                "VALUES (%s, %s, 'openai', %s::jsonb)",
                (job, f"r{(i * 37) % 101:03d}-{i}", json.dumps(body)),
            )
        conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job,))
        batch = conn.execute(
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            "next_run_at, state) VALUES (%s, 'fastrouter', '/v1/chat/completions', %s, 0, now(), "
            "'planned') RETURNING id",
            (job, len(contents)),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq) "
            "SELECT %s, custom_id, job_id, seq FROM orchestrator.requests WHERE job_id = %s",
            (batch, job),
        )
    return int(job), int(batch)


def _stored(db_url: str, job: int) -> list[tuple[int, str, bytes]]:
    """(seq, custom_id, body text in UTF-8) of the job's requests, in seq order."""
    rows = query(
        db_url,
        "SELECT seq, custom_id, body::text FROM orchestrator.requests WHERE job_id = %s "
        "ORDER BY seq",
        job,
    )
    return [(seq, cid, text.encode()) for seq, cid, text in rows]


@pytest.fixture
def sessions(db_url: str) -> Any:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_upload_pages_hold_at_most_a_page_of_bytes_whatever_the_row_count(
    db_url: str, sessions: Any
) -> None:
    job, batch = _enqueue_batch(db_url, CONTENTS)
    stored = _stored(db_url, job)
    pages: list[list[tuple[int, str, int, bytes | None]]] = []
    sliced: dict[str, list[bytes]] = {}
    with unit_of_work(sessions) as s:
        for page in queries.batch_requests(s, batch, page_bytes=PAGE):
            pages.append([(r.seq, r.custom_id, r.body_bytes, r.body) for r in page])
            for r in page:
                if r.body is None:
                    sliced[r.custom_id] = list(queries.body_slices(s, r, slice_bytes=PAGE))

    for page in pages:
        held = sum(len(body) for *_, body in page if body is not None)
        if len(page) == 1 and page[0][3] is None:
            assert page[0][2] > PAGE  # a body larger than a page comes alone, without its text
        else:
            assert all(body is not None for *_, body in page)
            assert held <= PAGE, f"a page of {len(page)} rows holds {held:,} bytes"
    # Pages are as full as the budget allows: the next row would not have fitted.
    for page, after in itertools.pairwise(pages):
        assert sum(size for _, _, size, _ in page) + after[0][2] > PAGE
    assert len(pages) < len(stored) / 2

    # Every request exactly once, in seq order, with its stored text byte for byte.
    got = [(seq, cid) for page in pages for seq, cid, _, _ in page]
    assert got == [(seq, cid) for seq, cid, _ in stored]
    by_id = {cid: text for _, cid, text in stored}
    for page in pages:
        for _, cid, size, body in page:
            text = b"".join(sliced[cid]) if body is None else body
            assert text == by_id[cid] and size == len(text)
    big = {cid for cid, parts in sliced.items() if len(parts) > 1}
    assert len(big) == 3 and all(len(p) <= PAGE for parts in sliced.values() for p in parts)


def test_the_input_file_is_built_page_by_page_and_slice_by_slice_byte_for_byte(
    db_url: str, sessions: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "PAGE_BYTES", PAGE)
    job, batch = _enqueue_batch(db_url, CONTENTS)
    heads = rq.LineHeads(endpoint="/v1/chat/completions", include_provider=True)
    with unit_of_work(sessions) as s:
        reader = queries.BatchReader(s, batch)
    measured = steps._measure(reader, heads)
    pieces = list(steps._lines(SimpleNamespace(sessions=sessions), reader, heads))
    data = b"".join(pieces)
    # the size sent ahead (the upload's Content-Length) is the file's, to the byte
    assert (measured, len(reader.items)) == (len(data), len(CONTENTS))
    # and no piece holds more than a page of body text (a body over a page came in slices)
    assert max(len(p) for p in pieces) <= 2 * PAGE
    lines = data.splitlines(keepends=True)
    stored = _stored(db_url, job)
    assert len(lines) == len(stored)
    for line, (_, cid, text) in zip(lines, stored, strict=True):
        head = rq.line_head(
            rq.RequestRow(cid, "openai", "POST", None),
            endpoint="/v1/chat/completions",
            include_provider=True,
        )
        assert line == head + text + rq.LINE_END
        assert orjson.loads(line)["body"] == orjson.loads(text)


BODIES: list[Any] = [
    {"model": "openai/gpt-4.1-nano", "messages": [{"role": "user", "content": "hi"}]},
    {"model": "m", "messages": [{"role": "user", "content": "x" * 100_000}], "max_tokens": 5},
    {"model": "m", "messages": []},
    {"model": "m", "messages": ["hi"]},
    {"model": "m", "messages": [{"role": "user"}, {"content": "no role"}]},
    {"model": "m", "messages": [{"role": "user"}, 3]},
    {"model": "m", "messages": {"role": "user"}},
    {"model": "m", "messages": None},
    {"model": "m"},
    {"model": "", "messages": [{"role": "user"}]},
    {"model": " \u3000\t", "messages": [{"role": "user"}]},
    {"model": " " * 3000, "messages": [{"role": "user"}]},
    {"model": " " * 1500 + "m" + "\u00a0" * 1500, "messages": [{"role": "user"}]},
    {"model": "m" * 5000, "messages": [{"role": "user"}]},
    {"model": 7, "messages": [{"role": "user"}]},
    {"model": ["m"], "messages": [{"role": "user"}]},
    {"model": None, "messages": [{"role": "user"}]},
    {"messages": [{"role": "user"}]},
    {"model": "m", "input": "text"},
    {"model": "m", "input": ""},
    {"model": "m", "input": []},
    {"model": "m", "input": None},
    {"model": "m", "input": 0},
    {"model": "m", "input": False},
    {"model": "m", "input": [""]},
    {"model": "m", "input": {}},
    {},
    [1, 2],
    [],
    "text",
    "",
    3.5,
    0,
    True,
    False,
    None,
]


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"])
def test_planning_judges_a_body_by_its_shape_exactly_as_by_the_body(
    db_url: str, sessions: Any, endpoint: str
) -> None:
    with psycopg.connect(db_url) as conn:
        job = conn.execute(
            "INSERT INTO orchestrator.jobs (name) VALUES ('shapes') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        for i, body in enumerate(BODIES):
            conn.execute(
                "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
                "VALUES (%s, %s, 'openai', %s::jsonb)",
                (job, f"b{i:02d}", json.dumps(body)),
            )
    stored = {cid: text for _, cid, text in _stored(db_url, job)}
    rules = rq.Rules(
        endpoint=endpoint,
        supported_endpoints=(endpoint,),
        requires_provider=True,
        max_custom_id_length=64,
        max_line_bytes=10**9,
    )
    verdicts = set()
    with unit_of_work(sessions) as s:
        rows = list(queries.job_requests(s, job))
    assert [r.custom_id for r in rows] == [f"b{i:02d}" for i in range(len(BODIES))]
    for r in rows:
        row = rq.RequestRow(r.custom_id, r.provider, r.method, r.url)
        text = stored[r.custom_id]
        by_body = rq.request_problem(row, orjson.loads(text), len(text), rules)
        assert rq.request_problem(row, r.body_shape, r.body_bytes, rules) == by_body, r.custom_id
        assert r.body_bytes == len(text)
        assert len(orjson.dumps(r.body_shape)) < 1100  # never the body: a few bytes
        verdicts.add(by_body)
    assert None in verdicts and len(verdicts) >= 4  # the corpus has valid and invalid bodies


def test_the_whitespace_btrim_takes_off_is_what_strip_takes_off() -> None:
    python = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert python == queries.WHITESPACE


@pytest.mark.parametrize(("keep_bytes", "pooled"), [(10**9, True), (PAGE, False)])
def test_a_connection_that_read_a_large_body_is_closed_not_pooled(
    db_url: str, monkeypatch: pytest.MonkeyPatch, keep_bytes: int, pooled: bool
) -> None:
    # libpq's input buffer stays as large as the largest row read: such a connection would keep
    # holding it in the pool.
    monkeypatch.setattr(queries, "KEEP_CONNECTION_BYTES", keep_bytes)
    _, batch = _enqueue_batch(db_url, CONTENTS)
    engine = make_engine(db_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    try:
        with unit_of_work(sessions) as s:
            pages = queries.batch_requests(s, batch, page_bytes=PAGE)
            first = next(pages)
            backend = s.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            others = list(pages)
            assert first and len(others) > 1
            rest = [r for page in others for r in page]
            # the bodies larger than a page, read in slices as the upload reads them
            for r in [*first, *rest]:
                if r.body is None:
                    assert b"".join(queries.body_slices(s, r))
        with unit_of_work(sessions) as s:
            after = s.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    finally:
        engine.dispose()
    assert (after == backend) is pooled


def test_no_transaction_is_open_while_the_input_file_is_sent(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch of pages and slices (the upload sends each piece as the generator yields it)
    monkeypatch.setattr(queries, "PAGE_BYTES", PAGE)
    _, batch = _enqueue_batch(db_url, CONTENTS)
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    heads = rq.LineHeads(endpoint="/v1/chat/completions", include_provider=True)
    try:
        with unit_of_work(sessions) as s:
            reader = queries.BatchReader(s, batch)
        # When the lines are read, as the upload reads them
        open_while_sending = []
        sent = 0
        for piece in steps._lines(SimpleNamespace(sessions=sessions), reader, heads):
            open_while_sending.append(engine.pool.checkedout())  # type: ignore[attr-defined]
            sent += len(piece)
    finally:
        engine.dispose()
    # Then every piece went out with no connection taken from the pool (so no transaction open)
    assert sent == steps._measure(reader, heads)
    assert len(open_while_sending) > len(CONTENTS) // 60 and set(open_while_sending) == {0}
