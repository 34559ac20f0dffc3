"""What happened, for tests to check afterwards: uploads, batches created and every API call.

E.g. "each chunk was created remotely exactly once" is
``len(ledger.batches_with_metadata("orchestrator_key", key)) == 1``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any


@dataclasses.dataclass(frozen=True)
class FileEntry:
    id: str
    filename: str
    bytes: int
    num_rows: int
    purpose: str
    created_at: int
    # When a "not ready" fault lets the API see the file (None: at once).
    visible_at: float | None = None


@dataclasses.dataclass(frozen=True)
class BatchEntry:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict[str, str] | None
    created_at: int
    # The batch fault it was created with (its JSON form), if any.
    faults: dict[str, Any] | None = None
    # Codes of errors.data when it is bound to fail validation (or the token budget).
    problems: tuple[str, ...] = ()
    # Its estimated prompt tokens per model, and (with an enqueued-token budget configured) the
    # model's tokens enqueued at its creation including its own: over the budget, it was refused.
    prompt_tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    enqueued_tokens: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class CallEntry:
    # Virtual time (Unix seconds, fractional) when the call was answered.
    at: float
    method: str
    route: str
    path: str
    status: int
    # Seconds the answer was held back by a delay fault.
    delay_seconds: float = 0.0
    # Whether a fault rule fired for this call.
    faulted: bool = False


class Ledger:
    """Append-only records, safe to read while the emulator serves other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: list[FileEntry] = []
        self._batches: list[BatchEntry] = []
        self._calls: list[CallEntry] = []

    def record_file(self, entry: FileEntry) -> None:
        with self._lock:
            self._files.append(entry)

    def record_batch(self, entry: BatchEntry) -> None:
        with self._lock:
            self._batches.append(entry)

    def record_call(self, entry: CallEntry) -> None:
        with self._lock:
            self._calls.append(entry)

    @property
    def files(self) -> list[FileEntry]:
        with self._lock:
            return list(self._files)

    @property
    def batches(self) -> list[BatchEntry]:
        with self._lock:
            return list(self._batches)

    @property
    def calls(self) -> list[CallEntry]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, route: str, status: int | None = None) -> list[CallEntry]:
        """Calls to one route (e.g. ``"create_batch"``), optionally only those answered ``status``."""
        return [
            call
            for call in self.calls
            if call.route == route and (status is None or call.status == status)
        ]

    def batches_with_metadata(self, key: str, value: str) -> list[BatchEntry]:
        return [b for b in self.batches if b.metadata is not None and b.metadata.get(key) == value]

    def batches_for_file(self, input_file_id: str) -> list[BatchEntry]:
        return [b for b in self.batches if b.input_file_id == input_file_id]

    def clear(self) -> None:
        with self._lock:
            self._files.clear()
            self._batches.clear()
            self._calls.clear()

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "files": [dataclasses.asdict(e) for e in self._files],
                "batches": [dataclasses.asdict(e) for e in self._batches],
                "calls": [dataclasses.asdict(e) for e in self._calls],
            }
