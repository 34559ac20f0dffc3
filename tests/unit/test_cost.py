from __future__ import annotations

from decimal import Decimal

from orchestrator.domain.cost import batch_cost, provider_cost


def test_provider_cost_is_read_from_usage_or_the_top_level() -> None:
    assert provider_cost({"usage": {"cost": 0.25}}) == Decimal("0.25")
    assert provider_cost({"usage": {"total_cost": "1.5"}}) == Decimal("1.5")
    assert provider_cost({"cost": 2}) == Decimal(2)
    assert provider_cost({"usage": {"input_tokens": 5}}) is None
    assert provider_cost({"usage": {"cost": True}}) is None


def test_the_providers_cost_wins_then_our_prices_then_none() -> None:
    assert batch_cost(Decimal("0.01"), Decimal("0.02")) == (Decimal("0.01"), "provider")
    assert batch_cost(None, Decimal("0.02")) == (Decimal("0.02"), "prices")
    assert batch_cost(None, None) == (None, "none")
    assert batch_cost(Decimal(0), None) == (Decimal(0), "provider")
