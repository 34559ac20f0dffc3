"""Gemini-only batch faults: a marking fault on ``create_batch``, like the core's BatchFault.

Reported in the wild (reference §10): jobs that stay PENDING for hours, every job expiring for days,
SUCCEEDED while the responses file is not visible yet, rows whose response is null, SUCCEEDED with
every row failed INVALID_ARGUMENT. The core's own faults (HTTP statuses, lost answers, truncated
downloads, per-line 429/500, missing and duplicated lines, ...) apply to gemini mode unchanged.

Rows are picked by a hash of (seed, the create call's number, row), so a run replays exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from orchestrator.emulator.faults import register_fault_kind
from orchestrator.emulator.ids import unit_float
from orchestrator.emulator.messages import EmuResponse
from orchestrator.emulator.routes import CREATE_BATCH

FOREVER = "forever"


@dataclasses.dataclass(frozen=True)
class GeminiBatchFault:
    """How a marked Gemini batch misbehaves (virtual seconds; rates are shares of rows)."""

    kind: ClassVar[str] = "gemini"
    marks_route: ClassVar[str] = CREATE_BATCH

    # Extra seconds in PENDING before it starts running ('forever': until it expires).
    pending_seconds: float = 0.0
    # Stays PENDING until its window closes: EXPIRED with no results (a rule with times=None
    # expires every batch, as in python-genai #2439).
    expire: bool = False
    # Seconds after SUCCEEDED during which its results cannot be seen: the responses file 404s
    # (GET and download) and an inline batch's Operation has no output yet.
    hide_responses: float = 0.0
    # Share of rows whose result has "response": null (langchain4j #4423).
    null_responses: float = 0.0
    # Share of rows failing with code 3 INVALID_ARGUMENT; 1.0: every row, and the batch still
    # SUCCEEDS (python-genai #2693).
    invalid_rows: float = 0.0

    def __post_init__(self) -> None:
        for name in ("pending_seconds", "hide_responses"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 seconds (or 'forever')")
        for name in ("null_responses", "invalid_rows"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if all(getattr(self, f.name) == f.default for f in dataclasses.fields(self)):
            raise ValueError("a gemini fault needs at least one option")

    def apply(self, _ctx: object, proceed: Callable[[], EmuResponse]) -> EmuResponse:
        # Marks act when the batch is created (FaultInjector.take_marks), not on the response.
        return proceed()

    def hits(self, seed: int, create_number: int, row: int, what: str) -> bool:
        """Whether ``what`` ("null_responses" or "invalid_rows") hits this row."""
        rate: float = getattr(self, what)
        return rate > 0 and unit_float(seed, "gemini", what, create_number, row) < rate

    def merge(self, other: GeminiBatchFault) -> GeminiBatchFault:
        """Two rules firing on one batch: flags add up, numbers take the larger."""
        return GeminiBatchFault(
            pending_seconds=max(self.pending_seconds, other.pending_seconds),
            expire=self.expire or other.expire,
            hide_responses=max(self.hide_responses, other.hide_responses),
            null_responses=max(self.null_responses, other.null_responses),
            invalid_rows=max(self.invalid_rows, other.invalid_rows),
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default:
                data[field.name] = FOREVER if value == math.inf else value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GeminiBatchFault:
        return cls(
            pending_seconds=_seconds(data.get("pending_seconds", 0.0)),
            expire=_flag(data.get("expire", False)),
            hide_responses=_seconds(data.get("hide_responses", 0.0)),
            null_responses=float(data.get("null_responses", 0.0)),
            invalid_rows=float(data.get("invalid_rows", 0.0)),
        )


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"not a boolean: {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _seconds(value: Any) -> float:
    if value is True or value == FOREVER:
        return math.inf
    return float(value)


register_fault_kind(GeminiBatchFault.kind, GeminiBatchFault.from_json)
