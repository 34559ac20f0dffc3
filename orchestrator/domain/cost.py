"""Cost arithmetic: the provider's own figure when it reports one, else our price table."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

# FastRouter documents "token usage and cost information" on the batch object without naming the
# key (spec section 1.1): read the likely ones, top level and inside ``usage``.
COST_KEYS = ("cost", "total_cost", "cost_usd", "credits_used")
MILLION = Decimal(1_000_000)


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
