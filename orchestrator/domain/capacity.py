"""Capacity: how many prompt tokens a request holds in a provider's queue (an estimate), whether
a batch may be created now (admission), and the enqueued-token limit a provider states in a
``token_limit_exceeded`` error, read from the message since no field carries it.

**The estimate.** A request's prompt tokens are its body's length in bytes over 4, rounded up
(about 4 bytes of English text per token; the JSON around the text counts too, so the estimate
leans high, which keeps what is in flight under the provider's own count). The same rule gives
the job's estimate before anything is sent (``queries.job_estimate``). Text that takes more bytes
than 4 per token (code, most non-Latin scripts) is underestimated; a provider's refusal then
lowers the learned budget by a tenth each time (``ledger.learn_limit``).

**Admission** (:func:`admit`). A batch is created only when its model's estimated tokens in
flight on the target, plus those of the batches ahead of it in line, plus its own, fit the
model's budget, and the target's batches in flight, plus those ahead, stay within its
``max_batches_in_flight``. The line orders the batches waiting to be created by the job's
``priority``, then by turn: the n-th waiting batch of a job (counting its batches already
created) comes before any job's (n+1)-th, so one large job cannot hold a small one behind all
of its chunks. A batch alone over the budget is split, never sent; a single request alone over
it is sent when nothing of its model is in flight or ahead (the provider then decides).

OpenAI's message (and the emulator's, spec 5.4) reads::

    Enqueued token limit reached for gpt-4o in organization org-abc. Limit: 2,000,000 enqueued
    tokens. Please try again once some in_progress batches have been completed.

Providers word it differently (no organization, no thousands separators, "queue limit"), so the
model and the number are looked for separately, each by a pattern that tolerates those variants;
a message that names no number gives no limit, never a guess.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal, NamedTuple

WAITING = "waiting_for_capacity"


def estimated_tokens(body_bytes: int) -> int:
    """A request's prompt tokens, estimated from its body's length in bytes (see above)."""
    return -(-body_bytes // 4)


class Budget(NamedTuple):
    """The enqueued-token budget in force for a model, and where it comes from."""

    tokens: int
    source: Literal["configured", "learned"]


def budget_in_force(configured: int | None, learned: int | None) -> Budget | None:
    """The lower of the configured budget and the learned limit (a learned limit lowers a
    configured budget, never raises it; equal, the configured one is in force); None when
    neither is known."""
    if learned is not None and (configured is None or learned < configured):
        return Budget(learned, "learned")
    return None if configured is None else Budget(configured, "configured")


@dataclasses.dataclass(frozen=True)
class Load:
    """What a target holds when a batch asks to be created: the model's estimated tokens and
    the target's batches in flight (created, not yet finished at the provider), and those of the
    batches ahead of it in line."""

    tokens_in_flight: int = 0
    tokens_ahead: int = 0
    batches_in_flight: int = 0
    batches_ahead: int = 0


@dataclasses.dataclass(frozen=True)
class Admit:
    pass


@dataclasses.dataclass(frozen=True)
class Wait:
    reason: str


@dataclasses.dataclass(frozen=True)
class Split:
    """The batch alone is over the budget: cut it into parts of at most ``max_tokens``."""

    max_tokens: int


Admission = Admit | Wait | Split


def admit(
    *,
    model: str | None,
    tokens: int,
    requests: int,
    load: Load,
    budget: int | None,
    max_batches: int | None,
) -> Admission:
    """May a batch of ``requests`` requests and ``tokens`` estimated tokens be created now?"""
    if budget is not None and tokens > budget and requests > 1:
        return Split(budget)
    if max_batches is not None and load.batches_in_flight + load.batches_ahead + 1 > max_batches:
        return Wait(
            f"{WAITING}: {load.batches_in_flight} batch(es) in flight and {load.batches_ahead} "
            f"ahead in line; the target's max_batches_in_flight is {max_batches}"
        )
    if budget is not None:
        held = load.tokens_in_flight + load.tokens_ahead
        if held + tokens > budget and held > 0:
            return Wait(
                f"{WAITING}: {model or 'the model'} needs ~{tokens:,} enqueued tokens; "
                f"{load.tokens_in_flight:,} are in flight and {load.tokens_ahead:,} ahead in "
                f"line, of a budget of {budget:,}"
            )
    return Admit()


# the model: up to a space, or a period or comma that ends a sentence ("gpt-4.1-nano." ends at
# the last period, not the first)
_MODEL = re.compile(
    r"\blimit\s+reached\s+for\s+(?:model\s+)?['\"`]?([\w.:/@-]+?)['\"`]?(?=\s|[.,](?:\s|$)|$)",
    re.IGNORECASE,
)
_LIMIT = re.compile(r"\blimit:\s*([\d][\d,_ ]*\d|\d)\s*(?:enqueued\s+)?tokens?\b", re.IGNORECASE)


class EnqueuedLimit(NamedTuple):
    """The limit a provider reported: for ``model`` (None when the message does not say), at
    most ``tokens`` enqueued prompt tokens at once."""

    model: str | None
    tokens: int


def enqueued_limit(message: str | None) -> EnqueuedLimit | None:
    """The limit a ``token_limit_exceeded`` message states, or None if it states none."""
    if not message:
        return None
    found = _LIMIT.search(message)
    if found is None:
        return None
    tokens = int(re.sub(r"[,_ ]", "", found.group(1)))
    if tokens < 1:
        return None
    model = _MODEL.search(message)
    return EnqueuedLimit(model.group(1) if model else None, tokens)
