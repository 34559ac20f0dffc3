"""Same seed and same calls give byte-identical answers; another seed changes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from orchestrator.clock import ManualClock

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def transcript(api: Api) -> list[bytes]:
    """Run one scripted session and return every response body, files included."""
    bodies = []
    lines = [api.chat_line(f"q{i}", content=f"question {i}") for i in range(25)]
    uploaded = api.upload(api.jsonl(lines))
    bodies.append(uploaded.content)
    created = api.create(uploaded.json()["id"], metadata={"run": "1"})
    bodies.append(created.content)
    for _ in range(4):
        api.clock.advance(3)
        bodies.append(api.http.get(f"/batches/{created.json()['id']}").content)
    done = api.finish(created.json()["id"])
    for file_id in (done["output_file_id"], done["error_file_id"]):
        bodies.append(api.content(file_id))
    return bodies


def test_same_seed_and_calls_give_byte_identical_responses(make_api: MakeApi) -> None:
    config = {"seed": 3, "line_failure_rate": 0.2, "fail_custom_ids": {"q1"}}
    first = transcript(make_api("mock", own_clock=ManualClock(), **config))
    # over real HTTP this time: the adapter must not change a byte either
    second = transcript(make_api("server", own_clock=ManualClock(), **config))

    assert second == first


def faulted_transcript(api: Api) -> list[bytes]:
    """Two batches with every per-line fault and shuffling on; the result files' bytes."""
    api.emulator.faults.add_batch_fault(
        line_429=0.1, line_500=0.1, missing_lines=0.1, duplicate_lines=0.1, shuffle=True, times=None
    )
    api.emulator.faults.add("get_batch", status=503, probability=0.3, times=None)
    files = []
    for prefix in ("a", "b"):
        batch_id = api.submit(api.chat_file(120, prefix=prefix))["id"]
        api.clock.advance(3600)
        while (response := api.http.get(f"/batches/{batch_id}")).status_code != 200:
            files.append(response.content)
        done = response.json()
        files += [api.content(done["output_file_id"]), api.content(done["error_file_id"])]
    return files


def test_faulted_runs_are_byte_identical_too(make_api: MakeApi) -> None:
    config = {"seed": 8, "line_failure_rate": 0.05}
    first = faulted_transcript(make_api("mock", own_clock=ManualClock(), **config))
    second = faulted_transcript(make_api("server", own_clock=ManualClock(), **config))
    other_seed = faulted_transcript(make_api("mock", own_clock=ManualClock(), seed=9))

    assert second == first
    assert other_seed[-2:] != first[-2:]
    # the faults did act: some 429s and 500s, a shuffled order, a duplicate
    assert b'"status_code":429' in first[-1]
    assert b'"status_code":500' in first[-1]
    output_ids = [orjson.loads(line)["custom_id"] for line in first[-2].splitlines()]
    assert len(output_ids) != len(set(output_ids))
    assert output_ids != sorted(output_ids, key=lambda c: int(c[1:]))


def test_another_seed_gives_other_ids_and_texts(make_api: MakeApi) -> None:
    first = transcript(make_api(own_clock=ManualClock(), seed=1, fail_custom_ids={"q1"}))
    second = transcript(make_api(own_clock=ManualClock(), seed=2, fail_custom_ids={"q1"}))

    assert first[0] != second[0]
    assert first[-2] != second[-2]
