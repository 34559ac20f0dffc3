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


EXPIRED = "This request could not be executed before the completion window expired."
NO_MESSAGE = "the provider reported a failure without a message"


def _failed(
    custom_id: str,
    retryable: bool,
    status_code: int | None,
    body: object,
    error: dict[str, object],
    usage: ln.Usage = ln.NO_USAGE,
    model: str | None = None,
) -> ln.LineOutcome:
    return ln.LineOutcome(custom_id, False, retryable, status_code, body, error, usage, model)


_ENVELOPE_400 = {
    "error": {
        "message": "max_tokens is too large: 99999",
        "type": "invalid_request_error",
        "param": "max_tokens",
        "code": None,
    }
}


@pytest.mark.parametrize(
    ("line", "outcome"),
    [
        (  # spec 3.3: the plain success, its usage and model read
            OK,
            ln.LineOutcome(
                "a",
                True,
                False,
                200,
                OK["response"]["body"],  # type: ignore[index]
                None,
                ln.Usage(10, 5, 15, 4, 2),
                "gpt-4o-mini",
            ),
        ),
        (  # any 2xx is a success
            {"custom_id": "c", "response": {"status_code": 299, "body": None}, "error": None},
            ln.LineOutcome("c", True, False, 299, None, None, ln.NO_USAGE, None),
        ),
        (  # spec 3.4 (a): the provider's envelope is kept whole, with the HTTP status
            {"custom_id": "r5", "response": {"status_code": 400, "body": _ENVELOPE_400}},
            _failed(
                "r5",
                False,
                400,
                _ENVELOPE_400,
                {
                    "code": None,
                    "message": "max_tokens is too large: 99999",
                    "type": "invalid_request_error",
                    "param": "max_tokens",
                    "status_code": 400,
                },
            ),
        ),
        (  # a 3xx is no success, and not worth sending again
            {"custom_id": "d", "response": {"status_code": 300, "body": None}, "error": None},
            _failed(
                "d",
                False,
                300,
                None,
                {"code": None, "message": "the request failed with HTTP 300", "status_code": 300},
            ),
        ),
        (  # an error envelope with a code but no message: the status says what happened
            {"custom_id": "e", "response": {"status_code": 500, "body": {"error": {"code": "x"}}}},
            _failed(
                "e",
                True,
                500,
                {"error": {"code": "x"}},
                {"code": "x", "message": "the request failed with HTTP 500", "status_code": 500},
            ),
        ),
        (  # a body that is itself the error (no "error" key)
            {"custom_id": "f", "response": {"status_code": 503, "body": {"message": "overloaded"}}},
            _failed(
                "f",
                True,
                503,
                {"message": "overloaded"},
                {"code": None, "message": "overloaded", "status_code": 503},
            ),
        ),
        (  # a proxy's plain-text body is the message
            {"custom_id": "g", "response": {"status_code": 502, "body": "Bad gateway"}},
            _failed(
                "g",
                True,
                502,
                "Bad gateway",
                {"code": None, "message": "Bad gateway", "status_code": 502},
            ),
        ),
        (  # a body that says nothing readable
            {"custom_id": "h", "response": {"status_code": 422, "body": ["x"]}},
            _failed(
                "h",
                False,
                422,
                ["x"],
                {"code": None, "message": "the request failed with HTTP 422", "status_code": 422},
            ),
        ),
        (  # no status_code at all counts as 0 (seen in the wild): retryable
            {"custom_id": "i", "response": {"body": None}, "error": None},
            _failed(
                "i",
                True,
                0,
                None,
                {"code": None, "message": "the request failed with HTTP 0", "status_code": 0},
            ),
        ),
        (  # a status that is not a number is no status
            {"custom_id": "j", "response": {"status_code": "200", "body": None}},
            _failed(
                "j",
                True,
                0,
                None,
                {"code": None, "message": "the request failed with HTTP 0", "status_code": 0},
            ),
        ),
        (  # a 2xx with a top-level error: a failure, retryable by its code, its usage still read
            dict(OK, error={"code": "server_error", "message": "the model crashed"}),
            _failed(
                "a",
                True,
                200,
                OK["response"]["body"],  # type: ignore[index]
                {"code": "server_error", "message": "the model crashed", "status_code": 200},
                ln.Usage(10, 5, 15, 4, 2),
                "gpt-4o-mini",
            ),
        ),
        (  # a final 4xx made retryable by its code
            {
                "custom_id": "k",
                "response": {
                    "status_code": 400,
                    "body": {"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
                },
            },
            _failed(
                "k",
                True,
                400,
                {"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
                {"code": "rate_limit_exceeded", "message": "slow down", "status_code": 400},
            ),
        ),
        (  # spec 3.4 (b): never ran
            {
                "custom_id": "r3",
                "response": None,
                "error": {"code": "batch_expired", "message": EXPIRED},
            },
            _failed("r3", True, None, None, {"code": "batch_expired", "message": EXPIRED}),
        ),
        (  # never ran, final code, no message
            {"custom_id": "l", "response": None, "error": {"code": "invalid_prompt"}},
            _failed("l", False, None, None, {"code": "invalid_prompt", "message": NO_MESSAGE}),
        ),
        (  # never ran, the error a bare string
            {"custom_id": "m", "error": "upstream connection reset"},
            _failed("m", False, None, None, {"code": None, "message": "upstream connection reset"}),
        ),
        (  # neither a response nor an error
            {"custom_id": "n", "response": None, "error": None},
            _failed("n", False, None, None, {"code": None, "message": NO_MESSAGE}),
        ),
    ],
)
def test_classify_gives_the_exact_outcome_of_a_line(
    line: dict[str, object], outcome: ln.LineOutcome
) -> None:
    assert classify(line) == outcome


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        (0, True),  # seen in the wild
        (200, False),
        (399, False),
        (407, False),
        (408, True),
        (409, True),
        (410, False),
        (428, False),
        (429, True),
        (430, False),
        (499, False),
        (500, True),
        (599, True),
    ],
)
def test_status_retryable_is_408_409_429_5xx_and_0(status: int, retryable: bool) -> None:
    assert ln.status_retryable(status) is retryable


def test_missing_error_is_the_error_stored_for_a_request_without_a_line() -> None:
    assert ln.missing_error() == {
        "code": "missing_result",
        "message": "the provider returned no line for this request in the output or error file",
    }


@pytest.mark.parametrize(
    ("code", "stored"),
    [
        (None, "batch_failed"),
        ("", "batch_failed"),
        ("token_limit_exceeded", "token_limit_exceeded"),
    ],
)
def test_batch_error_is_the_error_stored_for_every_request_of_a_failed_batch(
    code: str | None, stored: str
) -> None:
    assert ln.batch_error("Enqueued token limit reached", code) == {
        "code": stored,
        "message": "Enqueued token limit reached",
    }


def test_batch_error_without_a_code_says_batch_failed() -> None:
    assert ln.batch_error("the provider failed the batch") == {
        "code": "batch_failed",
        "message": "the provider failed the batch",
    }


@pytest.mark.parametrize(
    ("counts", "members", "covered", "malformed", "why"),
    [
        (
            {"completed": 4, "failed": 0},
            10,
            0,
            0,
            "the result files hold lines for 0 of the 4 requests the provider counts as done",
        ),
        (  # failed requests count as done: their lines are in the error file
            {"completed": 0, "failed": 4},
            10,
            1,
            0,
            "the result files hold lines for 1 of the 4 requests the provider counts as done",
        ),
        (  # never more expected than the batch has requests
            {"completed": 20, "failed": 5},
            10,
            4,
            0,
            "the result files hold lines for 4 of the 10 requests the provider counts as done",
        ),
        (
            {"completed": 10, "failed": 0},
            10,
            8,
            2,
            "the result files hold lines for 8 of the 10 requests the provider counts as done"
            " and 2 unreadable line(s)",
        ),
        ({"completed": 10, "failed": 0}, 10, 10, 2, None),  # all there, whatever else was read
        ({"completed": 10, "failed": 0}, 10, 5, 0, None),  # exactly half: the provider's own loss
        (
            {"completed": 10, "failed": 0},
            10,
            4,
            0,
            "the result files hold lines for 4 of the 10 requests the provider counts as done",
        ),
        ({"completed": None, "failed": "3"}, 10, 3, 0, None),
    ],
)
def test_short_read_says_how_much_is_missing(
    counts: dict[str, object], members: int, covered: int, malformed: int, why: str | None
) -> None:
    assert ln.short_read(counts, covered=covered, members=members, malformed=malformed) == why


@pytest.mark.parametrize(
    ("line", "never_ran"),
    [
        (_never_ran("batch_expired"), True),  # the window closed first: no attempt used
        (_never_ran("batch_cancelled"), False),  # a cancel still uses one
        (_never_ran("request_timeout"), False),  # it ran, and timed out
        (_never_ran("invalid_prompt"), False),
        (  # it ran: a response, whatever its code says
            {
                "custom_id": "a",
                "response": {"status_code": 500, "body": {"error": {"code": "batch_expired"}}},
            },
            False,
        ),
        ({"custom_id": "a", "response": None, "error": None}, False),
        (OK, False),
    ],
)
def test_not_run_is_only_a_request_whose_window_closed_before_it_ran(
    line: dict[str, object], never_ran: bool
) -> None:
    assert ln.not_run(classify(line)) is never_ran
