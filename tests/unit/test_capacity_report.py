"""The capacity report (``domain/capacity_report.py``): which budget is in force, and which targets
and models the report holds."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator.config import make_target
from orchestrator.db.queries import CapacityUsage
from orchestrator.domain.capacity import Budget, budget_in_force
from orchestrator.domain.capacity_report import ModelCapacity, report, why_waiting

AT = dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("configured", "learned", "expected"),
    [
        (5_000, 3_000, Budget(3_000, "learned")),  # the learned limit lowers the budget
        (5_000, 8_000, Budget(5_000, "configured")),  # never raises it
        (5_000, 5_000, Budget(5_000, "configured")),  # equal: nothing lowered
        (None, 3_000, Budget(3_000, "learned")),
        (5_000, None, Budget(5_000, "configured")),
        (None, None, None),
    ],
)
def test_the_budget_in_force_is_the_lower_and_says_where_it_comes_from(
    configured: int | None, learned: int | None, expected: Budget | None
) -> None:
    assert budget_in_force(configured, learned) == expected


class Learned:
    def __init__(self, target: str, model: str, tokens: int) -> None:
        self.target, self.model, self.learned_tokens = target, model, tokens
        self.learned_at, self.message = AT, "Limit: 1 enqueued tokens"


def test_the_report_holds_named_learned_and_busy_models_and_unconfigured_targets() -> None:
    target = make_target(
        "fastrouter",
        "fastrouter",
        base_url="http://x",
        enqueued_token_budgets={"a": 100, "*": 50},
        max_batches_in_flight=3,
    )
    usage = [
        CapacityUsage("fastrouter", "b", 40, 2, 1, AT, "waiting_for_capacity: full"),
        CapacityUsage("fastrouter", None, 10, 1, 0, None, None),
    ]
    (fastrouter, gone) = report(
        {"fastrouter": target}, usage, [Learned("fastrouter", "a", 70), Learned("gone", "c", 9)]
    )
    assert (fastrouter.target, fastrouter.max_batches_in_flight) == ("fastrouter", 3)
    assert fastrouter.configured_default == 50 and fastrouter.batches_in_flight == 3
    a, b, none = fastrouter.models
    # "a": named in the configuration (100), learned 70: the learned one is in force
    assert (a.model, a.configured, a.learned, a.budget) == ("a", 100, 70, Budget(70, "learned"))
    assert (a.in_flight_tokens, a.waiting_batches) == (0, 0)
    # "b": busy, under "*"
    assert (b.model, b.budget, b.in_flight_tokens, b.waiting_batches) == (
        "b",
        Budget(50, "configured"),
        40,
        1,
    )
    assert b.shown_in_status and why_waiting(b.waiting_reason) == "full"
    # no model stated: last, under "*" too
    assert (none.model, none.budget) == (None, Budget(50, "configured"))
    # a target the configuration no longer has, with a learned limit
    assert (gone.target, gone.max_batches_in_flight, gone.configured_default) == (
        "gone",
        None,
        None,
    )
    assert [(m.model, m.budget) for m in gone.models] == [("c", Budget(9, "learned"))]


def test_each_model_of_the_report_carries_its_target_budgets_and_waiting_figures() -> None:
    since = AT - dt.timedelta(minutes=5)
    target = make_target(
        "openai", "openai", base_url="http://x", enqueued_token_budgets={"low": 100, "high": 900}
    )
    usage = [CapacityUsage("openai", "low", 80, 2, 3, since, "waiting_for_capacity: low is full")]
    learned = [Learned("openai", "low", 200), Learned("openai", "high", 500)]
    (openai,) = report({"openai": target}, usage, learned)
    assert openai.models == (
        # learned 500 under the configured 900: the learned one is in force
        ModelCapacity(
            target="openai", model="high", configured=900, learned=500, learned_at=AT,
            learned_message="Limit: 1 enqueued tokens", budget=Budget(500, "learned"),
        ),
        # learned 200 over the configured 100: it never raises a budget
        ModelCapacity(
            target="openai", model="low", configured=100, learned=200, learned_at=AT,
            learned_message="Limit: 1 enqueued tokens", budget=Budget(100, "configured"),
            in_flight_tokens=80, in_flight_batches=2, waiting_batches=3,
            oldest_waiting_since=since, waiting_reason="waiting_for_capacity: low is full",
        ),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("waiting_for_capacity: m needs ~5 enqueued tokens", "m needs ~5 enqueued tokens"),
        ("another reason", "another reason"),
        (None, ""),
    ],
)
def test_why_waiting_is_the_reason_without_its_head(reason: str | None, shown: str) -> None:
    assert why_waiting(reason) == shown
