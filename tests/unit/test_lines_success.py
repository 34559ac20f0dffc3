"""``lines.success``, the ingest fast path: it takes only plain successes, and says of them exactly
what the full ``classify`` says."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.lines import NO_USAGE, MalformedLine, Usage, classify, success

BODY = {
    "model": "gpt-4o-mini",
    "choices": [],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}


def _line(status: Any = 200, body: Any = BODY, **kw: Any) -> dict[str, Any]:
    line = {"custom_id": "q1", "response": {"status_code": status, "body": body}, "error": None}
    line.update(kw)
    return line


@pytest.mark.parametrize(
    ("line", "taken"),
    [
        (_line(), ("q1", 200, BODY, Usage(10, 5, 15, 0, 0), "gpt-4o-mini")),
        (_line(201), ("q1", 201, BODY, Usage(10, 5, 15, 0, 0), "gpt-4o-mini")),
        (_line(299, None), ("q1", 299, None, NO_USAGE, None)),
        (_line(error={}), ("q1", 200, BODY, Usage(10, 5, 15, 0, 0), "gpt-4o-mini")),
        (_line(error=""), ("q1", 200, BODY, Usage(10, 5, 15, 0, 0), "gpt-4o-mini")),
        (
            {"custom_id": "q2", "response": {"status_code": 200, "body": BODY}},  # no "error"
            ("q2", 200, BODY, Usage(10, 5, 15, 0, 0), "gpt-4o-mini"),
        ),
    ],
)
def test_success_takes_a_plain_success_with_its_usage_and_model(
    line: dict[str, Any], taken: tuple[Any, ...]
) -> None:
    assert success(line) == taken


@pytest.mark.parametrize(
    "line",
    [
        [],  # not an object
        "q1",
        None,
        _line(error={"code": "server_error", "message": "x"}),  # a 2xx with an error
        _line(error="boom"),
        _line(custom_id=None),  # no usable custom_id
        _line(custom_id=""),
        _line(custom_id=7),
        {"response": {"status_code": 200, "body": BODY}, "error": None},
        _line(response=None),  # never ran
        _line(response=[200]),
        _line(response={"body": BODY}),  # no status
        _line("200"),
        _line(200.0),
        _line(True),
        _line(199),  # not a 2xx
        _line(300),
        _line(0),
        _line(429),
        _line(500),
    ],
)
def test_success_leaves_anything_else_to_classify(line: Any) -> None:
    assert success(line) is None


_COUNT = st.one_of(
    st.integers(min_value=0, max_value=10**7), st.sampled_from([None, True, False, "5", 2.5])
)
_DETAILS = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={"cached_tokens": _COUNT, "reasoning_tokens": _COUNT}),
)
_USAGE = st.one_of(
    st.none(),
    st.just([1]),
    st.fixed_dictionaries(
        {},
        optional={
            "prompt_tokens": _COUNT,
            "completion_tokens": _COUNT,
            "total_tokens": _COUNT,
            "input_tokens": _COUNT,
            "output_tokens": _COUNT,
            "prompt_tokens_details": _DETAILS,
            "completion_tokens_details": _DETAILS,
            "input_tokens_details": _DETAILS,
            "output_tokens_details": _DETAILS,
        },
    ),
)
_BODY = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.one_of(st.none(), st.text(max_size=5), st.integers()),
            "usage": _USAGE,
            "error": st.one_of(st.none(), st.just({"message": "m", "code": "c"})),
        },
    ),
)
_STATUS = st.one_of(
    st.integers(min_value=-1, max_value=700),
    st.sampled_from([199, 200, 299, 300, None, True, "200", 200.0]),
)
_RESPONSE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.just([]),
    st.fixed_dictionaries({}, optional={"status_code": _STATUS, "body": _BODY}),
)
_ERROR = st.sampled_from(
    [None, {}, "", "boom", 0, False, {"code": "batch_expired", "message": "late"}]
)
_LINE = st.one_of(
    st.sampled_from([None, [], "x", 3]),
    st.fixed_dictionaries(
        {},
        optional={
            "custom_id": st.one_of(st.text(max_size=4), st.none(), st.integers()),
            "response": _RESPONSE,
            "error": _ERROR,
        },
    ),
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(line=_LINE)
def test_success_agrees_with_classify_on_every_line(line: Any) -> None:
    taken = success(line)
    try:
        outcome = classify(line)
    except MalformedLine:
        assert taken is None
        return
    assert all(type(count) is int for count in outcome.usage)  # integer columns: never a float
    if outcome.succeeded:
        assert taken == (
            outcome.custom_id,
            outcome.status_code,
            outcome.body,
            outcome.usage,
            outcome.model,
        )
    else:
        assert taken is None
