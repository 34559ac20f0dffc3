"""The ingest path on real PostgreSQL: COPY straight into results, idempotent re-ingest, a success
never replaced by a failure, and lines that need escaping."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.ingest import ingest_lines, read_files
from tests.support import query

ODD_ID = 'tab\there "quoted" back\\slash\nnewline\rreturn'


@pytest.fixture
def batch(db_url: str) -> tuple[int, int]:
    """A job with five requests, all in batch 1 (attempt 1)."""
    with psycopg.connect(db_url) as conn:
        job = conn.execute(
            "INSERT INTO orchestrator.jobs (name) VALUES ('t') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        for cid in ("a", "b", "c", "d", ODD_ID):
            conn.execute(
                "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
                "VALUES (%s, %s, 'openai', '{}')",
                (job, cid),
            )
        conn.execute("UPDATE orchestrator.jobs SET status = 'running' WHERE id = %s", (job,))
        batch_id = conn.execute(
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            "next_run_at, state) VALUES (%s, 'fastrouter', '/v1/chat/completions', 5, 0, now(), "
            "'ingesting') RETURNING id",
            (job,),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq) "
            "SELECT %s, custom_id, job_id, seq FROM orchestrator.requests",
            (batch_id,),
        )
    return int(job), int(batch_id)


def ok(cid: str, content: str = "hello") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "response": {
            "status_code": 200,
            "body": {
                "model": "m",
                "choices": [{"message": {"content": content}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            },
        },
        "error": None,
    }


def failed(cid: str, status: int, message: str = "nope") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "response": {"status_code": status, "body": {"error": {"message": message, "type": "t"}}},
        "error": None,
    }


def write(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines)
    )
    return path


def ingest(db_url: str, job: int, batch_id: int, paths: list[Path], **kw: Any) -> Any:
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            return ingest_lines(
                s,
                job_id=job,
                batch_id=batch_id,
                lines=read_files(paths),
                max_attempts=kw.get("max_attempts", 3),
                resubmit=kw.get("resubmit", True),
            )
    finally:
        engine.dispose()


def results(db_url: str) -> dict[str, tuple[Any, ...]]:
    rows = query(
        db_url,
        "SELECT custom_id, succeeded, status_code, response, error, attempt, "
        "total_tokens, created_at FROM orchestrator.results",
    )
    return {r[0]: r[1:] for r in rows}


def content(db_url: str) -> dict[str, tuple[Any, ...]]:
    """What each result says, by custom_id: (succeeded, status_code, the answer or None, the
    error's code and message or None, attempt)."""
    rows = query(
        db_url,
        "SELECT custom_id, succeeded, status_code, response #>> '{choices,0,message,content}', "
        "error->>'code', error->>'message', attempt FROM orchestrator.results",
    )
    return {r[0]: r[1:] for r in rows}


def test_one_pass_sorts_lines_into_results_and_retries(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    output = write(
        tmp_path / "out.jsonl",
        [
            ok("a"),
            failed("b", 500),
            ok(ODD_ID, "nul \u0000 and \\ backslash, ünïcode"),
            "this is not json\n",
            ok("stranger"),
            ok("a"),  # garbage, unknown id, duplicate
        ],
    )
    errors = write(
        tmp_path / "err.jsonl", [failed("c", 400, "max_tokens is too large"), failed("a", 500)]
    )  # a succeeded already
    stats = ingest(db_url, job, batch_id, [output, errors])
    assert (stats.succeeded, stats.failed, stats.retry, stats.missing) == (2, 1, 2, 1)
    assert (stats.malformed_lines, stats.unknown_lines, stats.duplicate_lines) == (1, 1, 2)
    # c's final failure ran at the provider: nothing here was left unrun
    assert (stats.not_run, stats.not_run_final) == (0, 0)
    # a success has no error at all (SQL NULL, not a JSON null), a failure its error
    assert query(
        db_url, "SELECT custom_id FROM orchestrator.results WHERE error IS NULL ORDER BY custom_id"
    ) == [("a",), (ODD_ID,)]
    rows = results(db_url)
    assert set(rows) == {"a", ODD_ID, "c"}  # b (500) and d (missing) wait for the next round
    assert rows["a"][0] is True and rows["a"][5] == 7
    assert (
        rows[ODD_ID][2]["choices"][0]["message"]["content"]
        == "nul \ufffd and \\ backslash, ünïcode"
    )
    assert rows["c"][:2] == (False, 400) and rows["c"][3]["message"] == "max_tokens is too large"
    # each result holds its own line's answer or error: the first line for a, not the duplicate
    # nor the later 500 in the error file
    assert rows["a"][2] == ok("a")["response"]["body"]
    assert rows["c"][2] == failed("c", 400, "max_tokens is too large")["response"]["body"]
    assert rows["c"][3] == {
        "code": None,
        "message": "max_tokens is too large",
        "type": "t",
        "status_code": 400,
    }
    assert content(db_url) == {
        "a": (True, 200, "hello", None, None, 1),
        ODD_ID: (True, 200, "nul \ufffd and \\ backslash, ünïcode", None, None, 1),
        "c": (False, 400, None, None, "max_tokens is too large", 1),
    }
    retry = dict(
        query(
            db_url,
            "SELECT custom_id, error->>'code' FROM orchestrator.batch_items "
            "WHERE error IS NOT NULL",
        )
    )
    assert retry == {"b": None, "d": "missing_result"}


def test_reingesting_the_same_files_changes_nothing(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    files = [write(tmp_path / "out.jsonl", [ok("a"), ok("b"), failed("c", 400)])]
    ingest(db_url, job, batch_id, files)
    before = results(db_url)
    assert content(db_url) == {
        "a": (True, 200, "hello", None, None, 1),
        "b": (True, 200, "hello", None, None, 1),
        "c": (False, 400, None, None, "nope", 1),
    }
    stats = ingest(db_url, job, batch_id, files)
    assert stats.upserted
    assert results(db_url) == before  # same rows, same timestamps: nothing rewritten


def test_a_success_is_never_replaced_by_a_failure(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    ingest(db_url, job, batch_id, [write(tmp_path / "1.jsonl", [ok("a"), failed("b", 400)])])
    # a later file says a failed and b succeeded
    ingest(db_url, job, batch_id, [write(tmp_path / "2.jsonl", [failed("a", 400), ok("b")])])
    rows = results(db_url)
    assert rows["a"][0] is True and rows["b"][0] is True
    assert content(db_url) == {
        "a": (True, 200, "hello", None, None, 1),
        "b": (True, 200, "hello", None, None, 1),
    }


def another_batch(db_url: str, job: int, custom_ids: list[str], attempt: int = 2) -> int:
    """A later batch of the same job holding ``custom_ids`` again (a resubmission, or an operator
    re-running a batch by hand)."""
    with psycopg.connect(db_url) as conn:
        batch_id = conn.execute(
            "INSERT INTO orchestrator.batches (job_id, target, endpoint, request_count, bytes, "
            "next_run_at, state, round) VALUES (%s, 'fastrouter', '/v1/chat/completions', %s, 0, "
            "now(), 'ingesting', 2) RETURNING id",
            (job, len(custom_ids)),
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO orchestrator.batch_items (batch_id, custom_id, job_id, seq, attempt) "
            "SELECT %s, custom_id, job_id, seq, %s FROM orchestrator.requests "
            "WHERE job_id = %s AND custom_id = ANY(%s)",
            (batch_id, attempt, job, custom_ids),
        )
    return int(batch_id)


def test_a_success_is_never_replaced_by_a_failure_from_another_batch(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, first = batch
    ingest(db_url, job, first, [write(tmp_path / "1.jsonl", [ok("a", "first answer")])])
    before = results(db_url)["a"]
    # Given a later batch holding a again, whose file says a failed for good and b succeeded
    second = another_batch(db_url, job, ["a", "b"])
    stats = ingest(db_url, job, second, [write(tmp_path / "2.jsonl", [failed("a", 400), ok("b")])])
    # Then a keeps its success from the first batch, untouched; b's success lands
    assert stats.upserted
    rows = results(db_url)
    assert rows["a"] == before
    assert rows["a"][2]["choices"][0]["message"]["content"] == "first answer"
    assert rows["b"][0] is True and rows["b"][4] == 2  # attempt 2, from the second batch
    assert rows["b"][:3] == (True, 200, ok("b")["response"]["body"])
    owner = dict(query(db_url, "SELECT custom_id, batch_id FROM orchestrator.results"))
    assert owner == {"a": first, "b": second}


def test_a_failure_then_a_success_for_one_request_in_one_file_lands_the_success(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    # Given a provider that wrote a failure line and later a success line for "a" (a retried
    # line), and a retryable failure then a final one for "b", in one file
    lines = [failed("a", 500), failed("b", 500), ok("c"), ok("a", "second try"), failed("b", 400)]
    stats = ingest(db_url, job, batch_id, [write(tmp_path / "o.jsonl", lines)])
    # Then each request has exactly one result: a's success, b's final failure
    rows = results(db_url)
    assert rows["a"][:2] == (True, 200)
    assert rows["a"][2]["choices"][0]["message"]["content"] == "second try"
    assert rows["b"][:2] == (False, 400)
    assert (stats.succeeded, stats.failed, stats.duplicate_lines) == (2, 1, 2)
    assert content(db_url) == {
        "a": (True, 200, "second try", None, None, 1),
        "b": (False, 400, None, None, "nope", 1),
        "c": (True, 200, "hello", None, None, 1),
    }
    retry = query(db_url, "SELECT custom_id FROM orchestrator.batch_items WHERE error IS NOT NULL")
    assert sorted(r[0] for r in retry) == ["d", ODD_ID]  # only the missing ones go again


def test_without_resubmission_retryable_failures_are_final_and_missing_ones_left_out(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch  # a cancelled job: what the provider returned is kept, nothing resent
    stats = ingest(
        db_url,
        job,
        batch_id,
        [
            write(
                tmp_path / "o.jsonl",
                [
                    ok("a"),
                    {
                        "custom_id": "b",
                        "response": None,
                        "error": {"code": "batch_cancelled", "message": "cancelled"},
                    },
                ],
            )
        ],
        resubmit=False,
    )
    assert (stats.succeeded, stats.failed, stats.retry, stats.missing) == (1, 1, 0, 3)
    assert set(results(db_url)) == {"a", "b"}
    assert content(db_url) == {
        "a": (True, 200, "hello", None, None, 1),
        "b": (False, None, None, "batch_cancelled", "cancelled", 1),
    }


def test_the_last_attempt_makes_a_retryable_failure_final(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    stats = ingest(
        db_url, job, batch_id, [write(tmp_path / "o.jsonl", [failed("a", 429)])], max_attempts=1
    )
    assert stats.retry == 0 and stats.failed == 5  # a's 429 and four missing, all final
    rows = results(db_url)
    assert rows["a"][:2] == (False, 429) and rows["b"][3]["code"] == "missing_result"
    missing = "the provider returned no line for this request in the output or error file"
    assert content(db_url) == {
        "a": (False, 429, None, None, "nope", 1),
        **{
            cid: (False, None, None, "missing_result", missing, 1)
            for cid in ("b", "c", "d", ODD_ID)
        },
    }


def test_a_key_quoted_in_a_line_is_stored_nowhere_whole_or_cut_short(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    from orchestrator.observability import REDACTED, Scrubber  # (appended test; shared imports)
    from tests.support import API_KEY

    job, batch_id = batch
    cut = API_KEY[:-3]  # a message cut short mid-key: no whole key for a quick check to find
    output = write(
        tmp_path / "out.jsonl",
        [
            ok("a", f"the key you sent is {API_KEY}"),  # a success quoting it whole
            ok("b", "nothing to hide here"),
            failed("c", 400, f"bad request (received Authorization: Bearer {API_KEY})"),
            failed("d", 401, f"invalid key {cut}..."),
            failed(ODD_ID, 500, f"upstream said {cut}"),  # retryable: kept on its batch item
        ],
    )
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            stats = ingest_lines(
                s, job_id=job, batch_id=batch_id, lines=read_files([output]), max_attempts=3,
                resubmit=True, scrub=Scrubber([API_KEY]),
            )  # fmt: skip
    finally:
        engine.dispose()
    assert (stats.succeeded, stats.failed, stats.retry) == (2, 2, 1)
    assert {cid: row[:2] for cid, row in content(db_url).items()} == {
        "a": (True, 200), "b": (True, 200), "c": (False, 400), "d": (False, 401),
    }  # fmt: skip
    stored = results(db_url)
    assert stored["a"][2]["choices"][0]["message"]["content"] == f"the key you sent is {REDACTED}"
    assert stored["b"][2]["choices"][0]["message"]["content"] == "nothing to hide here"
    assert stored["c"][3]["message"] == f"bad request (received Authorization: Bearer {REDACTED})"
    assert stored["d"][3]["message"] == f"invalid key {REDACTED}..."
    assert stored["d"][2]["error"]["message"] == f"invalid key {REDACTED}..."  # the body too
    kept = query(db_url, "SELECT error FROM orchestrator.batch_items WHERE error IS NOT NULL")
    assert [row[0]["message"] for row in kept] == [f"upstream said {REDACTED}"]
    distinct = API_KEY.removeprefix("sk-test-")
    everything = json.dumps([stored, kept], default=str)
    assert not [
        distinct[i : i + 8] for i in range(len(distinct) - 7) if distinct[i : i + 8] in everything
    ]


def test_of_two_failure_lines_for_one_request_the_first_is_kept_unless_a_final_one_follows(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    # Given a file with two final failures for "a", two retryable ones for "b", and a retryable
    # one then a final one for "c"
    lines = [
        failed("a", 400, "first final"),
        failed("b", 500, "first passing"),
        failed("c", 503, "passing"),
        failed("a", 404, "second final"),
        failed("b", 502, "second passing"),
        failed("c", 422, "final"),
    ]
    stats = ingest(db_url, job, batch_id, [write(tmp_path / "o.jsonl", lines)])
    assert stats.duplicate_lines == 3
    # Then a keeps its first final failure, c the final one that followed its passing one
    assert content(db_url) == {
        "a": (False, 400, None, None, "first final", 1),
        "c": (False, 422, None, None, "final", 1),
    }
    # and b goes into the next round with its first line's error
    retry = dict(
        query(
            db_url,
            "SELECT custom_id, error->>'message' FROM orchestrator.batch_items "
            "WHERE error IS NOT NULL AND custom_id = 'b'",
        )
    )
    assert retry == {"b": "first passing"}


def test_a_success_keeps_the_model_its_line_names_even_one_never_seen_before(
    db_url: str, batch: tuple[int, int], tmp_path: Path
) -> None:
    job, batch_id = batch
    fresh = f"model-{uuid.uuid4()}"  # a name this process has not written before
    line = ok("a")
    line["response"]["body"]["model"] = fresh
    ingest(db_url, job, batch_id, [write(tmp_path / "o.jsonl", [line, ok("b")])])
    models = dict(query(db_url, "SELECT custom_id, model FROM orchestrator.results"))
    assert models == {"a": fresh, "b": "m"}
