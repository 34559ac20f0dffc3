"""Reading the enqueued-token limit out of a provider's token_limit_exceeded message."""

from __future__ import annotations

import pytest

from orchestrator.domain import capacity as cap
from orchestrator.domain.capacity import EnqueuedLimit, enqueued_limit


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        # OpenAI's, word for word as users report it
        (
            "Enqueued token limit reached for gpt-4o in organization org-abc123. Limit: "
            "2,000,000 enqueued tokens. Please try again once some in_progress batches have been "
            "completed.",
            EnqueuedLimit("gpt-4o", 2_000_000),
        ),
        # the emulator's (a FastRouter model name with a slash)
        (
            "Enqueued token limit reached for openai/gpt-4.1-nano in organization org-1f. "
            "Limit: 500 enqueued tokens. Please try again once some in_progress batches have "
            "been completed.",
            EnqueuedLimit("openai/gpt-4.1-nano", 500),
        ),
        # no separators, no organization, a dated model id
        (
            "Enqueued token limit reached for gpt-4o-mini-2024-07-18. Limit: 90000 tokens.",
            EnqueuedLimit("gpt-4o-mini-2024-07-18", 90_000),
        ),
        # a number but no model named
        ("Batch queue limit: 1,350,000 enqueued tokens.", EnqueuedLimit(None, 1_350_000)),
        # no number: no limit, never a guess
        ("Enqueued token limit reached for gpt-4o. Please try again later.", None),
        ("", None),
        (None, None),
        ("Limit: 0 tokens", None),
        # the least limit there is is still a limit
        ("Limit: 1 token", EnqueuedLimit(None, 1)),
    ],
)
def test_the_limit_and_its_model_are_read_from_the_message(
    message: str | None, expected: EnqueuedLimit | None
) -> None:
    assert enqueued_limit(message) == expected


# -- the estimate and admission (domain/capacity.py) ------------------------------------------


def test_the_estimate_is_bytes_over_four_rounded_up() -> None:
    assert [cap.estimated_tokens(n) for n in (0, 1, 4, 5, 8, 40_001)] == [0, 1, 1, 2, 2, 10_001]


def _admit(tokens: int, load: cap.Load, *, budget: int | None = 1_000, requests: int = 10,
           max_batches: int | None = None) -> cap.Admission:  # fmt: skip
    return cap.admit(
        model="m", tokens=tokens, requests=requests, load=load, budget=budget,
        max_batches=max_batches,
    )  # fmt: skip


def test_a_batch_goes_when_it_fits_beside_what_is_in_flight_and_ahead() -> None:
    # 600 in flight + 100 ahead + 300 = 1,000: exactly the budget
    assert _admit(300, cap.Load(tokens_in_flight=600, tokens_ahead=100)) == cap.Admit()
    # one token more does not fit, and says why with the numbers
    waits = _admit(301, cap.Load(tokens_in_flight=600, tokens_ahead=100))
    assert isinstance(waits, cap.Wait)
    assert waits.reason == (
        "waiting_for_capacity: m needs ~301 enqueued tokens; 600 are in flight and 100 ahead "
        "in line, of a budget of 1,000"
    )
    # without a budget, tokens are not counted
    assert _admit(10**9, cap.Load(tokens_in_flight=10**9), budget=None) == cap.Admit()


def test_a_batch_over_the_budget_alone_is_split_and_a_single_request_is_tried_alone() -> None:
    assert _admit(1_001, cap.Load()) == cap.Split(1_000)
    # one request cannot be split: it goes when nothing of its model is in flight or ahead
    assert _admit(1_500, cap.Load(), requests=1) == cap.Admit()
    assert isinstance(_admit(1_500, cap.Load(tokens_ahead=1), requests=1), cap.Wait)


def test_the_cap_on_batches_in_flight_counts_those_ahead_in_line() -> None:
    assert _admit(1, cap.Load(batches_in_flight=1), max_batches=2) == cap.Admit()
    waits = _admit(1, cap.Load(batches_in_flight=1, batches_ahead=1), max_batches=2)
    assert waits == cap.Wait(
        "waiting_for_capacity: 1 batch(es) in flight and 1 ahead in line; the target's "
        "max_batches_in_flight is 2"
    )


@pytest.mark.parametrize(
    ("tokens", "requests", "expected"),
    [
        # exactly the budget, alone: it fits
        (1_000, 10, cap.Admit()),
        # over it: split, even two requests (one each side)
        (1_001, 2, cap.Split(1_000)),
        # one request cannot be split: with nothing in flight or ahead, it is tried
        (1_001, 1, cap.Admit()),
    ],
)
def test_a_batch_alone_is_split_only_when_over_the_budget_and_splittable(
    tokens: int, requests: int, expected: cap.Admission
) -> None:
    assert _admit(tokens, cap.Load(), requests=requests) == expected


def test_a_batch_planned_with_no_model_stated_waits_saying_the_model() -> None:
    waits = cap.admit(
        model=None, tokens=2_500, requests=3, load=cap.Load(tokens_in_flight=1_500_000),
        budget=1_501_000, max_batches=None,
    )  # fmt: skip
    assert waits == cap.Wait(
        "waiting_for_capacity: the model needs ~2,500 enqueued tokens; 1,500,000 are in flight "
        "and 0 ahead in line, of a budget of 1,501,000"
    )
