"""Batch records: parsing a create request, and rendering the batch object at a moment.

The record holds only what was fixed at creation (plus a cancel request, a release of a stuck
fault and, once terminal, the result files); its status and counts are derived by
:mod:`orchestrator.emulator.lifecycle`.
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from array import array
from pathlib import Path
from typing import Any

from orchestrator.emulator.config import EmulatorConfig, Mode
from orchestrator.emulator.errors import ApiProblem
from orchestrator.emulator.jsonl import FileIndex, Problem
from orchestrator.emulator.lifecycle import Plan, Snapshot
from orchestrator.emulator.lines import OPENAI_BATCH_ENDPOINTS, SUPPORTED_ENDPOINTS
from orchestrator.emulator.marks import LINE_429, LINE_500, BatchFault
from orchestrator.emulator.results import LineShape

COMPLETION_WINDOWS = ("24h",)
# OpenAI accepts these endpoints (the same list the orchestrator knows); the emulator can answer
# the chat and embeddings ones.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


@dataclasses.dataclass(frozen=True)
class CreateParams:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


@dataclasses.dataclass(frozen=True)
class ResultFiles:
    output_file_id: str | None
    error_file_id: str | None
    usage: dict[str, Any]


@dataclasses.dataclass
class BatchRecord:
    id: str
    params: CreateParams
    created_at: int
    plan: Plan
    index: FileIndex
    input_path: Path
    problems: list[Problem]
    # The merged batch faults this batch was created with, and what they do to each row.
    fault: BatchFault | None = None
    line_faults: dict[int, int] = dataclasses.field(default_factory=dict)
    cancel_requested: float | None = None
    results: ResultFiles | None = None
    # What the batch's error messages quote (an echo_auth fault), "" for nothing.
    echo: str = ""
    # How its result lines are worded (a mode's own shape; None: OpenAI's envelope).
    shape: LineShape | None = None
    # Held while the result files are written, so two readers do not both write them.
    results_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # The result files of its uninterrupted course, written ahead (``prepare_results``), and the
    # snapshot they are for: used if that is how it ends.
    prepared: tuple[Any, Any] | None = None
    # Sorted rows that end in the error file after running (config failures, per-line 429/500).
    fail_rows: array[int] = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        failing = [row for row, kind in self.line_faults.items() if kind in (LINE_429, LINE_500)]
        if failing:
            self.fail_rows = array("Q", sorted({*self.index.fail_lines, *failing}))
        else:
            self.fail_rows = self.index.fail_lines

    def needs_input(self) -> bool:
        """Whether the input file's content must stay on disk (results not written yet)."""
        return self.plan.valid and self.results is None


def parse_create(payload: Any, mode: Mode) -> CreateParams:
    """Validate a create-batch body; raises ApiProblem(400) naming the bad parameter."""
    if not isinstance(payload, dict):
        raise ApiProblem(400, "The request body must be a JSON object.")
    input_file_id = payload.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise _missing("input_file_id")
    return CreateParams(
        input_file_id=input_file_id,
        endpoint=_endpoint(payload.get("endpoint"), mode),
        completion_window=_window(payload.get("completion_window", "24h")),
        metadata=_metadata(payload.get("metadata")),
    )


def _endpoint(value: object, mode: Mode) -> str:
    if value is None:
        raise _missing("endpoint")
    allowed = OPENAI_BATCH_ENDPOINTS if mode == "openai" else SUPPORTED_ENDPOINTS
    if value not in allowed:
        raise ApiProblem(
            400, f"Invalid value for 'endpoint': {value!r}. Supported: {', '.join(allowed)}.",
            param="endpoint", code="invalid_value",
        )  # fmt: skip
    if value not in SUPPORTED_ENDPOINTS:
        message = f"The emulator cannot answer {value!r}; it supports {SUPPORTED_ENDPOINTS}."
        raise ApiProblem(400, message, param="endpoint", code="unsupported_value")
    return str(value)


def _window(value: object) -> str:
    if value not in COMPLETION_WINDOWS:
        message = f"Invalid value for 'completion_window': {value!r}. Only '24h' is supported."
        raise ApiProblem(400, message, param="completion_window", code="invalid_value")
    return str(value)


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiProblem(400, "'metadata' must be an object.", param="metadata")
    if len(value) > MAX_METADATA_PAIRS:
        raise ApiProblem(400, "'metadata' holds at most 16 pairs.", param="metadata")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY:
            raise ApiProblem(400, "metadata keys are at most 64 characters.", param="metadata")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE:
            message = "metadata values are strings of at most 512 characters."
            raise ApiProblem(400, message, param="metadata")
    return dict(value)


def _missing(param: str) -> ApiProblem:
    return ApiProblem(400, f"Missing required parameter: '{param}'.", param=param)


def request_counts(record: BatchRecord, snap: Snapshot) -> dict[str, int]:
    if not snap.counted:
        return {"total": 0, "completed": 0, "failed": 0}
    total = record.plan.rows
    failed_run = bisect.bisect_left(record.fail_rows, snap.processed)
    completed = snap.processed - failed_run
    # Once terminal, every row is in one of the two files; rows that never ran count as failed.
    failed = total - completed if snap.terminal else failed_run
    return {"total": total, "completed": completed, "failed": failed}


def render(
    record: BatchRecord, snap: Snapshot, config: EmulatorConfig, now: float | None = None
) -> dict[str, Any]:
    """The batch object: every field of OpenAI's Batch, plus FastRouter's ``batch_id``/cost."""
    ids: dict[str, Any] = {"id": record.id}
    if config.mode == "fastrouter":
        ids["batch_id"] = record.id
    results = record.results
    fault = record.fault
    error_file_id = results.error_file_id if results else None
    output_file_id = results.output_file_id if results else None
    if error_file_id is None and fault is not None and fault.empty_error_file_id:
        error_file_id = ""  # X12: a clean batch reported "" rather than null
    if fault is not None and fault.hide_output and _hiding(fault, snap, now):
        output_file_id = error_file_id = None
    batch = {
        **ids,
        "object": "batch",
        "endpoint": record.params.endpoint,
        "model": record.index.model,
        "errors": _errors(record) if snap.status == "failed" else None,
        "input_file_id": record.params.input_file_id,
        "completion_window": record.params.completion_window,
        "status": snap.status,
        "output_file_id": output_file_id,
        "error_file_id": error_file_id,
        "created_at": record.created_at,
        "in_progress_at": _unix(snap.in_progress_at),
        "expires_at": int(record.plan.expires),
        "finalizing_at": _unix(snap.finalizing_at),
        "completed_at": _unix(snap.completed_at),
        "failed_at": _unix(snap.failed_at),
        "expired_at": _unix(snap.expired_at),
        "cancelling_at": _unix(snap.cancelling_at),
        "cancelled_at": _unix(snap.cancelled_at),
        "request_counts": request_counts(record, snap),
        "usage": _usage(record, snap, config),
        "metadata": record.params.metadata,
    }
    if fault is not None and fault.no_usage:
        del batch["usage"]
    return batch


def _hiding(fault: Any, snap: Snapshot, now: float | None) -> bool:
    finished = snap.completed_at or snap.expired_at or snap.cancelled_at
    if finished is None or now is None:
        return False
    return bool(now < finished + fault.hide_output)


def _errors(record: BatchRecord) -> dict[str, Any]:
    return {"object": "list", "data": [problem.to_json() for problem in record.problems]}


def _usage(record: BatchRecord, snap: Snapshot, config: EmulatorConfig) -> dict[str, Any] | None:
    if record.results is not None:
        return record.results.usage
    if not snap.terminal:
        return None
    usage: dict[str, Any] = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    if config.mode == "fastrouter":
        usage["cost"] = 0.0
    return usage


def _unix(moment: float | None) -> int | None:
    return None if moment is None else int(moment)
