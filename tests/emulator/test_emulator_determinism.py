"""Same seed and same calls give byte-identical answers; another seed changes them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

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


def test_another_seed_gives_other_ids_and_texts(make_api: MakeApi) -> None:
    first = transcript(make_api(own_clock=ManualClock(), seed=1, fail_custom_ids={"q1"}))
    second = transcript(make_api(own_clock=ManualClock(), seed=2, fail_custom_ids={"q1"}))

    assert first[0] != second[0]
    assert first[-2] != second[-2]
