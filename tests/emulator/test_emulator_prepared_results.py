"""``prepare_results``: a batch's result files are written while it runs, as a provider has its
output ready when it says "completed"; the same files as those written when first asked for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.clock import ManualClock

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def _prepared(api: Api, batch_id: str) -> bool:
    deadline = time.monotonic() + 10  # our own emulator's thread, not a provider
    record = api.emulator._state.batch(batch_id)
    assert record is not None
    while record.prepared is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return record.prepared is not None


def test_result_files_are_written_while_the_batch_runs_and_match_those_written_later(
    make_api: MakeApi,
) -> None:
    ahead = make_api(own_clock=ManualClock(), seed=7, prepare_results=True, storage_dir=None)
    later = make_api(own_clock=ManualClock(), seed=7, storage_dir=None)
    lines = ahead.chat_file(200)
    # Given the same batch on an emulator that prepares results and one that does not
    first, second = ahead.submit(lines), later.submit(lines)
    # When the first has written its files while the batch is still validating
    assert _prepared(ahead, first["id"])
    assert ahead.get(first["id"])["status"] == "validating"
    # Then both end with the same output, byte for byte, with the same ids and times
    done_ahead, done_later = ahead.finish(first["id"]), later.finish(second["id"])
    assert done_ahead["status"] == done_later["status"] == "completed"
    assert done_ahead["output_file_id"] is not None
    assert ahead.content(done_ahead["output_file_id"]) == later.content(
        done_later["output_file_id"]
    )
    assert (done_ahead["completed_at"], done_ahead["request_counts"]) == (
        done_later["completed_at"],
        done_later["request_counts"],
    )


def test_a_batch_cancelled_before_it_ends_gets_files_for_what_ran_not_the_prepared_ones(
    make_api: MakeApi,
) -> None:
    api = make_api(
        own_clock=ManualClock(),
        prepare_results=True,
        storage_dir=None,
        rows_per_second=1,
        validation_seconds=1,
        mode="openai",
        cancel_seconds=1,
    )
    batch = api.submit(api.chat_file(500))
    assert _prepared(api, batch["id"])
    api.clock.advance(10)  # validating done; some rows run
    assert api.get(batch["id"])["status"] == "in_progress"
    assert api.http.post(f"/batches/{batch['id']}/cancel").status_code == 200
    cancelled = api.finish(batch["id"])
    assert cancelled["status"] == "cancelled"
    # (the rows not run are accounted for in the error file)
    ran = cancelled["request_counts"]["completed"]
    assert 0 < ran < 500
    output = api.content(cancelled["output_file_id"])
    assert len(api.parse_jsonl(output)) == cancelled["request_counts"]["completed"]
