"""The tokens and model recorded for a result line: ``read_usage`` (cost and budgets rest on it)."""

from __future__ import annotations

import pytest

from orchestrator.domain import lines
from orchestrator.domain.lines import NO_USAGE, Usage, read_usage

DETAILS = {
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 2, "accepted_prediction_tokens": 0},
}


@pytest.mark.parametrize(
    ("body", "usage", "model"),
    [
        (  # chat, with the details
            {
                "model": "gpt-4o-mini",
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                | DETAILS,
            },
            Usage(10, 5, 15, 4, 2),
            "gpt-4o-mini",
        ),
        (  # chat, no details: nothing cached, no reasoning
            {
                "model": "m",
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            },
            Usage(3, 4, 7, 0, 0),
            "m",
        ),
        (  # the provider's own total is kept, even when it is not the sum (thinking tokens)
            {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 9}},
            Usage(3, 4, 9, 0, 0),
            None,
        ),
        (  # a total of 0 is no total: the sum
            {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 0}},
            Usage(3, 4, 7, 0, 0),
            None,
        ),
        (  # embeddings: no completion tokens at all
            {
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 8, "total_tokens": 8},
            },
            Usage(8, 0, 8, 0, 0),
            "text-embedding-3-small",
        ),
        (  # null details
            {
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": 4,
                    "total_tokens": 7,
                    "prompt_tokens_details": None,
                    "completion_tokens_details": None,
                }
            },
            Usage(3, 4, 7, 0, 0),
            None,
        ),
        (  # details without the counts we read
            {
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": 4,
                    "total_tokens": 7,
                    "prompt_tokens_details": {"audio_tokens": 1},
                    "completion_tokens_details": {"accepted_prediction_tokens": 1},
                }
            },
            Usage(3, 4, 7, 0, 0),
            None,
        ),
        (  # detail counts of the wrong type are 0
            {
                "usage": {
                    "prompt_tokens": 3,
                    "completion_tokens": 4,
                    "total_tokens": 7,
                    "prompt_tokens_details": {"cached_tokens": "4"},
                    "completion_tokens_details": {"reasoning_tokens": 2.5},
                }
            },
            Usage(3, 4, 7, 0, 0),
            None,
        ),
        (  # a count of the wrong type is 0, the others are kept
            {"usage": {"prompt_tokens": 3, "completion_tokens": 4.0, "total_tokens": 7}},
            Usage(3, 0, 7, 0, 0),
            None,
        ),
        (  # a total of the wrong type is the sum
            {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": "7"}},
            Usage(3, 4, 7, 0, 0),
            None,
        ),
        (  # a null total is the sum, and the details are still read
            {
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": None}
                | DETAILS
            },
            Usage(10, 5, 15, 4, 2),
            None,
        ),
        (  # the Responses API's names
            {
                "model": "gpt-5",
                "usage": {
                    "input_tokens": 3,
                    "input_tokens_details": {"cached_tokens": 1},
                    "output_tokens": 4,
                    "output_tokens_details": {"reasoning_tokens": 2},
                    "total_tokens": 9,
                },
            },
            Usage(3, 4, 9, 1, 2),
            "gpt-5",
        ),
        (  # the Responses API's names, no total and no details
            {"usage": {"input_tokens": 3, "output_tokens": 4}},
            Usage(3, 4, 7, 0, 0),
            None,
        ),
        (  # the Responses API's names, values of the wrong type (a bool is no count)
            {
                "usage": {
                    "input_tokens": "3",
                    "output_tokens": True,
                    "total_tokens": None,
                    "input_tokens_details": {"cached_tokens": False},
                    "output_tokens_details": {"reasoning_tokens": "2"},
                }
            },
            NO_USAGE,
            None,
        ),
        ({"model": 42, "usage": {"total_tokens": 1}}, Usage(0, 0, 1, 0, 0), None),  # not a name
        ({"model": "m"}, NO_USAGE, "m"),  # no usage
        ({"model": "m", "usage": [1, 2]}, NO_USAGE, "m"),
        ({"error": {"message": "bad"}}, NO_USAGE, None),  # an error envelope
        ("text", NO_USAGE, None),
        (None, NO_USAGE, None),
    ],
)
def test_read_usage_reads_the_tokens_and_model_of_a_body(
    body: object, usage: Usage, model: str | None
) -> None:
    assert read_usage(body) == (usage, model)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15} | DETAILS,
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 0},
        {"prompt_tokens": 8, "total_tokens": 8},  # embeddings
    ],
)
def test_read_usage_reads_the_chat_and_embeddings_shapes_without_a_detour(
    usage: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ingest reads 50,000 lines a batch: the common shapes never take the slow path."""

    def slow_path(usage: dict[str, object]) -> Usage:
        raise AssertionError(f"the slow path read {usage}")

    expected = read_usage({"usage": usage})
    monkeypatch.setattr(lines, "_other_usage", slow_path)
    assert read_usage({"usage": usage}) == expected
