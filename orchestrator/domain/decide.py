"""Classify, then act: what to do about a failed call to the Batch API.

The API client turns each failure into an :class:`ErrorKind` (``api/errors.py``); this module turns
``(kind, step, how often it failed)`` into one :data:`Decision`, which the runner applies with one
fenced write. Nothing here sleeps, reads the clock or touches the database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import random

from orchestrator.domain.backoff import RetrySchedule


class ErrorKind(enum.StrEnum):
    TRANSIENT = "transient"  # 5xx, 408, 409, timeouts, dropped connections, truncated downloads
    RATE_LIMITED = "rate_limited"  # 429
    ACCOUNT = (
        "account"  # 401, 402, 403, a redirect loop: the key, account or address, not the request
    )
    TOO_LARGE = "too_large"  # 413
    NOT_FOUND = "not_found"  # 404
    INVALID = "invalid"  # any other 4xx


class Step(enum.StrEnum):
    UPLOAD = "upload"
    CREATE = "create"
    POLL = "poll"
    INGEST = "ingest"
    CANCEL = "cancel"
    RECONCILE = "reconcile"


@dataclasses.dataclass(frozen=True)
class Retry:
    """Try the same step again at ``at``."""

    at: dt.datetime
    reason: str


@dataclasses.dataclass(frozen=True)
class Throttle:
    """The target asked us to slow down: nobody calls it before ``until``."""

    until: dt.datetime


@dataclasses.dataclass(frozen=True)
class PauseTarget:
    """The key or account does not work: the target's jobs wait (they do not fail) until a probe
    at ``until`` finds it working again."""

    until: dt.datetime
    reason: str


@dataclasses.dataclass(frozen=True)
class Split:
    """The file is too large for the target: split the chunk in two and retry both halves."""


@dataclasses.dataclass(frozen=True)
class Reupload:
    """The provider lost (or never had) our input file: upload it again."""


@dataclasses.dataclass(frozen=True)
class Fail:
    """Give up on this batch with the provider's own message."""

    message: str
    code: str | None = None


# The code of a batch given up after its patience ran out (see ``Policy.patience_seconds``).
PATIENCE_EXHAUSTED = "patience_exhausted"


Decision = Retry | Throttle | PauseTarget | Split | Reupload | Fail

# A file is sometimes "not found" for a few seconds right after upload (spec X6): retry the create
# this many times before uploading again.
CREATE_NOT_FOUND_RETRIES = 4
# A batch or file that stays "not found" this many polls in a row is gone (spec X13).
GONE_AFTER = 6


@dataclasses.dataclass(frozen=True)
class Policy:
    retry: RetrySchedule
    pause_seconds: float
    default_throttle_seconds: float = 30.0
    # Passing failures (5xx, timeouts, a download that is "not found" or short) are retried on
    # the backoff schedule until the batch has been failing this long; then it is given up.
    patience_seconds: float = 72 * 3600.0


def decide(
    kind: ErrorKind,
    *,
    step: Step,
    failures: int,
    message: str,
    retry_after: float | None,
    now: dt.datetime,
    policy: Policy,
    rng: random.Random,
    since: dt.datetime | None = None,
) -> Decision:
    """``failures`` counts this failure: 1 on the first one of the step. ``since``: when the
    batch's current run of failures began (None: with this one).

    Rate limits and account errors never give up (the target waits, for everyone, until the
    provider or the operator fixes it); passing failures give up once ``since`` is further back
    than the policy's patience."""
    if kind is ErrorKind.RATE_LIMITED:
        wait = retry_after if retry_after is not None else policy.retry.delay(failures, rng)
        return Throttle(until=now + dt.timedelta(seconds=max(wait, 0.0)))
    if kind is ErrorKind.ACCOUNT:
        return PauseTarget(until=now + dt.timedelta(seconds=policy.pause_seconds), reason=message)
    if kind is ErrorKind.TRANSIENT or (kind is ErrorKind.NOT_FOUND and step is Step.INGEST):
        # An output file "not found" for a while after completion is seen in the wild: it is
        # as passing as a 5xx, and giving up would abandon results that exist.
        return _patiently(now, policy, failures, rng, message, since)
    if kind is ErrorKind.INVALID and step in _READS_OF_A_LIVE_BATCH:
        # A 400 to a status call, a download or a list is no verdict on our requests (they were
        # accepted): the provider failed to answer. Giving the batch up at once would abandon what
        # it produces (found by the lifecycle model); within the patience, it is asked again.
        return _patiently(now, policy, failures, rng, message, since)
    if step is Step.UPLOAD and (kind is ErrorKind.TOO_LARGE or _is_file_too_large(kind, message)):
        return Split()
    if kind is ErrorKind.NOT_FOUND or _is_file_not_ready(kind, step, message):
        return _not_found(step, failures, now, policy, rng, message)
    return Fail(message)


def _patiently(
    now: dt.datetime,
    policy: Policy,
    failures: int,
    rng: random.Random,
    message: str,
    since: dt.datetime | None,
) -> Decision:
    if patience_spent(now, since, policy):
        return Fail(gave_up(now, since, message), code=PATIENCE_EXHAUSTED)
    return _retry(now, policy, failures, rng, message)


def patience_spent(now: dt.datetime, since: dt.datetime | None, policy: Policy) -> bool:
    """Whether a run of failures that began ``since`` (None: with this one) has lasted the
    policy's patience."""
    start = now if since is None else since
    return (now - start).total_seconds() >= policy.patience_seconds


def gave_up(now: dt.datetime, since: dt.datetime | None, message: str) -> str:
    """Why a batch is given up after its patience, ``message`` being the last failure."""
    start = now if since is None else since
    age = (now - start).total_seconds()
    return (
        f"gave up after {duration(age)} of failures (since {start:%Y-%m-%d %H:%M:%S} UTC); "
        f"the last one: {message}"
    )


# The steps that only read a batch the provider accepted: its status, its files, the list.
_READS_OF_A_LIVE_BATCH = frozenset({Step.POLL, Step.INGEST, Step.RECONCILE})


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``7m 30s``, ``12s``: a length of time for people."""
    s = int(max(seconds, 0.0))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def _retry(
    now: dt.datetime, policy: Policy, failures: int, rng: random.Random, reason: str
) -> Retry:
    delay = policy.retry.delay(failures, rng)
    return Retry(at=now + dt.timedelta(seconds=delay), reason=reason)


def _is_file_too_large(kind: ErrorKind, message: str) -> bool:
    # OpenAI answers an upload over its size limit with 400 "File is too large." (spec X7), where
    # the spec says 413: the same refusal, split the same way (found by the lifecycle model).
    return kind is ErrorKind.INVALID and "file is too large" in message.lower()


def _is_file_not_ready(kind: ErrorKind, step: Step, message: str) -> bool:
    # OpenAI answers a create on a just-uploaded file with 400 "Cannot find file ..." (spec X6).
    return (
        kind is ErrorKind.INVALID and step is Step.CREATE and "cannot find file" in message.lower()
    )


def _not_found(
    step: Step, failures: int, now: dt.datetime, policy: Policy, rng: random.Random, message: str
) -> Decision:
    if step is Step.CREATE:
        if failures <= CREATE_NOT_FOUND_RETRIES:
            return _retry(now, policy, failures, rng, message)
        return Reupload()
    if step in (Step.POLL, Step.CANCEL, Step.RECONCILE) and failures < GONE_AFTER:
        return _retry(now, policy, failures, rng, message)
    return Fail(message)
