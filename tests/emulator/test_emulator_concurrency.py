"""Many client threads at once: state stays consistent and every call is in the ledger."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def test_concurrent_clients_get_distinct_ids_and_a_complete_ledger(make_api: MakeApi) -> None:
    api = make_api("server")

    def one_job(number: int) -> str:
        batch = api.submit(api.chat_file(20, prefix=f"j{number}-"))
        api.get(batch["id"])
        return str(batch["id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        batch_ids = list(pool.map(one_job, range(24)))
    api.clock.advance(3600)
    with ThreadPoolExecutor(max_workers=8) as pool:
        finished = list(pool.map(api.get, batch_ids * 2))

    ledger = api.emulator.ledger
    assert len(set(batch_ids)) == 24
    assert len({f.id for f in ledger.files}) == 24
    assert {b["status"] for b in finished} == {"completed"}
    # every batch wrote its result file once, however many threads looked at it first
    assert len({b["output_file_id"] for b in finished}) == 24
    assert len(ledger.calls) == 24 * 3 + 48
    assert {c.status for c in ledger.calls} == {200}
