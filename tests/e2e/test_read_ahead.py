"""Planning starts the upload's first read of a large chunk while it writes the batch: the upload
takes it instead of reading again, and sends the very file it would have sent."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import runner
from tests.support import assert_results_match_provider, chat_body, enqueue, harness


def _requests(n: int, models: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"custom_id": f"r{i:03d}", "body": chat_body(i, model=models[(i // 7) % len(models)])}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("models", "hits"),
    [
        (("openai/gpt-4.1-nano",), 1),  # one model, one whole run: read ahead
        (("openai/gpt-4.1-nano", "openai/gpt-4.1-mini"), 0),  # two models: runs with gaps
    ],
)
def test_the_upload_takes_what_planning_read_ahead(
    db_url: str, monkeypatch: pytest.MonkeyPatch, models: tuple[str, ...], hits: int
) -> None:
    monkeypatch.setattr(runner, "READ_AHEAD_FROM", 50)
    enqueue(db_url, _requests(120, models))
    with harness(db_url) as h:
        h.run_until(lambda: h.emulator.ledger.batches != [] and h.job_status(1) != "running")
        assert h.job_status(1) == "completed"
        assert h.deps.prefetch.hits == hits
        assert len(h.deps.prefetch) == 0  # nothing left behind
        # every request's result, as the provider produced it from the file it was sent
        assert assert_results_match_provider(db_url, h.emulator) == 120
