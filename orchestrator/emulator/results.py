"""Write a finished batch's output and error files, streaming from the input file on disk.

Runs once per batch, when a look at it first finds it terminal. Rows that ran go to the output file
(success) or the error file (shape a: a 400, or the 429/500 of a per-line fault); rows that never
ran, because the batch was cancelled or expired first, go to the error file as shape b
(``batch_cancelled``/``batch_expired``). A batch fault may then drop a row's line from both files
or write it twice; usage counts what ran, whether or not its line was lost.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.files import BlobDir
from orchestrator.emulator.ids import digest
from orchestrator.emulator.jsonl import FileIndex
from orchestrator.emulator.lifecycle import Plan
from orchestrator.emulator.lines import (
    RATE_LIMITED,
    SERVER_ERROR,
    LineContext,
    LineUsage,
    failure_of,
    http_error_line,
    not_run_line,
    success_line,
)
from orchestrator.emulator.marks import LINE_429, LINE_500, LINE_DUPLICATED, LINE_MISSING
from orchestrator.emulator.pricing import batch_cost

NOT_RUN = {
    "cancelled": (
        "batch_cancelled",
        "This request was not executed because the batch was cancelled.",
    ),
    "expired": (
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    ),
}


@dataclasses.dataclass
class Usage:
    """Token totals per model, for the batch's ``usage`` object."""

    per_model: dict[str | None, list[int]] = dataclasses.field(default_factory=dict)

    def add(self, line: LineUsage) -> None:
        totals = self.per_model.setdefault(line.model, [0, 0, 0])
        totals[0] += line.prompt_tokens
        totals[1] += line.cached_tokens
        totals[2] += line.completion_tokens

    def to_json(self, with_cost: bool) -> dict[str, Any]:
        inputs = sum(t[0] for t in self.per_model.values())
        cached = sum(t[1] for t in self.per_model.values())
        outputs = sum(t[2] for t in self.per_model.values())
        usage: dict[str, Any] = {
            "input_tokens": inputs,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": outputs,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inputs + outputs,
        }
        if with_cost:
            cost = sum(batch_cost(model, *totals) for model, totals in self.per_model.items())
            usage["cost"] = round(cost, 10)
        return usage


# How a mode words a result line: given the input line and the line in OpenAI's envelope (and
# whether it succeeded), the line to write and whether it goes to the output file (True) or the
# error file. Gemini writes every row, in its own shape, to one responses file.
LineShape = Callable[[dict[str, Any], dict[str, Any], bool], tuple[dict[str, Any], bool]]


@dataclasses.dataclass(frozen=True)
class ResultJob:
    """What to write: which batch, which input, and how far it got."""

    config: EmulatorConfig
    batch_id: str
    endpoint: str
    input_path: Path
    index: FileIndex
    plan: Plan
    outcome: str  # the terminal status: completed, cancelled or expired
    processed: int
    # Row -> marks.LINE_* from the batch's faults; rows absent are untouched.
    line_faults: dict[int, int] = dataclasses.field(default_factory=dict)
    shuffled: bool = False
    # Quoted by every error message (an echo_auth batch fault), "" for nothing.
    echo: str = ""
    # The mode's wording of each line (None: OpenAI's envelope).
    shape: LineShape | None = None


@dataclasses.dataclass
class Written:
    """One result file on disk (only made when it has at least one line)."""

    path: Path
    bytes: int
    lines: int


@dataclasses.dataclass
class Results:
    output: Written | None
    error: Written | None
    usage: Usage


def write_results(job: ResultJob, blobs: BlobDir) -> Results:
    out_path, err_path = blobs.new_path(), blobs.new_path()
    usage = Usage()
    counts = [0, 0]
    with (
        job.input_path.open("rb") as source,
        out_path.open("wb") as out,
        err_path.open("wb") as err,
    ):
        for row in _row_order(job):
            source.seek(job.index.offsets[row])
            line = orjson.loads(source.readline())
            result, ok = _result_line(job, row, line, usage)
            if job.shape is not None:
                result, ok = job.shape(line, result, ok)
            fault = job.line_faults.get(row)
            if fault == LINE_MISSING:
                continue
            data = orjson.dumps(result) + b"\n"
            copies = 2 if fault == LINE_DUPLICATED else 1
            (out if ok else err).write(data * copies)
            counts[0 if ok else 1] += copies
    return Results(_keep(blobs, out_path, counts[0]), _keep(blobs, err_path, counts[1]), usage)


def _result_line(
    job: ResultJob, row: int, line: dict[str, Any], usage: Usage
) -> tuple[dict[str, Any], bool]:
    processed_at = int(job.plan.processed_at(row))
    ctx = LineContext(job.config, job.batch_id, job.endpoint, row, processed_at)
    if row >= job.processed:
        code, message = NOT_RUN[job.outcome]
        return not_run_line(ctx, line, code, echoing(message, job.echo)), False
    failure = failure_of(job.config, line.get("custom_id"), line.get("body"), job.endpoint)
    if failure is None:
        failure = _LINE_FAILURES.get(job.line_faults.get(row, 0))
    if failure is not None:
        if job.echo:
            failure = dataclasses.replace(failure, message=echoing(failure.message, job.echo))
        return http_error_line(ctx, line, failure), False
    result, line_usage = success_line(ctx, line)
    usage.add(line_usage)
    return result, True


_LINE_FAILURES = {LINE_429: RATE_LIMITED, LINE_500: SERVER_ERROR}


def echoing(message: str, echo: str) -> str:
    """``message`` quoting ``echo`` (the Authorization header), as a provider that echoes the key
    in its error messages writes it; unchanged when there is nothing to quote."""
    return f"{message} (received Authorization: {echo})" if echo else message


def _row_order(job: ResultJob) -> Iterable[int]:
    rows = list(range(job.index.num_rows))
    if job.shuffled or job.config.output_order == "shuffled":
        random.Random(digest(job.config.seed, "order", job.batch_id)).shuffle(rows)
    return rows


def _keep(blobs: BlobDir, path: Path, lines: int) -> Written | None:
    if lines == 0:
        blobs.remove(path)
        return None
    return Written(path, path.stat().st_size, lines)
