from __future__ import annotations

from decimal import Decimal

from orchestrator.domain.cost import Price, TokenTally, price_cost, provider_cost


def test_provider_cost_is_read_from_usage_or_the_top_level() -> None:
    assert provider_cost({"usage": {"cost": 0.25}}) == Decimal("0.25")
    assert provider_cost({"usage": {"total_cost": "1.5"}}) == Decimal("1.5")
    assert provider_cost({"cost": 2}) == Decimal(2)
    assert provider_cost({"usage": {"input_tokens": 5}}) is None
    assert provider_cost({"usage": {"cost": True}}) is None


def test_price_table_cost_counts_cached_tokens_at_their_rate() -> None:
    prices = {"m": Price(Decimal("1"), Decimal("2"), Decimal("0.5"))}
    tally = {
        "m": TokenTally(prompt_tokens=1_000_000, completion_tokens=500_000, cached_tokens=200_000)
    }
    # 800k × $1 + 200k × $0.5 + 500k × $2 per million
    assert price_cost(tally, prices) == Decimal("1.9")


def test_price_table_cost_is_unknown_when_a_model_has_no_price() -> None:
    tally = {"m": TokenTally(prompt_tokens=1), "other": TokenTally(prompt_tokens=1)}
    assert price_cost(tally, {"m": Price(Decimal(1), Decimal(1))}) is None
