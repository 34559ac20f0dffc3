"""A small built-in price table, so the emulated usage carries a plausible cost.

Prices are USD per million tokens at synchronous list price; batches get 50% off (both OpenAI and
FastRouter advertise that). The figures are illustrative, not a billing reference.
"""

from __future__ import annotations

import dataclasses

BATCH_DISCOUNT = 0.5


@dataclasses.dataclass(frozen=True)
class Price:
    input: float
    cached_input: float
    output: float


DEFAULT_PRICE = Price(input=1.00, cached_input=0.50, output=4.00)

PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.075, 0.60),
    "gpt-4o": Price(2.50, 1.25, 10.00),
    "gpt-4.1-nano": Price(0.10, 0.025, 0.40),
    "gpt-4.1-mini": Price(0.40, 0.10, 1.60),
    "gpt-4.1": Price(2.00, 0.50, 8.00),
    "gpt-5-nano": Price(0.05, 0.005, 0.40),
    "gpt-5-mini": Price(0.25, 0.025, 2.00),
    "gpt-5": Price(1.25, 0.125, 10.00),
    "gpt-3.5-turbo": Price(0.50, 0.50, 1.50),
    "claude-4.5-sonnet": Price(3.00, 0.30, 15.00),
    "claude-sonnet-4-5": Price(3.00, 0.30, 15.00),
    "claude-haiku-4-5": Price(1.00, 0.10, 5.00),
    "text-embedding-3-small": Price(0.02, 0.02, 0.0),
    "text-embedding-3-large": Price(0.13, 0.13, 0.0),
}

# Longest names first, so "gpt-4o-mini-2024-07-18" matches "gpt-4o-mini" and not "gpt-4o".
_BY_LENGTH = sorted(PRICES, key=len, reverse=True)


def price_for(model: str | None) -> Price:
    """The price of a model, accepting FastRouter's ``provider/model`` names and dated suffixes."""
    if not model:
        return DEFAULT_PRICE
    name = model.rsplit("/", 1)[-1].lower()
    for known in _BY_LENGTH:
        if name == known or name.startswith(known + "-"):
            return PRICES[known]
    return DEFAULT_PRICE


def batch_cost(
    model: str | None, input_tokens: int, cached_tokens: int, output_tokens: int
) -> float:
    """USD for these tokens at the batch discount."""
    price = price_for(model)
    uncached = max(0, input_tokens - cached_tokens)
    full = uncached * price.input + cached_tokens * price.cached_input
    full += output_tokens * price.output
    return full / 1_000_000 * BATCH_DISCOUNT
