"""Cost arithmetic: the provider's own figure when it reports one, else our price table."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# FastRouter documents "token usage and cost information" on the batch object without naming the
# key (spec section 1.1): read the likely ones, top level and inside ``usage``.
COST_KEYS = ("cost", "total_cost", "cost_usd", "credits_used")


def provider_cost(batch: Mapping[str, Any]) -> Decimal | None:
    """The cost the provider reports on a batch object, if it reports one."""
    usage = batch.get("usage")
    for source in (usage if isinstance(usage, Mapping) else {}, batch):
        for key in COST_KEYS:
            value = source.get(key)
            if isinstance(value, int | float | str) and not isinstance(value, bool):
                try:
                    return Decimal(str(value))
                except ArithmeticError:
                    continue
    return None


def batch_cost(provider: Decimal | None, computed: Decimal | None) -> tuple[Decimal | None, str]:
    """A batch's cost and where it comes from: the provider's own figure wins; else our prices
    (every model priced); else none."""
    if provider is not None:
        return provider, "provider"
    if computed is not None:
        return computed, "prices"
    return None, "none"
