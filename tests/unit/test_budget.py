"""A job's estimate and its budget (``domain/budget.py``): the figures every job keeps
(``estimated_prompt_tokens``, ``estimated_max_output_tokens``, ``estimated_max_cost``) and, with a
``max_cost``, the refusal a person reads in the job's ``error`` (README "A budget")."""

from __future__ import annotations

from decimal import Decimal

import pytest

from orchestrator.db.queries import ModelEstimate
from orchestrator.domain.budget import Verdict, judge


def _model(
    model: str,
    *,
    prompt: int = 1_000,
    unbounded: int = 0,
    output: int = 500,
    priced: bool = True,
    cost: str | None = "0.01",
) -> ModelEstimate:
    return ModelEstimate(
        model=model,
        requests=10,
        prompt_tokens=prompt,
        unbounded=unbounded,
        max_output_tokens=output,
        priced=priced,
        max_cost=None if cost is None else Decimal(cost),
    )


NANO = _model("openai/gpt-4.1-nano", prompt=1_234, output=2_000, cost="0.00026")
MINI = _model("gpt-4o-mini", prompt=98_765, output=50_000, cost="1.5")


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        # every request bounded, every model priced: the sums over the models, an upper bound
        ([NANO, MINI], Verdict(99_999, 52_000, Decimal("1.50026"), None)),
        ([NANO], Verdict(1_234, 2_000, Decimal("0.00026"), None)),
        # a request with no output bound: neither the output nor the cost can be bounded
        (
            [NANO, _model("m", prompt=10, unbounded=3, output=7, cost="0.5")],
            Verdict(1_244, None, None, None),
        ),
        # a model with no price: the output is bounded, the cost is not
        (
            [NANO, _model("m", prompt=10, output=7, priced=False, cost=None)],
            Verdict(1_244, 2_007, None, None),
        ),
        # a priced model whose requests cost nothing at most (no tokens priced) adds nothing
        (
            [NANO, _model("free", prompt=0, output=0, cost=None)],
            Verdict(1_234, 2_000, Decimal("0.00026"), None),
        ),
        # no requests at all: nothing to send, nothing to pay
        ([], Verdict(0, 0, Decimal(0), None)),
    ],
)  # fmt: skip
def test_judge_without_a_budget_keeps_the_estimate_and_refuses_nothing(
    models: list[ModelEstimate], expected: Verdict
) -> None:
    assert judge(models, None) == expected


@pytest.mark.parametrize(
    ("models", "budget", "problem"),
    [
        # over the budget: both figures, the tokens with separators, money exact to its last digit
        (
            [NANO, MINI],
            "1.5",
            "the estimated cost is up to $1.50026, over the job's max_cost of $1.50 "
            "(99,999 prompt tokens estimated, up to 52,000 output tokens); nothing was sent",
        ),
        (
            [NANO],
            "0.0001",
            "the estimated cost is up to $0.00026, over the job's max_cost of $0.0001 "
            "(1,234 prompt tokens estimated, up to 2,000 output tokens); nothing was sent",
        ),
        # exactly the budget: it may run
        ([NANO, MINI], "1.50026", None),
        ([NANO], "5", None),
        # unbounded output: refused whatever the budget, saying how many requests lack a bound
        (
            [NANO, _model("m", unbounded=2), _model("n", unbounded=1)],
            "100",
            "max_cost is $100.00 but the cost cannot be bounded: 3 request(s) set no max_tokens "
            "(or max_completion_tokens, max_output_tokens); set one on every request or clear "
            "max_cost",
        ),
        # unpriced models, named in order (a request without a model too); said before unbounded
        (
            [
                _model("zeta", priced=False, cost=None),
                NANO,
                _model("", priced=False, cost=None, unbounded=4),
                _model("alpha", priced=False, cost=None),
            ],
            "2.5",
            "max_cost is $2.50 but the cost cannot be bounded: no price in force for "
            "(no model), alpha, zeta; add it to orchestrator.prices or clear max_cost",
        ),
    ],
)
def test_judge_refuses_a_job_over_its_budget_or_unbounded_saying_why(
    models: list[ModelEstimate], budget: str, problem: str | None
) -> None:
    assert judge(models, Decimal(budget)).problem == problem


def test_judge_with_a_budget_still_keeps_the_estimate() -> None:
    assert judge([NANO, MINI], Decimal("0.01")) == Verdict(
        99_999,
        52_000,
        Decimal("1.50026"),
        "the estimated cost is up to $1.50026, over the job's max_cost of $0.01 "
        "(99,999 prompt tokens estimated, up to 52,000 output tokens); nothing was sent",
    )


@pytest.mark.parametrize(
    ("budget", "shown"),
    [
        ("5", "$5.00"),
        ("5.00", "$5.00"),
        ("0.5", "$0.50"),
        ("1E+1", "$10.00"),
        ("1200", "$1200.00"),
        ("0.000260", "$0.00026"),
        ("0.12345678", "$0.12345678"),
    ],
)
def test_judge_shows_money_at_least_to_the_cent_and_exact_to_its_last_digit(
    budget: str, shown: str
) -> None:
    problem = judge([_model("m", unbounded=1)], Decimal(budget)).problem
    assert problem == (
        f"max_cost is {shown} but the cost cannot be bounded: 1 request(s) set no max_tokens "
        "(or max_completion_tokens, max_output_tokens); set one on every request or clear max_cost"
    )


@pytest.mark.parametrize("budget", [Decimal("NaN"), Decimal("-5"), Decimal("Infinity")])
def test_judge_refuses_a_max_cost_that_is_no_amount_of_money(budget: Decimal) -> None:
    # (a NUMERIC column holds 'NaN'; before, comparing with it raised InvalidOperation and the
    # job failed with "internal error while planning")
    verdict = judge([NANO], budget)
    assert verdict.problem == (
        f"max_cost is {budget}, which is no amount of money; set it to the most the job may cost "
        "in USD (e.g. 5.00) or clear it (NULL: no budget)"
    )
    assert (verdict.prompt_tokens, verdict.max_cost) == (1_234, Decimal("0.00026"))


def test_judge_takes_a_max_cost_of_zero_as_a_budget_nothing_fits_in() -> None:
    # 0 is an amount (a job that may cost nothing), not a mistake: it is judged as any budget
    verdict = judge([NANO], Decimal(0))
    assert verdict.problem == (
        "the estimated cost is up to $0.00026, over the job's max_cost of $0.00 (1,234 prompt "
        "tokens estimated, up to 2,000 output tokens); nothing was sent"
    )
