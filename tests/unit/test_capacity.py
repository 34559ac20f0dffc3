"""Reading the enqueued-token limit out of a provider's token_limit_exceeded message."""

from __future__ import annotations

import pytest

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
    ],
)
def test_the_limit_and_its_model_are_read_from_the_message(
    message: str | None, expected: EnqueuedLimit | None
) -> None:
    assert enqueued_limit(message) == expected
