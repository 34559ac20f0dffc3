"""What a provider says of its capacity: the enqueued-token limit in a ``token_limit_exceeded``
error, read from the message, since no field carries it.

OpenAI's message (and the emulator's, spec 5.4) reads::

    Enqueued token limit reached for gpt-4o in organization org-abc. Limit: 2,000,000 enqueued
    tokens. Please try again once some in_progress batches have been completed.

Providers word it differently (no organization, no thousands separators, "queue limit"), so the
model and the number are looked for separately, each by a pattern that tolerates those variants;
a message that names no number gives no limit, never a guess.
"""

from __future__ import annotations

import re
from typing import NamedTuple

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
