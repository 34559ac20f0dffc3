from __future__ import annotations

import pytest

from orchestrator.domain import lines as ln
from orchestrator.domain.lines import MalformedLine, classify, read_usage

OK = {
    "id": "batch_req_1",
    "custom_id": "a",
    "response": {
        "status_code": 200,
        "request_id": "r",
        "body": {
            "model": "gpt-4o-mini",
            "choices": [],
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 15,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
        },
    },
    "error": None,
}


def test_a_2xx_line_with_no_error_is_a_success_with_its_usage() -> None:
    o = classify(OK)
    assert o.succeeded and not o.retryable and o.status_code == 200 and o.error is None
    assert (o.usage.prompt_tokens, o.usage.completion_tokens, o.usage.total_tokens) == (10, 5, 15)
    assert (o.usage.cached_tokens, o.usage.reasoning_tokens) == (4, 2)
    assert o.model == "gpt-4o-mini"


def _http(status: int, message: str = "m") -> dict[str, object]:
    return {
        "custom_id": "a",
        "response": {
            "status_code": status,
            "body": {"error": {"message": message, "type": "t", "param": None, "code": None}},
        },
        "error": None,
    }


def _never_ran(code: str) -> dict[str, object]:
    return {"custom_id": "a", "response": None, "error": {"code": code, "message": "msg"}}


@pytest.mark.parametrize(
    ("line", "retryable"),
    [
        (_http(400), False),
        (_http(404), False),
        (_http(422), False),
        (_http(408), True),
        (_http(429), True),
        (_http(500), True),
        (_http(503), True),
        (_http(0), True),  # "status_code 0" seen in the wild
        (_never_ran("batch_expired"), True),
        (_never_ran("batch_cancelled"), True),
        (_never_ran("request_timeout"), True),
        (_never_ran("invalid_prompt"), False),
    ],
)
def test_failures_are_classified_retryable_or_final(
    line: dict[str, object], retryable: bool
) -> None:
    o = classify(line)
    assert not o.succeeded
    assert o.retryable is retryable
    assert o.error is not None and o.error["message"]


def test_the_providers_own_message_is_kept() -> None:
    o = classify(_http(400, "max_tokens is too large: 99999"))
    assert o.error == {
        "code": None,
        "message": "max_tokens is too large: 99999",
        "type": "t",
        "status_code": 400,
    }


def test_a_2xx_with_a_top_level_error_is_a_failure() -> None:
    line = dict(OK, error={"code": "server_error", "message": "x"})
    assert not classify(line).succeeded


@pytest.mark.parametrize("line", [[], "x", {"response": {}}, {"custom_id": ""}, {"custom_id": 3}])
def test_garbage_is_rejected(line: object) -> None:
    with pytest.raises(MalformedLine):
        classify(line)


def test_usage_of_responses_api_shape() -> None:
    usage, model = read_usage(
        {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, model) == (
        3,
        4,
        7,
        "m",
    )


def test_usage_total_is_derived_when_absent() -> None:
    usage, _ = read_usage({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert usage.total_tokens == 7


@pytest.mark.parametrize(
    ("counts", "covered", "malformed", "short"),
    [
        ({"completed": 4, "failed": 0}, 4, 0, False),  # all there
        ({"completed": 4, "failed": 0}, 0, 0, True),  # no file (output_file_id null) or 404
        ({"completed": 3, "failed": 1}, 1, 0, True),  # far fewer than counted
        ({"completed": 10, "failed": 0}, 8, 0, False),  # a few dropped by the provider (X8)
        ({"completed": 10, "failed": 0}, 8, 1, True),  # a cut line: the body ended early
        ({"completed": 0, "failed": 0}, 0, 0, False),  # nothing done (a cancelled batch)
        (None, 0, 0, False),  # no counts: nothing to compare with
        ({"completed": "x"}, 0, 0, False),
    ],
)
def test_short_read_compares_what_was_read_with_the_providers_counts(
    counts: dict[str, object] | None, covered: int, malformed: int, short: bool
) -> None:
    found = ln.short_read(counts, covered=covered, members=10, malformed=malformed)
    assert (found is not None) == short
    if short:
        assert f"lines for {covered} of the" in str(found)
