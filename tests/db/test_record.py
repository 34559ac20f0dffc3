"""``ledger.record``: the event row and the log line come from the same fields, and the line is
logged only when the transaction commits."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import structlog

from orchestrator.db import ledger
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from tests.support import query


def _record_then_fail(sessions: Any) -> None:
    with unit_of_work(sessions) as s:
        ledger.record(s, "target_resumed", target="t")
        raise RuntimeError("the transaction fails")


def test_an_event_is_logged_with_its_fields_once_its_transaction_commits(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    try:
        with structlog.testing.capture_logs() as logs:
            with unit_of_work(sessions) as s:
                ledger.record(s, "target_paused", level="error", target="t", error="bad key")
                assert logs == []  # not yet: the transaction may still roll back
            with pytest.raises(RuntimeError):
                _record_then_fail(sessions)
    finally:
        engine.dispose()
    # one line, for the committed event only, with the row's fields
    assert [(e["event"], e["log_level"], e["target"], e["error"]) for e in logs] == [
        ("target_paused", "error", "t", "bad key")
    ]
    rows = query(db_url, "SELECT kind, detail FROM orchestrator.events")
    assert rows == [("target_paused", {"target": "t", "error": "bad key"})]


def test_money_in_an_event_is_its_exact_decimal_string_and_none_is_null(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with structlog.testing.capture_logs() as logs, unit_of_work(make_sessionmaker(engine)) as s:
            ledger.record(
                s,
                "money",
                cost=Decimal("0.00026000"),
                tiny=Decimal("1E-8"),
                unknown=None,
                per_model={"m": [Decimal("0.1"), Decimal("0.2")]},
            )
    finally:
        engine.dispose()
    expected = {
        "cost": "0.00026000",  # the digits as they are, trailing zeros kept
        "tiny": "0.00000001",  # never "1E-8"
        "unknown": None,  # JSON null, not "None"
        "per_model": {"m": ["0.1", "0.2"]},
    }
    rows = query(
        db_url,
        "SELECT detail, jsonb_typeof(detail->'cost'), jsonb_typeof(detail->'unknown') "
        "FROM orchestrator.events",
    )
    assert rows == [(expected, "string", "null")]
    assert [{k: e[k] for k in expected} for e in logs] == [expected]
