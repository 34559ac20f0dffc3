"""The price rule on real PostgreSQL: a price is used only from its ``valid_from`` on."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import psycopg

from orchestrator.db import queries
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain.cost import Price


def test_the_price_in_force_is_the_latest_that_has_started(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, output_per_mtok,"
            " cached_input_per_mtok) VALUES"
            " ('m', '2020-01-01', 3, 6, NULL), ('m', '2025-01-01', 1, 2, 0.5),"
            " ('m', '2030-01-01', 1000, 2000, NULL), ('other', '2027-01-01', 9, 9, NULL)"
        )
    engine = make_engine(db_url)
    try:
        with unit_of_work(make_sessionmaker(engine)) as s:
            at_2026 = queries.prices_in_force(
                s, ["m", "other"], dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
            )
            at_2024 = queries.prices_in_force(s, ["m"], dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
            at_2031 = queries.prices_in_force(s, ["m"], dt.datetime(2031, 1, 1, tzinfo=dt.UTC))
    finally:
        engine.dispose()
    # 2026: the 2025 row, not the newer 2030 one; "other" has no price in force yet
    assert at_2026 == {"m": Price(Decimal(1), Decimal(2), Decimal("0.5"))}
    assert at_2024 == {"m": Price(Decimal(3), Decimal(6), None)}
    assert at_2031 == {"m": Price(Decimal(1000), Decimal(2000), None)}
