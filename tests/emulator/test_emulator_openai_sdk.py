"""The official openai SDK drives openai mode over real HTTP and parses every answer."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import orjson
import pytest
from openai import OpenAI
from openai.types import Batch

from orchestrator.clock import ManualClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


_EMULATORS: dict[int, Emulator] = {}


@pytest.fixture
def client(clock: ManualClock) -> Iterator[OpenAI]:
    config = EmulatorConfig(mode="openai", fail_custom_ids=frozenset({"r2"}), rows_per_second=1)
    with Emulator(config, clock) as emulator, EmulatorServer(emulator) as server:
        sdk = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        _EMULATORS[id(sdk)] = emulator
        yield sdk
        del _EMULATORS[id(sdk)]
        sdk.close()


def server_of(client: OpenAI) -> Emulator:
    """The emulator behind the ``client`` fixture."""
    return _EMULATORS[id(client)]


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


def create(client: OpenAI, file_id: str) -> Batch:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def test_sdk_pages_through_a_long_list_by_hand_and_automatically(
    client: OpenAI, clock: ManualClock
) -> None:
    uploaded = client.files.create(file=("batch.jsonl", batch_file(1)), purpose="batch")
    created = []
    for _ in range(7):
        created.append(create(client, uploaded.id).id)
        clock.advance(1)

    first = client.batches.list(limit=3)
    second = first.get_next_page()
    third = second.get_next_page()
    everything = [batch.id for batch in client.batches.list(limit=2)]

    newest = created[::-1]
    assert [b.id for b in first.data] == newest[:3]
    assert (first.has_more, first.has_next_page()) == (True, True)
    assert [b.id for b in second.data] == newest[3:6]
    assert [b.id for b in third.data] == newest[6:]
    assert (third.has_more, third.has_next_page()) == (False, False)
    assert everything == newest


def test_sdk_parses_failed_expired_and_faulted_batches(clock: ManualClock) -> None:
    config = EmulatorConfig(
        mode="openai", enqueued_token_limit=50, rows_per_second=1, completion_window_seconds=8
    )
    with Emulator(config, clock) as emulator, EmulatorServer(emulator) as server:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        invalid = (
            b'{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions", "body": {}}\n'
        )
        bad_file = client.files.create(file=("bad.jsonl", invalid), purpose="batch")
        good_file = client.files.create(file=("ok.jsonl", batch_file(6)), purpose="batch")
        emulator.faults.add_batch_fault(no_usage=True, empty_error_file_id=True)
        expiring = create(client, good_file.id)  # marked; runs out of time after 3 of 6 rows
        over_budget = create(client, good_file.id)  # 6 x 7 tokens on top of the first 42
        invalid_batch = create(client, bad_file.id)
        clock.advance(10)

        expired = client.batches.retrieve(expiring.id)
        token_limited = client.batches.retrieve(over_budget.id)
        failed = client.batches.retrieve(invalid_batch.id)
        errors = client.files.content(expired.error_file_id or "").text.splitlines()
        client.close()

    assert expired.status == "expired"
    assert expired.usage is None
    assert expired.request_counts is not None
    assert (expired.request_counts.completed, expired.request_counts.failed) == (3, 3)
    assert {orjson.loads(line)["error"]["code"] for line in errors} == {"batch_expired"}
    assert token_limited.status == "failed"
    assert token_limited.errors is not None and token_limited.errors.data is not None
    (limit_error,) = token_limited.errors.data
    assert (limit_error.code, limit_error.line, limit_error.param) == (
        "token_limit_exceeded",
        None,
        None,
    )
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.code, e.line) for e in failed.errors.data] == [("invalid_method", 1)]


def test_sdk_reports_a_truncated_download_as_a_connection_error(
    client: OpenAI, clock: ManualClock
) -> None:
    uploaded = client.files.create(file=("batch.jsonl", batch_file(5)), purpose="batch")
    batch = create(client, uploaded.id)
    clock.advance(600)
    output_id = client.batches.retrieve(batch.id).output_file_id or ""
    emulator = server_of(client)
    emulator.faults.add("file_content", truncate=0.5)

    with pytest.raises(openai.APIConnectionError):
        client.files.content(output_id)

    assert len(client.files.content(output_id).text.splitlines()) == 4


def test_sdk_retries_a_429_after_the_retry_after_we_send(clock: ManualClock) -> None:
    with (
        Emulator(EmulatorConfig(mode="openai"), clock) as emulator,
        EmulatorServer(emulator) as server,
    ):
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=2)
        uploaded = client.files.create(file=("batch.jsonl", batch_file(1)), purpose="batch")
        emulator.faults.add("create_batch", status=429, retry_after=0.01)
        batch = create(client, uploaded.id)
        client.close()

    assert batch.status == "validating"
    assert [c.status for c in emulator.ledger.calls_to("create_batch")] == [429, 200]
    assert len(emulator.ledger.batches) == 1
