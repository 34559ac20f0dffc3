"""The official anthropic SDK drives anthropic mode over real HTTP and parses every answer.

The SDK appends ``/v1/messages/batches`` to its ``base_url``, so it is given the server's bare
URL (``server.url``) and the emulator keeps its ``/v1`` prefix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any, cast

import anthropic
import pytest
from anthropic import Anthropic
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from anthropic.types.messages.batch_create_params import Request

from orchestrator.clock import ManualClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from orchestrator.emulator.lines import completion_text

MODEL = "claude-sonnet-4-5"


@dataclasses.dataclass
class Harness:
    client: Anthropic
    emulator: Emulator
    clock: ManualClock
    url: str


Make = Callable[..., Harness]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make(clock: ManualClock) -> Iterator[Make]:
    """``make(**config)``: an anthropic-mode emulator served over HTTP, and an SDK client."""
    with_closers: list[Callable[[], object]] = []

    def build(api_key: str = "k", **config: Any) -> Harness:
        config = {"mode": "anthropic", "api_key": "k", **config}
        emulator = Emulator(EmulatorConfig(**config), clock)
        server = EmulatorServer(emulator).start()
        client = Anthropic(base_url=server.url, api_key=api_key, max_retries=0)
        with_closers.extend([client.close, server.stop, emulator.close])
        return Harness(client, emulator, clock, server.url)

    yield build
    for close in reversed(with_closers):
        close()


def params(number: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"question {number}"}]
    return {"model": MODEL, "max_tokens": 256, "messages": messages, **extra}


def request(custom_id: str, body: dict[str, Any]) -> Request:
    return Request(custom_id=custom_id, params=cast(Any, body))


def requests(count: int, prefix: str = "r") -> list[Request]:
    return [request(f"{prefix}{i}", params(i)) for i in range(count)]


def run_to_end(h: Harness, batch_id: str, step: float = 1.0) -> tuple[MessageBatch, list[str]]:
    """Retrieve the batch, advancing the clock, until it has ended; and every status seen."""
    batch = h.client.messages.batches.retrieve(batch_id)
    seen: list[str] = [batch.processing_status]
    for _ in range(1000):
        if batch.processing_status == "ended":
            return batch, seen
        h.clock.advance(step)
        batch = h.client.messages.batches.retrieve(batch_id)
        seen.append(batch.processing_status)
    raise AssertionError(f"{batch_id} never ended")


def by_id(results: Any) -> dict[str, MessageBatchIndividualResponse]:
    return {line.custom_id: line for line in results}


def test_sdk_runs_a_message_batch_from_create_to_results(make: Make) -> None:
    h = make(fail_custom_ids=frozenset({"r2"}), rows_per_second=1)
    sent = requests(5)

    created = h.client.messages.batches.create(requests=sent)
    h.clock.advance(7)  # validation (5 s) and two rows: still in progress
    running = h.client.messages.batches.retrieve(created.id)
    ended, seen = run_to_end(h, created.id)
    results = by_id(h.client.messages.batches.results(created.id))

    assert created.id.startswith("msgbatch_")
    assert created.processing_status == "in_progress"
    assert created.results_url is None and created.ended_at is None
    assert created.expires_at - created.created_at == dt.timedelta(hours=24)
    # Counts say nothing until the whole batch has ended, then sum to the number of requests.
    assert running.request_counts.processing == 5
    assert running.request_counts.succeeded == 0
    assert set(seen) == {"in_progress", "ended"}
    counts = ended.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 4, 1)
    assert (counts.canceled, counts.expired) == (0, 0)
    assert ended.ended_at is not None and ended.ended_at > ended.created_at
    assert ended.results_url == f"{h.url}/v1/messages/batches/{created.id}/results"
    assert sorted(results) == ["r0", "r1", "r2", "r3", "r4"]
    failed = results["r2"].result
    assert failed.type == "errored"
    assert failed.error.error.type == "invalid_request_error"
    assert failed.error.request_id is not None and failed.error.request_id.startswith("req_")
    for number in (0, 1, 3, 4):
        answer = results[f"r{number}"].result
        assert answer.type == "succeeded"
        message = answer.message
        expected = completion_text(h.emulator.config, f"r{number}", params(number))
        assert message.content[0].type == "text"
        assert message.content[0].text == expected
        assert (message.role, message.model, message.stop_reason) == (
            "assistant",
            MODEL,
            "end_turn",
        )
        assert message.id.startswith("msg_")
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
        assert message.usage.cache_creation_input_tokens == 0
        assert message.usage.cache_read_input_tokens == 0


def test_sdk_reads_cache_writes_and_reads_in_the_usage(make: Make) -> None:
    h = make()
    system = [
        {
            "type": "text",
            "text": "policy " * 1200,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    sent = [request(f"c{i}", params(i, system=system)) for i in range(3)]

    batch = h.client.messages.batches.create(requests=sent)
    run_to_end(h, batch.id, step=10)
    usage = {
        cid: line.result.message.usage
        for cid, line in by_id(h.client.messages.batches.results(batch.id)).items()
        if line.result.type == "succeeded"
    }

    first = usage["c0"]  # the first request of a batch writes the cached prefix
    assert (
        first.cache_creation_input_tokens is not None and first.cache_creation_input_tokens >= 1024
    )
    assert first.cache_read_input_tokens == 0
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_1h_input_tokens == first.cache_creation_input_tokens
    assert first.cache_creation.ephemeral_5m_input_tokens == 0
    readers = [usage[cid] for cid in ("c1", "c2")]
    assert any(u.cache_read_input_tokens == first.cache_creation_input_tokens for u in readers)
    for u in readers:  # each request pays for the prefix once: written or read
        assert (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0) == (
            first.cache_creation_input_tokens
        )
        assert u.input_tokens == first.input_tokens


def test_sdk_lists_newest_first_and_pages_with_after_id(make: Make) -> None:
    h = make()
    created = []
    for number in range(5):
        created.append(h.client.messages.batches.create(requests=requests(1, f"b{number}-")).id)
        h.clock.advance(1)

    first = h.client.messages.batches.list(limit=2)
    second = h.client.messages.batches.list(limit=2, after_id=first.data[-1].id)
    everything = [batch.id for batch in h.client.messages.batches.list(limit=2)]

    newest = created[::-1]
    assert [b.id for b in first.data] == newest[:2]
    assert (first.has_more, first.first_id, first.last_id) == (True, newest[0], newest[1])
    assert [b.id for b in second.data] == newest[2:4]
    assert everything == newest  # the SDK's own paging follows last_id until has_more is false


def test_sdk_cancels_a_batch_that_ends_with_canceled_and_succeeded_requests(make: Make) -> None:
    h = make(rows_per_second=1, cancel_seconds=3)
    batch = h.client.messages.batches.create(requests=requests(5))
    h.clock.advance(7)  # two requests have run

    canceling = h.client.messages.batches.cancel(batch.id)
    still = h.client.messages.batches.retrieve(batch.id)
    h.clock.advance(3)
    ended = h.client.messages.batches.retrieve(batch.id)
    results = by_id(h.client.messages.batches.results(batch.id))

    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.results_url is None
    assert still.request_counts.processing == 5
    assert ended.processing_status == "ended"
    counts = ended.request_counts
    assert (counts.succeeded, counts.canceled, counts.processing) == (2, 3, 0)
    assert ended.cancel_initiated_at == canceling.cancel_initiated_at
    kinds = {cid: line.result.type for cid, line in results.items()}
    assert kinds == {
        "r0": "succeeded",
        "r1": "succeeded",
        "r2": "canceled",
        "r3": "canceled",
        "r4": "canceled",
    }
    with pytest.raises(anthropic.BadRequestError):  # an ended batch cannot be cancelled
        h.client.messages.batches.cancel(batch.id)


def test_sdk_deletes_only_an_ended_batch_and_then_it_is_gone(make: Make) -> None:
    h = make()
    batch = h.client.messages.batches.create(requests=requests(2))

    with pytest.raises(anthropic.BadRequestError) as running:
        h.client.messages.batches.delete(batch.id)
    run_to_end(h, batch.id, step=10)
    deleted = h.client.messages.batches.delete(batch.id)

    assert running.value.type == "invalid_request_error"
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError) as gone:
        h.client.messages.batches.retrieve(batch.id)
    assert gone.value.type == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        h.client.messages.batches.delete(batch.id)
    assert [b.id for b in h.client.messages.batches.list()] == []
    assert len(h.emulator.ledger.calls_to("delete_batch", 200)) == 1


def test_sdk_raises_its_own_exception_classes(make: Make) -> None:
    h = make()
    batch = h.client.messages.batches.create(requests=requests(1))
    wrong = Anthropic(base_url=h.url, api_key="wrong", max_retries=0)
    faults = h.emulator.faults

    with pytest.raises(anthropic.AuthenticationError) as unauthorized:
        wrong.messages.batches.retrieve(batch.id)
    wrong.close()
    faults.add("get_batch", status=429, retry_after=30)
    with pytest.raises(anthropic.RateLimitError) as limited:
        h.client.messages.batches.retrieve(batch.id)
    faults.add("create_batch", status=529)
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        h.client.messages.batches.create(requests=requests(1))
    faults.add("list_batches", status=500)
    with pytest.raises(anthropic.InternalServerError) as internal:
        h.client.messages.batches.list()
    with pytest.raises(anthropic.NotFoundError) as missing:
        h.client.messages.batches.retrieve("msgbatch_missing")
    faults.add("create_batch", status=429, code="enforced_spend_limit_reached")
    with pytest.raises(anthropic.RateLimitError) as capped:
        h.client.messages.batches.create(requests=requests(1))

    assert unauthorized.value.type == "authentication_error"
    assert unauthorized.value.request_id is not None
    assert limited.value.type == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "30"
    assert limited.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert isinstance(overloaded.value, anthropic.InternalServerError)
    assert (overloaded.value.status_code, overloaded.value.type) == (529, "overloaded_error")
    assert (internal.value.status_code, internal.value.type) == (500, "api_error")
    assert missing.value.type == "not_found_error"
    assert type(capped.value).__name__ == "EnforcedSpendLimitReachedError"
    assert capped.value.error_code == "enforced_spend_limit_reached"
    assert "retry-after" not in capped.value.response.headers
    assert len(h.emulator.ledger.batches) == 1  # refused creates made nothing


def test_sdk_sees_unfinished_requests_expire_at_the_deadline(make: Make) -> None:
    # 24 h in the real API; the config's completion window drives it, so a test can expire it.
    h = make(rows_per_second=1, completion_window_seconds=8)
    batch = h.client.messages.batches.create(requests=requests(6))

    h.clock.advance(7)
    before = h.client.messages.batches.retrieve(batch.id)
    h.clock.advance(1)
    ended = h.client.messages.batches.retrieve(batch.id)
    kinds = sorted(line.result.type for line in h.client.messages.batches.results(batch.id))

    assert before.processing_status == "in_progress"
    assert ended.processing_status == "ended"
    assert ended.ended_at == ended.expires_at
    assert (ended.request_counts.succeeded, ended.request_counts.expired) == (3, 3)
    assert kinds == ["expired"] * 3 + ["succeeded"] * 3


def test_sdk_refuses_results_before_the_batch_has_ended(make: Make) -> None:
    h = make()
    batch = h.client.messages.batches.create(requests=requests(1))

    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        h.client.messages.batches.results(batch.id)
    assert h.emulator.ledger.calls_to("file_content") == []  # the SDK never asked


def test_a_lost_create_answer_still_made_the_batch(make: Make) -> None:
    h = make()
    h.emulator.faults.add("create_batch", status=504, applied=True)

    with pytest.raises(anthropic.InternalServerError) as lost:
        h.client.messages.batches.create(requests=requests(3))
    (made,) = h.emulator.ledger.batches
    listed = list(h.client.messages.batches.list())

    assert (lost.value.status_code, lost.value.type) == (504, "timeout_error")
    assert made.id.startswith("msgbatch_")
    assert [(b.id, b.request_counts.processing) for b in listed] == [(made.id, 3)]


def test_a_results_stream_cut_short_breaks_the_sdk_read_and_the_next_one_is_whole(
    make: Make,
) -> None:
    h = make()
    batch = h.client.messages.batches.create(requests=requests(20))
    run_to_end(h, batch.id, step=10)
    h.emulator.faults.add("file_content", truncate=0.5)

    with pytest.raises(anthropic.APIConnectionError, match="peer closed connection"):
        list(h.client.messages.batches.results(batch.id))
    whole = [line.custom_id for line in h.client.messages.batches.results(batch.id)]

    assert sorted(whole) == sorted(f"r{i}" for i in range(20))
    assert len(h.emulator.produced(batch.id)) == 20
