"""The enqueued-token budget per model (spec §5.4): past it, a batch fails token_limit_exceeded."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from orchestrator.emulator.lines import estimate_tokens

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]

MESSAGE = re.compile(
    r"Enqueued token limit reached for (?P<model>\S+) in organization org-[0-9a-f]+\. "
    r"Limit: (?P<limit>[\d,]+) enqueued tokens\. "
    r"Please try again once some in_progress batches have been completed\."
)


def lines_for(count: int, prefix: str, model: str = "openai/gpt-4o-mini") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "provider": "openai",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"Hello {i}"}]},
        }
        for i in range(count)
    ]


def tokens_of(lines: list[dict[str, Any]]) -> int:
    """The emulator's estimate of the prompt tokens, as its usage reports them too."""
    return sum(estimate_tokens(line["body"]["messages"]) for line in lines)


def test_a_batch_past_the_budget_fails_after_validating(make_api: MakeApi) -> None:
    # Given one batch holding most of the budget while it runs
    first = lines_for(20, "a")
    limit = tokens_of(first) + tokens_of(first[:5])
    api = make_api(rows_per_second=1, enqueued_token_limit=limit)
    running = api.submit(api.jsonl(first))

    # When a second batch of 10 lines (more than what is left) is created
    second = api.submit(api.jsonl(lines_for(10, "b")))
    validating = api.get(second["id"])
    api.clock.advance(5)
    failed = api.get(second["id"])

    # Then it fails when validation ends, with OpenAI's error and message
    assert validating["status"] == "validating"
    assert (failed["status"], failed["failed_at"]) == ("failed", second["created_at"] + 5)
    (error,) = failed["errors"]["data"]
    assert (error["code"], error["line"], error["param"]) == ("token_limit_exceeded", None, None)
    match = MESSAGE.fullmatch(error["message"])
    assert match is not None, error["message"]
    assert match["model"] == "openai/gpt-4o-mini"
    assert match["limit"] == f"{limit:,}"
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert api.get(running["id"])["status"] == "in_progress"
    assert api.emulator.ledger.batches[1].problems == ("token_limit_exceeded",)


def test_budget_frees_up_once_the_running_batch_finishes(make_api: MakeApi) -> None:
    big = lines_for(30, "a")
    api = make_api(rows_per_second=1, enqueued_token_limit=tokens_of(big))
    first = api.submit(api.jsonl(big))
    refused = api.submit(api.jsonl(big[:1]))

    api.finish(first["id"])
    accepted = api.submit(api.jsonl(big[:1]))

    assert api.finish(refused["id"])["status"] == "failed"
    assert api.finish(accepted["id"])["status"] == "completed"


def test_the_budget_is_per_model(make_api: MakeApi) -> None:
    first = lines_for(10, "a")
    api = make_api(enqueued_token_limit=tokens_of(first))
    api.submit(api.jsonl(first))

    other_model = api.submit(api.jsonl(lines_for(10, "b", model="openai/gpt-4.1-nano")))
    same_model = api.submit(api.jsonl(lines_for(1, "c")))

    assert api.finish(other_model["id"])["status"] == "completed"
    failed = api.finish(same_model["id"])
    assert failed["errors"]["data"][0]["code"] == "token_limit_exceeded"


def test_a_batch_alone_can_exceed_the_budget(make_api: MakeApi) -> None:
    api = make_api(mode="openai", enqueued_token_limit=5)

    lines = lines_for(3, "a", model="gpt-4o-mini")
    failed = api.finish(api.submit(api.jsonl(lines))["id"])

    message = failed["errors"]["data"][0]["message"]
    assert message.startswith("Enqueued token limit reached for gpt-4o-mini in organization org-")
    assert "Limit: 5 enqueued tokens." in message


@pytest.mark.parametrize("status", ["failed", "cancelled", "completed"])
def test_batches_no_longer_enqueued_do_not_count(make_api: MakeApi, status: str) -> None:
    lines = lines_for(4, "a")
    api = make_api(mode="openai", enqueued_token_limit=tokens_of(lines))
    if status == "failed":
        invalid = [*lines[:3], {**lines[3], "method": "GET"}]
        first = api.submit(api.jsonl(invalid))
    else:
        first = api.submit(api.jsonl(lines))
        if status == "cancelled":
            api.http.post(f"/batches/{first['id']}/cancel")
    assert api.finish(first["id"])["status"] == status

    second = api.finish(api.submit(api.jsonl(lines))["id"])

    assert second["status"] == "completed"


def test_usage_reports_the_same_prompt_tokens_the_budget_counted(make_api: MakeApi) -> None:
    lines = lines_for(7, "a")
    api = make_api(enqueued_token_limit=tokens_of(lines))

    done = api.finish(api.submit(api.jsonl(lines))["id"])

    assert done["usage"]["input_tokens"] == tokens_of(lines)


def test_without_a_limit_nothing_is_refused(make_api: MakeApi) -> None:
    api = make_api()
    lines = lines_for(50, "a")
    batches = [api.submit(api.jsonl(lines))["id"] for _ in range(3)]

    assert {api.finish(batch_id)["status"] for batch_id in batches} == {"completed"}


def test_the_ledger_keeps_each_creates_tokens_and_what_was_enqueued_with_it(
    make_api: MakeApi,
) -> None:
    # Given a budget of 50 tokens more than a first batch
    first, second, third = lines_for(20, "a"), lines_for(10, "b"), lines_for(2, "c")
    limit = tokens_of(first) + 50
    api = make_api(rows_per_second=1, enqueued_token_limit=limit)
    # When three batches are created while the first runs (the third fits, the second does not)
    api.submit(api.jsonl(first))
    api.submit(api.jsonl(second))
    api.submit(api.jsonl(third))
    # Then each entry has its own tokens and the model's enqueued total with it, by hand
    model = "openai/gpt-4o-mini"
    entries = api.emulator.ledger.batches
    assert [e.prompt_tokens for e in entries] == [
        {model: tokens_of(first)},
        {model: tokens_of(second)},
        {model: tokens_of(third)},
    ]
    assert [e.enqueued_tokens for e in entries] == [
        {model: tokens_of(first)},
        {model: tokens_of(first) + tokens_of(second)},  # over the limit: refused
        {model: tokens_of(first) + tokens_of(third)},  # the refused one holds nothing
    ]
    assert [e.problems for e in entries] == [(), ("token_limit_exceeded",), ()]
    assert tokens_of(third) <= 50 < tokens_of(second)


def test_a_refusal_can_name_no_limit(make_api: MakeApi) -> None:
    big = lines_for(30, "a")
    api = make_api(
        rows_per_second=1, enqueued_token_limit=tokens_of(big), token_limit_states_limit=False
    )
    api.submit(api.jsonl(big))
    refused = api.finish(api.submit(api.jsonl(big[:1]))["id"])
    (error,) = refused["errors"]["data"]
    assert error["code"] == "token_limit_exceeded"
    assert MESSAGE.fullmatch(error["message"]) is None
    assert "Limit:" not in error["message"]
