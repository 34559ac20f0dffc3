"""Faults that mark what a call creates, instead of changing the call's own response.

A rule holding a :class:`BatchFault` fires on the ``create_batch`` calls that do create a batch,
and shapes that batch for its whole life (spec §8): stuck in ``finalizing`` (X5),
``error_file_id: ""`` (X12), per-line 429/500 responses in the results, lines missing from both
files, duplicated lines, shuffled output, no ``usage``, a failure of the whole batch, or error
messages that quote the API key. A rule
holding :class:`FileNotReady` fires on ``upload_file`` and hides the new file for a while, as
OpenAI does at scale (X6).

Per-line faults pick lines by a hash of (seed, batch id, custom_id). Batch ids follow from the seed
and the order of creation, so a run replays byte for byte; and a request resubmitted in a new
batch gets a fresh draw: with rate ``r`` it fails again with probability ``r``, and a rule with
``times=1`` marks only the first batch, so the resubmission always succeeds.
"""

from __future__ import annotations

import dataclasses
import math
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar

from orchestrator.emulator.ids import digest, mix64
from orchestrator.emulator.messages import EmuResponse
from orchestrator.emulator.routes import CREATE_BATCH, UPLOAD_FILE

# What happens to one line of a marked batch (absent from a plan: nothing).
LINE_429 = 1
LINE_500 = 2
LINE_MISSING = 3
LINE_DUPLICATED = 4

FOREVER = "forever"
_SCALE64 = float(1 << 64)


@dataclasses.dataclass(frozen=True)
class BatchFault:
    """How a marked batch misbehaves. Rates are per line, drawn independently in this order:
    429, else 500, else missing, else duplicated (429/500 hit only lines that would succeed)."""

    kind: ClassVar[str] = "batch"
    marks_route: ClassVar[str] = CREATE_BATCH

    # Extra virtual seconds in finalizing; math.inf holds it there until released.
    stuck_finalizing: float = 0.0
    # Report `error_file_id: ""` instead of null (X12: seen on batches where nothing failed).
    empty_error_file_id: bool = False
    # Share of lines answered 429 / 500 inside the results (error file, shape a).
    line_429: float = 0.0
    line_500: float = 0.0
    # Share of lines in neither file (request_counts still count them, as the provider did).
    missing_lines: float = 0.0
    # Share of lines written twice.
    duplicate_lines: float = 0.0
    # Result files in a seeded random order.
    shuffle: bool = False
    # The batch object has no `usage` key.
    no_usage: bool = False
    # The batch fails as a whole (validating → failed) with this error code, e.g. "server_error".
    fail_with: str = ""
    # Virtual seconds after it finished during which the batch reports output_file_id and
    # error_file_id null although its request_counts say lines were produced (math.inf: for ever),
    # as a provider whose files lag its status does.
    hide_output: float = 0.0
    # Every error message the batch produces (its failed lines, in the error file, and the
    # `errors` of a batch that fails as a whole) quotes the create call's `Authorization` header,
    # as a provider that echoes the key it was given does.
    echo_auth: bool = False

    def __post_init__(self) -> None:
        if not self.stuck_finalizing >= 0:
            raise ValueError("stuck_finalizing must be >= 0 seconds (or 'forever')")
        if not self.hide_output >= 0:
            raise ValueError("hide_output must be >= 0 seconds (or 'forever')")
        for name in ("line_429", "line_500", "missing_lines", "duplicate_lines"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if all(getattr(self, f.name) == f.default for f in dataclasses.fields(self)):
            raise ValueError("a batch fault needs at least one option")

    def apply(self, _ctx: object, proceed: Callable[[], EmuResponse]) -> EmuResponse:
        # Marks act when the batch is created (FaultInjector.take_marks), not on the response.
        return proceed()

    @property
    def line_rates(self) -> tuple[tuple[int, float], ...]:
        rates = (
            (LINE_429, self.line_429),
            (LINE_500, self.line_500),
            (LINE_MISSING, self.missing_lines),
            (LINE_DUPLICATED, self.duplicate_lines),
        )
        return tuple((code, rate) for code, rate in rates if rate > 0)

    def line_plan(self, seed: int, batch_id: str, id_keys: array[int]) -> dict[int, int]:
        """Row -> LINE_* for the rows this fault hits."""
        rates = self.line_rates
        if not rates:
            return {}
        base = int.from_bytes(digest(seed, "line-faults", batch_id)[:8], "big")
        draws = [(code, rate * _SCALE64, mix64(base + code)) for code, rate in rates]
        plan: dict[int, int] = {}
        for row, key in enumerate(id_keys):
            for code, threshold, salt in draws:
                if mix64(salt ^ key) < threshold:
                    plan[row] = code
                    break
        return plan

    def merge(self, other: BatchFault) -> BatchFault:
        """Two rules firing on one batch: flags add up, numbers take the larger."""
        return BatchFault(
            stuck_finalizing=max(self.stuck_finalizing, other.stuck_finalizing),
            empty_error_file_id=self.empty_error_file_id or other.empty_error_file_id,
            line_429=max(self.line_429, other.line_429),
            line_500=max(self.line_500, other.line_500),
            missing_lines=max(self.missing_lines, other.missing_lines),
            duplicate_lines=max(self.duplicate_lines, other.duplicate_lines),
            shuffle=self.shuffle or other.shuffle,
            no_usage=self.no_usage or other.no_usage,
            fail_with=self.fail_with or other.fail_with,
            hide_output=max(self.hide_output, other.hide_output),
            echo_auth=self.echo_auth or other.echo_auth,
        )

    def to_json(self) -> dict[str, Any]:
        """The options that differ from the defaults (the admin endpoint's and CLI's keys)."""
        data: dict[str, Any] = {"kind": self.kind}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default:
                data[field.name] = FOREVER if value == math.inf else value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BatchFault:
        return cls(
            stuck_finalizing=_seconds(data.get("stuck_finalizing", 0.0)),
            empty_error_file_id=_flag(data.get("empty_error_file_id", False)),
            line_429=float(data.get("line_429", 0.0)),
            line_500=float(data.get("line_500", 0.0)),
            missing_lines=float(data.get("missing_lines", 0.0)),
            duplicate_lines=float(data.get("duplicate_lines", 0.0)),
            shuffle=_flag(data.get("shuffle", False)),
            no_usage=_flag(data.get("no_usage", False)),
            fail_with=str(data.get("fail_with", "")),
            hide_output=_seconds(data.get("hide_output", 0.0)),
            echo_auth=_flag(data.get("echo_auth", False)),
        )


BATCH_FAULT_KEYS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(BatchFault))


@dataclasses.dataclass(frozen=True)
class FileNotReady:
    """The uploaded file answers "not found" (create, retrieve, content) for ``not_ready`` virtual
    seconds: 404 in fastrouter mode; in openai mode create_batch gets the 400 "Cannot find file"
    with ``param: input_file_id`` seen in the wild and the file routes their usual 404."""

    kind: ClassVar[str] = "not_ready"
    marks_route: ClassVar[str] = UPLOAD_FILE

    not_ready: float

    def __post_init__(self) -> None:
        if not self.not_ready > 0:
            raise ValueError("not_ready must be > 0 seconds")

    def apply(self, _ctx: object, proceed: Callable[[], EmuResponse]) -> EmuResponse:
        return proceed()

    def merge(self, other: FileNotReady) -> FileNotReady:
        return FileNotReady(max(self.not_ready, other.not_ready))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "not_ready": self.not_ready}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileNotReady:
        return cls(float(data.get("not_ready", data.get("seconds", 0.0))))


class _Mergeable(Protocol):
    def merge(self, other: Self) -> Self: ...


_M = TypeVar("_M", bound=_Mergeable)


def merged(marks: Iterable[object], kind: type[_M]) -> _M | None:
    """The marks of one kind among those a call collected, merged into one (None when there are
    none): what every mode does with ``FaultInjector.take_marks``, for each kind it knows."""
    result: _M | None = None
    for mark in marks:
        if isinstance(mark, kind):
            result = mark if result is None else result.merge(mark)
    return result


def _seconds(value: Any) -> float:
    if value is True or value == FOREVER:
        return math.inf
    return float(value)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"not a boolean: {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)
