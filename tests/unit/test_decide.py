from __future__ import annotations

import datetime as dt
import random

import pytest

from orchestrator.domain import decide as dc
from orchestrator.domain.backoff import RetrySchedule
from orchestrator.domain.decide import ErrorKind, Step

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
POLICY = dc.Policy(retry=RetrySchedule(base=2, maximum=60), pause_seconds=120)


def _decide(
    kind: ErrorKind,
    step: Step = Step.POLL,
    failures: int = 1,
    retry_after: float | None = None,
    message: str = "m",
) -> dc.Decision:
    return dc.decide(
        kind,
        step=step,
        failures=failures,
        message=message,
        retry_after=retry_after,
        now=NOW,
        policy=POLICY,
        rng=random.Random(1),
    )


def test_429_waits_exactly_what_the_provider_asked() -> None:
    assert _decide(ErrorKind.RATE_LIMITED, retry_after=30) == dc.Throttle(
        until=NOW + dt.timedelta(seconds=30)
    )


def test_429_without_retry_after_backs_off() -> None:
    decision = _decide(ErrorKind.RATE_LIMITED, failures=3)
    assert isinstance(decision, dc.Throttle)
    assert NOW + dt.timedelta(seconds=4) <= decision.until <= NOW + dt.timedelta(seconds=8)


@pytest.mark.parametrize("step", list(Step))
def test_transient_errors_are_retried_with_backoff(step: Step) -> None:
    decision = _decide(ErrorKind.TRANSIENT, step=step, failures=2)
    assert isinstance(decision, dc.Retry)
    assert NOW + dt.timedelta(seconds=2) <= decision.at <= NOW + dt.timedelta(seconds=4)


def test_bad_credentials_pause_the_target_instead_of_failing() -> None:
    decision = _decide(ErrorKind.ACCOUNT, message="invalid key")
    assert decision == dc.PauseTarget(until=NOW + dt.timedelta(seconds=120), reason="invalid key")


def test_too_large_at_upload_splits() -> None:
    assert _decide(ErrorKind.TOO_LARGE, step=Step.UPLOAD) == dc.Split()


@pytest.mark.parametrize(
    "message", ["File is too large.", "HTTP 400: file is TOO LARGE (max 200MB)"]
)
def test_openais_400_file_too_large_at_upload_splits_like_a_413(message: str) -> None:
    # OpenAI answers 400 "File is too large." where the spec says 413 (spec X7)
    assert _decide(ErrorKind.INVALID, step=Step.UPLOAD, message=message) == dc.Split()
    # and the same words at another step are the provider's refusal
    assert _decide(ErrorKind.INVALID, step=Step.CREATE, message=message) == dc.Fail(message)


def test_file_not_found_right_after_upload_is_retried_then_reuploaded() -> None:
    for failures in range(1, dc.CREATE_NOT_FOUND_RETRIES + 1):
        assert isinstance(
            _decide(ErrorKind.NOT_FOUND, step=Step.CREATE, failures=failures), dc.Retry
        )
    assert (
        _decide(ErrorKind.NOT_FOUND, step=Step.CREATE, failures=dc.CREATE_NOT_FOUND_RETRIES + 1)
        == dc.Reupload()
    )


def test_openai_cannot_find_file_400_counts_as_not_ready() -> None:
    decision = _decide(
        ErrorKind.INVALID,
        step=Step.CREATE,
        message="Cannot find file file-abc, or project does not have access to it.",
    )
    assert isinstance(decision, dc.Retry)


def test_a_batch_that_stays_gone_fails() -> None:
    assert isinstance(_decide(ErrorKind.NOT_FOUND, failures=2), dc.Retry)
    assert _decide(ErrorKind.NOT_FOUND, failures=dc.GONE_AFTER, message="gone") == dc.Fail("gone")


def test_other_client_errors_fail_with_the_providers_message() -> None:
    assert _decide(ErrorKind.INVALID, step=Step.CREATE, message="bad endpoint") == dc.Fail(
        "bad endpoint"
    )


def _since(seconds: float, kind: ErrorKind, step: Step = Step.POLL) -> dc.Decision:
    return dc.decide(
        kind,
        step=step,
        failures=50,
        message="HTTP 503: down",
        retry_after=None,
        now=NOW,
        policy=dc.Policy(
            retry=RetrySchedule(base=2, maximum=60), pause_seconds=120, patience_seconds=3600
        ),
        rng=random.Random(1),
        since=NOW - dt.timedelta(seconds=seconds),
    )


@pytest.mark.parametrize(
    ("kind", "step"), [(ErrorKind.TRANSIENT, Step.POLL), (ErrorKind.NOT_FOUND, Step.INGEST)]
)
def test_passing_failures_are_retried_within_the_patience_then_given_up_saying_why(
    kind: ErrorKind, step: Step
) -> None:
    assert isinstance(_since(3599, kind, step), dc.Retry)
    decision = _since(3600 + 125, kind, step)
    assert decision == dc.Fail(
        "gave up after 1h 2m of failures (since 2025-12-31 22:57:55 UTC); "
        "the last one: HTTP 503: down",
        code=dc.PATIENCE_EXHAUSTED,
    )


def test_rate_limits_and_bad_keys_never_run_out_of_patience() -> None:
    assert isinstance(_since(10**7, ErrorKind.RATE_LIMITED), dc.Throttle)
    assert isinstance(_since(10**7, ErrorKind.ACCOUNT), dc.PauseTarget)


def test_an_output_file_not_found_is_not_gone_after_a_few_tries() -> None:
    decision = _decide(ErrorKind.NOT_FOUND, step=Step.INGEST, failures=dc.GONE_AFTER * 10)
    assert isinstance(decision, dc.Retry)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (90, "1m 30s"), (3600, "1h 0m"), (7260, "2h 1m"), (90000, "1d 1h")],
)
def test_durations_read_as_people_say_them(seconds: float, shown: str) -> None:
    assert dc.duration(seconds) == shown


@pytest.mark.parametrize("retry_after", [0, -5])
def test_429_with_a_retry_after_of_zero_or_less_throttles_until_now_not_later(
    retry_after: float,
) -> None:
    assert _decide(ErrorKind.RATE_LIMITED, retry_after=retry_after) == dc.Throttle(until=NOW)


@pytest.mark.parametrize(
    ("kind", "step", "message"),
    [
        # only an upload can be split: a 413 elsewhere is the provider's refusal
        (ErrorKind.TOO_LARGE, Step.CREATE, "HTTP 413: too large"),
        (ErrorKind.TOO_LARGE, Step.POLL, "HTTP 413: too large"),
        # and only a 413 splits an upload
        (ErrorKind.INVALID, Step.UPLOAD, "HTTP 400: bad file"),
        (ErrorKind.NOT_FOUND, Step.UPLOAD, "HTTP 404: not found"),
        # "cannot find file" means "not ready yet" only at the create
        (ErrorKind.INVALID, Step.UPLOAD, "Cannot find file file-abc"),
        (ErrorKind.INVALID, Step.CANCEL, "Cannot find file file-abc"),
    ],
)
def test_decide_fails_other_refusals_with_the_providers_message(
    kind: ErrorKind, step: Step, message: str
) -> None:
    assert _decide(kind, step=step, message=message) == dc.Fail(message)


@pytest.mark.parametrize(
    ("kind", "step", "failures"),
    [
        (ErrorKind.TRANSIENT, Step.UPLOAD, 1),
        (ErrorKind.NOT_FOUND, Step.INGEST, 30),
        (ErrorKind.NOT_FOUND, Step.CREATE, dc.CREATE_NOT_FOUND_RETRIES),
        (ErrorKind.NOT_FOUND, Step.POLL, dc.GONE_AFTER - 1),
        (ErrorKind.NOT_FOUND, Step.CANCEL, 1),
        (ErrorKind.NOT_FOUND, Step.RECONCILE, 1),
    ],
)
def test_a_retry_says_which_failure_it_retries(kind: ErrorKind, step: Step, failures: int) -> None:
    decision = _decide(kind, step=step, failures=failures, message="HTTP 404: no such batch")
    assert isinstance(decision, dc.Retry)
    assert decision.reason == "HTTP 404: no such batch"


def test_a_passing_failure_is_given_up_once_exactly_the_patience_has_passed() -> None:
    assert _since(3600, ErrorKind.TRANSIENT) == dc.Fail(
        "gave up after 1h 0m of failures (since 2025-12-31 23:00:00 UTC); "
        "the last one: HTTP 503: down",
        code=dc.PATIENCE_EXHAUSTED,
    )


def test_with_no_patience_the_first_passing_failure_is_given_up_at_once() -> None:
    # patience_seconds = 0 is a valid setting; the first failure of a run has no ``since`` yet
    decision = dc.decide(
        ErrorKind.TRANSIENT,
        step=Step.POLL,
        failures=1,
        message="HTTP 503: down",
        retry_after=None,
        now=NOW,
        policy=dc.Policy(retry=RetrySchedule(), pause_seconds=120, patience_seconds=0),
        rng=random.Random(1),
    )
    assert decision == dc.Fail(
        "gave up after 0s of failures (since 2026-01-01 00:00:00 UTC); "
        "the last one: HTTP 503: down",
        code=dc.PATIENCE_EXHAUSTED,
    )


@pytest.mark.parametrize("step", [Step.POLL, Step.INGEST, Step.RECONCILE])
def test_a_400_to_a_read_of_an_accepted_batch_is_asked_again_within_the_patience(
    step: Step,
) -> None:
    # a status call, a download or a list answered 400: no verdict on the requests, which the
    # provider accepted; giving up at once would abandon what it produces
    decision = _decide(ErrorKind.INVALID, step=step, message="HTTP 400: bad request")
    assert isinstance(decision, dc.Retry) and decision.reason == "HTTP 400: bad request"
    assert _since(3600, ErrorKind.INVALID, step=step) == dc.Fail(
        "gave up after 1h 0m of failures (since 2025-12-31 23:00:00 UTC); "
        "the last one: HTTP 503: down",
        code=dc.PATIENCE_EXHAUSTED,
    )
