"""A batch's status as a pure function of time (spec §2).

Nothing runs in the background: whenever a batch is looked at, :func:`snapshot` works out where it
is from its creation time, its size, the config's rates and the clock::

    validating ──► in_progress ──► finalizing ──► completed
        │               │
        │               └─(expires_at reached first)──► expired
        ├─(validation problems)──► failed
        └─cancel (any non-terminal state)──► cancelling ──► cancelled

A "stuck finalizing" fault holds a batch in ``finalizing`` past its normal end (``stuck_until``,
possibly infinity); :meth:`Plan.released` lets it complete. Once every row has run a batch no
longer expires: only unfinished work is cut off at ``expires_at``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from orchestrator.emulator.config import EmulatorConfig

Status = Literal[
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
]
TERMINAL: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
# Terminal states that leave result files behind.
WITH_RESULTS: frozenset[str] = frozenset({"completed", "expired", "cancelled"})

# Guards the floor() of "seconds elapsed x rows per second" against 9.999999 for 10.
_EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything fixed at creation that decides a batch's course (times in Unix seconds)."""

    created: float
    rows: int
    valid: bool
    in_progress: float
    finalizing: float
    done: float
    expires: float
    rows_per_second: float
    cancel_seconds: float
    # A stuck batch stays finalizing until then (math.inf: until released).
    stuck_until: float = -math.inf

    @classmethod
    def make(
        cls,
        config: EmulatorConfig,
        created: float,
        rows: int,
        valid: bool,
        stuck_seconds: float = 0.0,
    ) -> Plan:
        """``stuck_seconds`` extra virtual seconds in finalizing (math.inf: until released)."""
        in_progress = created + config.validation_seconds
        finalizing = in_progress + rows / config.rows_per_second
        done = finalizing + config.finalizing_seconds
        return cls(
            created=created,
            rows=rows,
            valid=valid,
            in_progress=in_progress,
            finalizing=finalizing,
            done=done,
            expires=created + config.completion_window_seconds,
            rows_per_second=config.rows_per_second,
            cancel_seconds=config.cancel_seconds,
            stuck_until=done + stuck_seconds if stuck_seconds > 0 else -math.inf,
        )

    @property
    def completes(self) -> float:
        """When the batch leaves finalizing for completed."""
        return max(self.done, self.stuck_until)

    def released(self, moment: float) -> Plan:
        """The plan with the stuck fault lifted at ``moment``: it completes on schedule or now."""
        return dataclasses.replace(self, stuck_until=min(self.stuck_until, moment))

    def processed_by(self, moment: float) -> int:
        """Rows run by ``moment`` (rows are run in input order at a steady rate)."""
        if not self.valid or moment < self.in_progress:
            return 0
        ran = math.floor((moment - self.in_progress) * self.rows_per_second + _EPSILON)
        return min(self.rows, ran)

    def processed_at(self, row: int) -> float:
        """When row ``row`` (0-based) was run: the end of its slot."""
        return self.in_progress + (row + 1) / self.rows_per_second


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Where a batch is at one moment."""

    status: Status
    # Rows that have run; after a cancel or an expiry, those that ran before it.
    processed: int
    # Whether validation finished, so request_counts.total is known.
    counted: bool
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    expired_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def snapshot(plan: Plan, now: float, cancel_requested: float | None = None) -> Snapshot:
    if cancel_requested is not None:
        return _cancelled(plan, now, cancel_requested)
    if not plan.valid:
        if now < plan.in_progress:
            return Snapshot("validating", 0, counted=False)
        return Snapshot("failed", 0, counted=False, failed_at=plan.in_progress)
    if plan.finalizing > plan.expires and now >= plan.expires:
        return _expired(plan)
    if now < plan.in_progress:
        return Snapshot("validating", 0, counted=False)
    if now < plan.finalizing:
        return Snapshot("in_progress", plan.processed_by(now), True, plan.in_progress)
    fin = plan.finalizing
    done = plan.completes
    if now < done:
        return Snapshot("finalizing", plan.rows, True, plan.in_progress, fin)
    return Snapshot("completed", plan.rows, True, plan.in_progress, fin, completed_at=done)


def _expired(plan: Plan) -> Snapshot:
    started = plan.in_progress if plan.expires >= plan.in_progress else None
    return Snapshot(
        "expired",
        plan.processed_by(plan.expires),
        counted=True,
        in_progress_at=started,
        expired_at=plan.expires,
    )


def _cancelled(plan: Plan, now: float, requested: float) -> Snapshot:
    finished = requested + plan.cancel_seconds
    started = plan.valid and requested >= plan.in_progress
    return Snapshot(
        "cancelled" if now >= finished else "cancelling",
        plan.processed_by(requested),
        # Once cancelled, every row is accounted for (ran, or cancelled into the error file).
        counted=started or (plan.valid and now >= finished),
        in_progress_at=plan.in_progress if started else None,
        finalizing_at=plan.finalizing if started and requested >= plan.finalizing else None,
        cancelling_at=requested,
        cancelled_at=finished if now >= finished else None,
    )


def cancellable(current: Snapshot) -> bool:
    return current.status in ("validating", "in_progress", "finalizing")
