"""Cost arithmetic: the provider's own figure when it reports one, else our price table."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# FastRouter documents "token usage and cost information" on the batch object without naming the
# key (spec section 1.1): read the likely ones, top level and inside ``usage``.
COST_KEYS = ("cost", "total_cost", "cost_usd", "credits_used")
MILLION = Decimal(1_000_000)
# Costs are NUMERIC(20, 8) in the database (batches.cost, jobs.cost): 8 decimal places, and
# below 10^12 dollars.
COST_PLACES = Decimal("0.00000001")
COST_LIMIT = Decimal(10) ** 12


def provider_cost(batch: Mapping[str, Any]) -> Decimal | None:
    """The cost the provider reports on a batch object, if it reports one that is a number the
    ledger can hold (finite, below ``COST_LIMIT``).

    A JSON number arrives as a Python float (the JSON parsers give floats): it is read from its
    shortest decimal spelling (``repr``: 0.1 is Decimal("0.1"), not the binary fraction
    0.1000000000000000055…), which is the provider's own text whenever that text has at most 15
    significant digits (every cost of under 10^7 dollars to 8 decimal places). A string is read
    as it is written."""
    usage = batch.get("usage")
    for source in (usage if isinstance(usage, Mapping) else {}, batch):
        for key in COST_KEYS:
            value = source.get(key)
            if isinstance(value, bool):
                continue
            try:
                if isinstance(value, Decimal | int):
                    cost = Decimal(value)
                elif isinstance(value, float):
                    cost = Decimal(repr(value))
                elif isinstance(value, str):
                    cost = Decimal(value.strip())
                else:
                    continue
            except ArithmeticError:
                continue
            if cost.is_finite() and abs(cost) < COST_LIMIT:
                return cost
    return None


def as_stored(cost: Decimal | None) -> Decimal | None:
    """``cost`` to the database's 8 decimal places, rounded as PostgreSQL rounds a NUMERIC (half
    away from zero): rounded once, before it is stored, so the batch row, the job's sum and the
    event say the same amount to the digit."""
    return None if cost is None else cost.quantize(COST_PLACES, rounding=ROUND_HALF_UP)


@dataclasses.dataclass(frozen=True)
class Price:
    """USD per million tokens at the batch rate."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None


@dataclasses.dataclass
class TokenTally:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


def price_cost(tally: Mapping[str, TokenTally], prices: Mapping[str, Price]) -> Decimal | None:
    """Cost of the tokens per model at our prices; None if any model with tokens has no price."""
    total = Decimal(0)
    for model, tokens in tally.items():
        if not (tokens.prompt_tokens or tokens.completion_tokens):
            continue
        price = prices.get(model)
        if price is None:
            return None
        cached_rate = (
            price.cached_input_per_mtok
            if price.cached_input_per_mtok is not None
            else price.input_per_mtok
        )
        uncached = tokens.prompt_tokens - tokens.cached_tokens
        total += (
            uncached * price.input_per_mtok
            + tokens.cached_tokens * cached_rate
            + tokens.completion_tokens * price.output_per_mtok
        ) / MILLION
    return total
