"""The lazy lifecycle as a pure function of time."""

from __future__ import annotations

import pytest

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.lifecycle import Plan, snapshot

T0 = 1_000_000.0
# 100 rows at 10 rows/s: validating [0, 5), in_progress [5, 15), finalizing [15, 20), then done.
CONFIG = EmulatorConfig(validation_seconds=5, rows_per_second=10, finalizing_seconds=5)


def plan(rows: int = 100, valid: bool = True, config: EmulatorConfig = CONFIG) -> Plan:
    return Plan.make(config, T0, rows, valid)


@pytest.mark.parametrize(
    ("elapsed", "status", "processed"),
    [
        (0, "validating", 0),
        (4.99, "validating", 0),
        (5, "in_progress", 0),
        (5.1, "in_progress", 1),
        (10, "in_progress", 50),
        (14.99, "in_progress", 99),
        (15, "finalizing", 100),
        (19.99, "finalizing", 100),
        (20, "completed", 100),
        (10_000, "completed", 100),
    ],
)
def test_snapshot_walks_every_status_in_order(elapsed: float, status: str, processed: int) -> None:
    current = snapshot(plan(), T0 + elapsed)

    assert (current.status, current.processed) == (status, processed)


def test_snapshot_sets_each_timestamp_when_its_status_is_reached() -> None:
    done = snapshot(plan(), T0 + 20)

    assert done.in_progress_at == T0 + 5
    assert done.finalizing_at == T0 + 15
    assert done.completed_at == T0 + 20
    assert (done.failed_at, done.expired_at, done.cancelling_at, done.cancelled_at) == (None,) * 4
    assert snapshot(plan(), T0 + 6).finalizing_at is None


def test_processed_rows_are_exact_at_slot_boundaries() -> None:
    fast = plan(rows=1000, config=EmulatorConfig(validation_seconds=0.1, rows_per_second=50))

    # 0.3 s x 50 rows/s is 14.999999999999998 in floating point; it must count as 15.
    assert fast.processed_by(T0 + 0.1 + 0.3) == 15


def test_invalid_batch_fails_when_validation_ends() -> None:
    assert snapshot(plan(valid=False), T0 + 4).status == "validating"
    failed = snapshot(plan(valid=False), T0 + 5)

    assert (failed.status, failed.failed_at, failed.counted) == ("failed", T0 + 5, False)


def test_batch_expires_with_partial_rows_when_processing_outlasts_the_window() -> None:
    config = EmulatorConfig(validation_seconds=5, rows_per_second=1, completion_window_seconds=30)
    slow = plan(rows=100, config=config)

    assert snapshot(slow, T0 + 29).status == "in_progress"
    expired = snapshot(slow, T0 + 30)
    assert (expired.status, expired.processed, expired.expired_at) == ("expired", 25, T0 + 30)


def test_cancel_freezes_progress_and_finishes_after_cancel_seconds() -> None:
    config = EmulatorConfig(validation_seconds=5, rows_per_second=10, cancel_seconds=3)
    requested = T0 + 7

    cancelling = snapshot(plan(config=config), T0 + 8, cancel_requested=requested)
    cancelled = snapshot(plan(config=config), T0 + 10, cancel_requested=requested)

    assert (cancelling.status, cancelling.processed, cancelling.cancelled_at) == (
        "cancelling",
        20,
        None,
    )
    assert (cancelled.status, cancelled.processed) == ("cancelled", 20)
    assert (cancelled.cancelling_at, cancelled.cancelled_at) == (requested, T0 + 10)


def test_cancel_while_validating_runs_nothing() -> None:
    cancelled = snapshot(plan(), T0 + 100, cancel_requested=T0 + 1)

    assert (cancelled.status, cancelled.processed, cancelled.in_progress_at) == (
        "cancelled",
        0,
        None,
    )
