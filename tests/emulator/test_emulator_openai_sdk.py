"""The official openai SDK drives openai mode over real HTTP and parses every answer."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import orjson
import pytest
from openai import OpenAI

from orchestrator.clock import ManualClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def client(clock: ManualClock) -> Iterator[OpenAI]:
    config = EmulatorConfig(mode="openai", fail_custom_ids=frozenset({"r2"}), rows_per_second=1)
    with Emulator(config, clock) as emulator, EmulatorServer(emulator) as server:
        sdk = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        yield sdk
        sdk.close()


def batch_file(count: int) -> bytes:
    lines = (
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{i}"}]},
        }
        for i in range(count)
    )
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def test_sdk_runs_a_batch_from_upload_to_results(client: OpenAI, clock: ManualClock) -> None:
    uploaded = client.files.create(file=("batch.jsonl", batch_file(5)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"orchestrator_key": "abc"},
    )
    statuses = [batch.status]
    while batch.status not in TERMINAL:
        clock.advance(2)
        batch = client.batches.retrieve(batch.id)
        statuses.append(batch.status)

    assert uploaded.purpose == "batch"
    assert statuses[0] == "validating"
    assert "in_progress" in statuses
    assert statuses[-1] == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (4, 1)
    assert batch.usage is not None
    assert batch.usage.total_tokens > 0
    assert batch.metadata == {"orchestrator_key": "abc"}
    assert batch.output_file_id is not None
    assert batch.error_file_id is not None
    output = client.files.content(batch.output_file_id).text.splitlines()
    errors = client.files.content(batch.error_file_id).text.splitlines()
    assert sorted(orjson.loads(line)["custom_id"] for line in output) == ["r0", "r1", "r3", "r4"]
    assert [orjson.loads(line)["custom_id"] for line in errors] == ["r2"]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_sdk_lists_and_cancels_batches(client: OpenAI, clock: ManualClock) -> None:
    uploaded = client.files.create(file=("batch.jsonl", batch_file(3)), purpose="batch")
    created = []
    for _ in range(3):
        created.append(
            client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id
        )
        clock.advance(1)

    listed = [batch.id for batch in client.batches.list(limit=2)]
    cancelling = client.batches.cancel(created[0])
    clock.advance(10)
    cancelled = client.batches.retrieve(created[0])
    deleted = client.files.delete(uploaded.id)

    assert listed == created[::-1]
    assert cancelling.status == "cancelling"
    assert cancelled.status == "cancelled"
    assert cancelled.request_counts is not None
    assert cancelled.request_counts.total == 3
    assert deleted.deleted is True


def test_sdk_raises_its_own_errors_for_our_envelopes(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_missing")
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )

    assert missing.value.status_code == 404
    assert bad.value.param == "input_file_id"
