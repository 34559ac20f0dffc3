"""The emulator's state: files and batches behind one lock.

The lock guards the dictionaries only. Slow work (planning per-line faults, writing result files,
streaming content) happens outside it, so one large batch never stalls other calls.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from orchestrator.clock import Clock
from orchestrator.emulator.batches import BatchRecord, CreateParams, ResultFiles, render
from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.files import BlobDir, StoredFile
from orchestrator.emulator.ids import IdGenerator, IdPrefixes, hex_id
from orchestrator.emulator.jsonl import FileIndex, Problem, batch_problems
from orchestrator.emulator.ledger import BatchEntry, FileEntry, Ledger
from orchestrator.emulator.lifecycle import WITH_RESULTS, Plan, Snapshot, cancellable, snapshot
from orchestrator.emulator.marks import BatchFault
from orchestrator.emulator.results import (
    LineShape,
    ResultJob,
    Results,
    Written,
    echoing,
    write_results,
)
from orchestrator.emulator.uploads import Upload

# OpenAI keeps batch input and output files for 30 days by default.
FILE_RETENTION_SECONDS = 30 * 86400
# A token_limit_exceeded message that names no limit (providers word it differently; spec §5.4).
_UNSTATED_TOKEN_LIMIT = "Too many tokens are enqueued for this model; try again later."
# Statuses whose prompt tokens count against the enqueued-token budget (spec §5.4).
ENQUEUED_STATUSES = frozenset({"validating", "in_progress", "finalizing"})
# The ids of the core's own modes (FastRouter names its result files after the batch instead:
# see _result_file); a mode of emulator.modes brings its own (``Wire.id_prefixes``).
_OPENAI_IDS = IdPrefixes("batch_")
_FASTROUTER_IDS = IdPrefixes("fr_batch-")


class NotCancellable(Exception):
    """The batch is already terminal."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class InputUnusable(Exception):
    """The input file exists but is not a batch input (wrong purpose)."""


@dataclasses.dataclass(frozen=True)
class Page:
    records: list[BatchRecord]
    has_more: bool


class State:
    def __init__(
        self,
        config: EmulatorConfig,
        clock: Clock,
        ledger: Ledger,
        prefixes: IdPrefixes | None = None,
    ) -> None:
        """``prefixes``: how batch and result-file ids start (None: the core mode's own)."""
        self._config = config
        self._prefixes = prefixes or (_OPENAI_IDS if config.is_openai else _FASTROUTER_IDS)
        self._clock = clock
        self._ledger = ledger
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._order: list[str] = []
        self._ids = IdGenerator(config.seed, config.instance)
        self.blobs = BlobDir(config.storage_dir)
        self._prepare = (
            ThreadPoolExecutor(1, thread_name_prefix="emulator-results")
            if config.prepare_results
            else None
        )

    def now(self) -> float:
        return self._clock.now().timestamp()

    # -- files ---------------------------------------------------------------------------------

    def add_upload(
        self, upload: Upload, purpose: str, expires_after: int | None, not_ready: float = 0.0
    ) -> StoredFile:
        """Register an upload; ``not_ready`` seconds hide it from the API (a fault)."""
        moment = self.now()
        now = int(moment)
        if expires_after is None and purpose == "batch":
            expires_after = FILE_RETENTION_SECONDS
        expires_at = now + expires_after if expires_after is not None else None
        index = upload.index if purpose == "batch" else None
        visible_at = moment + not_ready if not_ready > 0 else None
        with self._lock:
            record = StoredFile(
                self._ids.next("file", "file-"), upload.filename, purpose, upload.bytes,
                now, expires_at, upload.path, index, visible_at,
            )  # fmt: skip
            self._files[record.id] = record
        entry = FileEntry(
            record.id, record.filename, record.bytes, record.num_rows, purpose, now, visible_at
        )
        self._ledger.record_file(entry)
        return record

    def file(self, file_id: str) -> StoredFile | None:
        """The file as the API sees it: None when unknown or not visible yet."""
        now = self.now()
        with self._lock:
            record = self._files.get(file_id)
        return record if record is not None and record.visible(now) else None

    def delete_file(self, file_id: str) -> bool:
        now = self.now()
        with self._lock:
            record = self._files.get(file_id)
            if record is None or not record.visible(now):
                return False
            del self._files[file_id]
            # A batch that has not written its results yet still reads this content.
            pinned = any(
                b.input_path == record.path and b.needs_input() for b in self._batches.values()
            )
        if not pinned:
            self.blobs.remove(record.path)
        return True

    # -- batches -------------------------------------------------------------------------------

    def input_file(self, file_id: str) -> StoredFile | None:
        """A visible batch input file; None when missing; InputUnusable when not a batch file."""
        source = self.file(file_id)
        if source is not None and source.index is None:
            raise InputUnusable(source.purpose)
        return source

    def create_batch(
        self,
        params: CreateParams,
        fault: BatchFault | None = None,
        echo: str = "",
        shape: LineShape | None = None,
    ) -> BatchRecord | None:
        """The new batch, or None when the input file does not exist (or is not visible yet).
        ``echo``: what its error messages quote (an ``echo_auth`` fault: the Authorization
        header of the create call). ``shape``: how its result lines are worded (a mode's own)."""
        now = self.now()
        source = self.input_file(params.input_file_id)
        if source is None or source.index is None:
            return None
        index = source.index
        batch_id = self._ids.next("batch", self._prefixes.batch)
        problems = batch_problems(index, params.endpoint, self._config)
        line_faults = {}
        if fault is not None and not problems:
            line_faults = fault.line_plan(self._config.seed, batch_id, index.id_keys)
        stuck = fault.stuck_finalizing if fault else 0.0
        with self._lock:
            if self._files.get(params.input_file_id) is not source:
                return None  # deleted meanwhile
            demand = self._enqueued(index, now)
            problems = problems or self._token_problems(index, demand) or _forced(fault, echo)
            plan = Plan.make(self._config, now, index.num_rows, not problems, stuck)
            record = BatchRecord(
                batch_id, params, int(now), plan, index, source.path, problems, fault,
                line_faults, echo=echo, shape=shape,
            )  # fmt: skip
            self._batches[record.id] = record
            self._order.append(record.id)
        if self._prepare is not None and plan.valid and fault is None:
            self._prepare.submit(self._prepare_results, record)
        self._ledger.record_batch(
            BatchEntry(
                record.id, params.input_file_id, params.endpoint, params.metadata, int(now),
                fault.to_json() if fault else None, tuple(p.code for p in problems),
                dict(index.prompt_tokens), demand,
            )
        )  # fmt: skip
        return record

    def _enqueued(self, index: FileIndex, now: float) -> dict[str, int]:
        """Per model of a batch being created: the prompt tokens of the model's batches
        enqueued now plus its own (what the budget judges; kept in the ledger). Only with a
        budget configured. Lock held."""
        if self._config.enqueued_token_limit is None or not index.prompt_tokens:
            return {}
        enqueued = dict.fromkeys(index.prompt_tokens, 0)
        for other in self._batches.values():
            if not other.plan.valid:
                continue  # failed batches never enqueue anything
            if snapshot(other.plan, now, other.cancel_requested).status in ENQUEUED_STATUSES:
                for model, tokens in other.index.prompt_tokens.items():
                    if model in enqueued:
                        enqueued[model] += tokens
        return {model: enqueued[model] + tokens for model, tokens in index.prompt_tokens.items()}

    def _token_problems(self, index: FileIndex, demand: dict[str, int]) -> list[Problem]:
        """The enqueued-token refusal (spec §5.4), judged at creation."""
        limit = self._config.enqueued_token_limit
        if limit is None:
            return []
        for model, tokens in demand.items():
            if tokens > limit:
                if self._config.token_limit_states_limit:
                    return [Problem("token_limit_exceeded", self._token_message(model, limit))]
                return [Problem("token_limit_exceeded", _UNSTATED_TOKEN_LIMIT)]
        return []

    def _token_message(self, model: str, limit: int) -> str:
        organization = "org-" + hex_id(self._config.seed, "organization")
        return (
            f"Enqueued token limit reached for {model} in organization {organization}. "
            f"Limit: {limit:,} enqueued tokens. "
            "Please try again once some in_progress batches have been completed."
        )

    def batch(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            return self._batches.get(batch_id)

    def page(self, after: str | None, limit: int) -> Page:
        """Batches newest first, starting after the batch ``after`` (unknown cursor: empty)."""
        with self._lock:
            newest_first = self._order[::-1]
            records = [self._batches[batch_id] for batch_id in newest_first]
        start = 0
        if after is not None:
            if after not in newest_first:
                return Page([], has_more=False)
            start = newest_first.index(after) + 1
        return Page(records[start : start + limit], has_more=start + limit < len(records))

    def release_stuck(self, batch_id: str | None = None) -> list[str]:
        """Let stuck-finalizing batches (one, or all) complete: on schedule, or now if overdue.

        Returns the ids released; raises ValueError for an unknown ``batch_id``.
        """
        now = self.now()
        with self._lock:
            if batch_id is not None and batch_id not in self._batches:
                raise ValueError(f"no batch {batch_id!r}")
            ids = [batch_id] if batch_id is not None else list(self._order)
            released = []
            for candidate in ids:
                record = self._batches[candidate]
                if record.plan.stuck_until > now and record.cancel_requested is None:
                    record.plan = record.plan.released(now)
                    released.append(candidate)
        return released

    def cancel(self, record: BatchRecord) -> None:
        """Ask to cancel: no-op when already cancelling; NotCancellable when terminal."""
        with self._lock:
            now = self.now()
            current = snapshot(record.plan, now, record.cancel_requested)
            if current.status == "cancelling":
                return
            if not cancellable(current):
                raise NotCancellable(current.status)
            record.cancel_requested = now

    def view(self, record: BatchRecord) -> dict[str, object]:
        """The batch object now; writes its result files first if it has just finished."""
        return render(record, self.settle(record), self._config, self.now())

    def settle(self, record: BatchRecord) -> Snapshot:
        """Where the batch is now; writes its result files first if it has just finished."""
        with self._lock:
            current = snapshot(record.plan, self.now(), record.cancel_requested)
        if current.status in WITH_RESULTS and record.needs_input():
            self._write_results(record, current)
        return current

    def _prepare_results(self, record: BatchRecord) -> None:
        """Write the result files of the batch's uninterrupted course ahead (``prepare_results``),
        for :meth:`_write_results` to use if that is how it ends."""
        final = snapshot(record.plan, record.plan.completes)
        if final.status != "completed":
            return
        with record.results_lock:
            if record.results is None:
                record.prepared = (final, write_results(self._job(record, final), self.blobs))

    def _job(self, record: BatchRecord, current: Snapshot) -> ResultJob:
        return ResultJob(
            self._config, record.id, record.params.endpoint, record.input_path,
            record.index, record.plan, current.status, current.processed,
            record.line_faults, record.fault is not None and record.fault.shuffle,
            record.echo, record.shape,
        )  # fmt: skip

    def _write_results(self, record: BatchRecord, current: Snapshot) -> None:
        with record.results_lock:
            if record.results is not None:
                return
            if record.prepared is not None and record.prepared[0] == current:
                written = record.prepared[1]
            else:
                written = write_results(self._job(record, current), self.blobs)
            finished = current.completed_at or current.cancelled_at or current.expired_at
            self._register_results(record, written, int(finished or self.now()))

    def _register_results(self, record: BatchRecord, written: Results, finished: int) -> None:
        output = self._result_file(record, written.output, "output", finished)
        error = self._result_file(record, written.error, "error", finished)
        usage = written.usage.to_json(with_cost=not self._config.is_openai)
        with self._lock:
            for stored in (output, error):
                if stored is not None:
                    self._files[stored.id] = stored
            record.results = ResultFiles(
                output.id if output else None, error.id if error else None, usage
            )

    def _result_file(
        self, record: BatchRecord, written: Written | None, kind: str, created: int
    ) -> StoredFile | None:
        if written is None:
            return None
        if self._config.mode == "fastrouter":
            # FastRouter's docs show output file ids like "batch-output-fr_batch-abc123.jsonl".
            file_id = f"batch-{kind}-{record.id}.jsonl"
        else:
            file_id = self._ids.derived(self._prefixes.result_file, record.id, kind)
        # Stamped with the moment the batch finished, not when someone first looked.
        return StoredFile(
            file_id, f"{record.id}_{kind}.jsonl", "batch_output", written.bytes, created,
            created + FILE_RETENTION_SECONDS, written.path,
        )  # fmt: skip

    def produced(self, batch_id: str) -> list[Any]:
        """Every line of the batch's output and error files, parsed, in file order (empty until
        they are written)."""
        record = self.batch(batch_id)
        if record is None or record.results is None:
            return []
        lines: list[Any] = []
        for file_id in (record.results.output_file_id, record.results.error_file_id):
            stored = self.file(file_id) if file_id else None
            if stored is not None:
                with stored.path.open("rb") as fh:
                    lines.extend(orjson.loads(raw) for raw in fh if raw.strip())
        return lines

    def close(self) -> None:
        if self._prepare is not None:
            self._prepare.shutdown(wait=True, cancel_futures=True)
        self.blobs.close()


def _forced(fault: BatchFault | None, echo: str = "") -> list[Problem]:
    """A batch fault's whole-batch failure (e.g. ``server_error``), if it asks for one."""
    if fault is None or not fault.fail_with:
        return []
    message = f"The batch failed: {fault.fail_with} (injected fault)."
    return [Problem(fault.fail_with, echoing(message, echo))]
