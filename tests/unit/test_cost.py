from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from orchestrator.domain.cost import as_stored, batch_cost, provider_cost


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


def test_a_cost_sent_as_a_json_number_is_read_as_the_decimal_it_spells_not_as_a_float() -> None:
    # A JSON number reaches us as a float: 0.1 is really 0.1000000000000000055511151231257827…,
    # and three of them add up to 0.30000000000000004 in floats.
    body = orjson.loads(b'{"usage": {"cost": 0.1}}')
    assert isinstance(body["usage"]["cost"], float)
    assert Decimal(body["usage"]["cost"]) != Decimal("0.1")  # what a float gives
    assert provider_cost(body) == Decimal("0.1")  # what the provider wrote
    assert sum([provider_cost(body)] * 3, Decimal(0)) == Decimal("0.3")  # type: ignore[type-var]
    # every digit of a cost in the ledger's 8 places, however small or large
    for text in ("0.00026371", "1e-08", "0.00000001", "1234567.12345678", "0.3", "1.1"):
        reported = provider_cost(orjson.loads(b'{"cost": %s}' % text.encode()))
        assert reported == Decimal(text), text
    assert provider_cost({"cost": Decimal("0.00026371")}) == Decimal("0.00026371")
    assert provider_cost({"cost": " 0.5 "}) == Decimal("0.5")


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e12", "abc", 1e300, None])
def test_a_cost_the_ledger_cannot_hold_is_not_a_cost(value: object) -> None:
    assert provider_cost({"usage": {"cost": value}}) is None


def test_a_cost_is_kept_to_8_places_rounded_half_away_from_zero_as_postgresql_rounds() -> None:
    assert format(as_stored(Decimal("0.000078209894")), "f") == "0.00007821"
    assert format(as_stored(Decimal("0.000000005")), "f") == "0.00000001"
    assert format(as_stored(Decimal("-0.000000005")), "f") == "-0.00000001"
    assert format(as_stored(Decimal("0.00026")), "f") == "0.00026000"
    assert as_stored(None) is None


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        # a key that holds no readable cost does not hide the next one
        ({"usage": {"cost": True, "total_cost": "0.25"}}, "0.25"),
        ({"usage": {"cost": "n/a", "total_cost": "0.25"}}, "0.25"),
        ({"usage": {"cost": {"usd": 1}, "total_cost": "0.25"}}, "0.25"),
        ({"usage": {"cost": "1e12", "cost_usd": 0.5}}, "0.5"),
        # usage first, then the top level
        ({"usage": {"cost": "abc"}, "credits_used": "3"}, "3"),
        ({"usage": {"cost": "0.1"}, "cost": "9"}, "0.1"),
    ],
)
def test_provider_cost_is_the_first_readable_one_among_its_keys(
    batch: dict[str, object], expected: str
) -> None:
    assert provider_cost(batch) == Decimal(expected)
