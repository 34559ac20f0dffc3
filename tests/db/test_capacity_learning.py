"""``ledger.learn_limit``: the lowest limit a provider stated is kept per target and model, and a
refusal of a batch created after it was learned lowers it by a tenth (our estimate ran low)."""

from __future__ import annotations

import datetime as dt

from orchestrator.db import ledger
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from tests.support import query

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def test_the_lowest_stated_limit_is_kept_and_a_refusal_under_it_lowers_it(db_url: str) -> None:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)

    def learn(tokens: int, *, created: dt.datetime | None, at: dt.datetime,
              model: str = "gpt-4o") -> tuple[int | None, int]:  # fmt: skip
        with unit_of_work(sessions) as s:
            return ledger.learn_limit(
                s, target="openai", model=model, tokens=tokens, message=f"Limit: {tokens}",
                created_at=created, now=at,
            )  # fmt: skip

    try:
        minute = dt.timedelta(minutes=1)
        # the first refusal: 2,000,000 is learned
        assert learn(2_000_000, created=T0, at=T0 + minute) == (None, 2_000_000)
        # a batch created before that was learned, refused with the same words: nothing changes
        assert learn(2_000_000, created=T0 + minute / 2, at=T0 + 2 * minute) == (
            2_000_000, 2_000_000,
        )  # fmt: skip
        # a batch created after it, within it by our estimate, refused all the same: 1,800,000
        assert learn(2_000_000, created=T0 + 3 * minute, at=T0 + 4 * minute) == (
            2_000_000, 1_800_000,
        )  # fmt: skip
        # a lower limit stated (the provider lowered it): taken as it is
        assert learn(1_000_000, created=T0 + 2 * minute, at=T0 + 5 * minute) == (
            1_800_000, 1_000_000,
        )  # fmt: skip
        # another model has its own
        assert learn(90_000, created=None, at=T0 + 6 * minute, model="gpt-4o-mini") == (
            None, 90_000,
        )  # fmt: skip
    finally:
        engine.dispose()
    rows = query(
        db_url, "SELECT model, learned_tokens, message FROM orchestrator.capacity ORDER BY model"
    )
    assert rows == [
        ("gpt-4o", 1_000_000, "Limit: 1000000"),
        ("gpt-4o-mini", 90_000, "Limit: 90000"),
    ]
    learned = query(
        db_url,
        "SELECT detail->>'model', (detail->>'limit_tokens')::bigint FROM orchestrator.events "
        "WHERE kind = 'capacity_learned' ORDER BY id",
    )
    # an event for each change, none when nothing changed
    assert learned == [
        ("gpt-4o", 2_000_000), ("gpt-4o", 1_800_000), ("gpt-4o", 1_000_000),
        ("gpt-4o-mini", 90_000),
    ]  # fmt: skip
