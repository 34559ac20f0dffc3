"""The ingest path on real PostgreSQL: COPY straight into results, idempotent re-ingest, a success
never replaced by a failure, and lines that need escaping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.ingest import ingest_lines, read_files
from tests.support import query

ODD_ID = 'tab\there "quoted" back\\slash\nnewline'


@pytest.fixture
def batch(db_url: str) -> tuple[int, int]:
    """A job with five requests, all in batch 1 (attempt 1)."""
    with psycopg.connect(db_url) as conn:
        job = conn.execute(
            "INSERT INTO orchestrator.jobs (name, status) VALUES ('t', 'running') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        for cid in ("a", "b", "c", "d", ODD_ID):
            conn.execute(
                "INSERT INTO orchestrator.requests (job_id, custom_id, provider, body) "
                "VALUES (%s, %s, 'openai', '{}')",
                (job, cid),
            )
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
    rows = results(db_url)
    assert set(rows) == {"a", ODD_ID, "c"}  # b (500) and d (missing) wait for the next round
    assert rows["a"][0] is True and rows["a"][5] == 7
    assert (
        rows[ODD_ID][2]["choices"][0]["message"]["content"]
        == "nul \ufffd and \\ backslash, ünïcode"
    )
    assert rows["c"][:2] == (False, 400) and rows["c"][3]["message"] == "max_tokens is too large"
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
