"""Cost arithmetic: the provider's own figure when it reports one, else our price table."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# FastRouter documents "token usage and cost information" on the batch object without naming the
# key (spec section 1.1): read the likely ones, top level and inside ``usage``.
COST_KEYS = ("cost", "total_cost", "cost_usd", "credits_used")
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


def batch_cost(provider: Decimal | None, computed: Decimal | None) -> tuple[Decimal | None, str]:
    """A batch's cost and where it comes from: the provider's own figure wins; else our prices
    (every model priced); else none."""
    if provider is not None:
        return provider, "provider"
    if computed is not None:
        return computed, "prices"
    return None, "none"


def as_stored(cost: Decimal | None) -> Decimal | None:
    """``cost`` to the database's 8 decimal places, rounded as PostgreSQL rounds a NUMERIC (half
    away from zero): rounded once, before it is stored, so the batch row, the job's sum and the
    event say the same amount to the digit."""
    return None if cost is None else cost.quantize(COST_PLACES, rounding=ROUND_HALF_UP)
