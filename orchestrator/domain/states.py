"""States of jobs and batches, and which moves between them are allowed.

A job is what a user enqueues; a batch is one remote batch (one JSONL file) of its requests and the
unit of work and of leasing::

    job:    pending ──► running ──► completed | failed | cancelled
            pending ──────────────► failed (bad input) | cancelled

    batch:  planned ──► uploaded ──► creating ──► submitted ──► ingesting ──► done
               │           ▲  │         │  ▲          │
               │           └──┼─────────┘  └ (reconciled: adopted, or created again)
               │              │         │
               └──────────────┴─────────┴──► failed | cancelled | superseded (split in two)

``creating`` is the intent record written before ``POST /batches``: a batch found there without a
remote id is reconciled before anything is sent again (DESIGN.md section 4).
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class BatchState(enum.StrEnum):
    PLANNED = "planned"
    UPLOADED = "uploaded"
    CREATING = "creating"
    SUBMITTED = "submitted"
    INGESTING = "ingesting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"


BATCH_TERMINAL = frozenset(
    {BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED, BatchState.SUPERSEDED}
)

BATCH_TRANSITIONS: dict[BatchState, frozenset[BatchState]] = {
    BatchState.PLANNED: frozenset(
        {BatchState.UPLOADED, BatchState.FAILED, BatchState.CANCELLED, BatchState.SUPERSEDED}
    ),
    BatchState.UPLOADED: frozenset(
        {
            BatchState.CREATING,
            BatchState.PLANNED,
            BatchState.FAILED,
            BatchState.CANCELLED,
            BatchState.SUPERSEDED,  # split: alone over its model's enqueued-token budget
        }
    ),
    BatchState.CREATING: frozenset(
        {
            BatchState.SUBMITTED,
            BatchState.UPLOADED,
            BatchState.PLANNED,
            BatchState.FAILED,
            BatchState.CANCELLED,
        }
    ),
    BatchState.SUBMITTED: frozenset({BatchState.INGESTING, BatchState.UPLOADED, BatchState.FAILED}),
    BatchState.INGESTING: frozenset({BatchState.DONE, BatchState.FAILED}),
    BatchState.DONE: frozenset(),
    BatchState.FAILED: frozenset(),
    BatchState.CANCELLED: frozenset(),
    BatchState.SUPERSEDED: frozenset(),
}


def sources_of(dst: BatchState) -> frozenset[BatchState]:
    """The states a batch may move to ``dst`` from (what ``db.ledger`` checks on every write)."""
    return frozenset(src for src, targets in BATCH_TRANSITIONS.items() if dst in targets)


class RemoteStatus(enum.StrEnum):
    """The Batch API's own statuses (spec section 2.1)."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


REMOTE_TERMINAL = frozenset(
    {RemoteStatus.FAILED, RemoteStatus.COMPLETED, RemoteStatus.EXPIRED, RemoteStatus.CANCELLED}
)
# Terminal states whose output and error files hold results to collect.
REMOTE_WITH_RESULTS = frozenset(
    {RemoteStatus.COMPLETED, RemoteStatus.EXPIRED, RemoteStatus.CANCELLED}
)


def remote_terminal(status: str) -> bool:
    """Unknown statuses (a provider adding one) count as still running."""
    return status in REMOTE_TERMINAL
