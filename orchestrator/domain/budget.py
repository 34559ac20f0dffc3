"""A job's estimate before anything is sent, and its budget (``jobs.max_cost``).

The estimate per model comes from the database (``queries.job_estimate``): prompt tokens from the
bodies' sizes (bytes / 4: a documented heuristic that leans high, not a tokenizer), output tokens
at most the requests' own bounds (``max_completion_tokens``, ``max_tokens``, ``max_output_tokens``;
none for embeddings), and the cost of both at the price in force, as if nothing were cached. That
is an upper bound of what the job can cost when every request states its bound and every model has
a price; otherwise the upper bound is unknown, and a job with a budget is refused, saying why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from decimal import Decimal
from typing import Protocol


class ModelEstimate(Protocol):
    @property
    def model(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def unbounded(self) -> int: ...
    @property
    def max_output_tokens(self) -> int: ...
    @property
    def priced(self) -> bool: ...
    @property
    def max_cost(self) -> Decimal | None: ...


@dataclasses.dataclass(frozen=True)
class Verdict:
    prompt_tokens: int
    max_output_tokens: int | None  # None: some request states no bound
    max_cost: Decimal | None  # None: the upper bound is unknown
    problem: str | None  # why the job cannot run within its budget


def judge(models: Sequence[ModelEstimate], budget: Decimal | None) -> Verdict:
    prompt = sum(m.prompt_tokens for m in models)
    unbounded = sum(m.unbounded for m in models)
    unpriced = sorted(m.model or "(no model)" for m in models if not m.priced)
    output = None if unbounded else sum(m.max_output_tokens for m in models)
    cost = None
    if not unbounded and not unpriced:
        cost = sum((m.max_cost or Decimal(0) for m in models), Decimal(0))
    problem = None
    if budget is not None:
        if not (budget.is_finite() and budget >= 0):  # NUMERIC holds 'NaN'; a typo holds -5
            problem = (
                f"max_cost is {budget}, which is no amount of money; set it to the most the job "
                "may cost in USD (e.g. 5.00) or clear it (NULL: no budget)"
            )
        elif unpriced:
            problem = (
                f"max_cost is {_money(budget)} but the cost cannot be bounded: no price in "
                f"force for {', '.join(unpriced)}; add it to orchestrator.prices or clear max_cost"
            )
        elif unbounded:
            problem = (
                f"max_cost is {_money(budget)} but the cost cannot be bounded: {unbounded} "
                "request(s) set no max_tokens (or max_completion_tokens, max_output_tokens); "
                "set one on every request or clear max_cost"
            )
        elif cost is not None and cost > budget:
            problem = (
                f"the estimated cost is up to {_money(cost)}, over the job's max_cost of "
                f"{_money(budget)} ({prompt:,} prompt tokens estimated, up to {output:,} output "
                "tokens); nothing was sent"
            )
    return Verdict(prompt, output, cost, problem)


def _money(value: Decimal) -> str:
    """$0.000260: exact to the last digit that is not zero, at least to the cent."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"
