"""The official google-genai SDK drives gemini mode over real HTTP, unchanged, end to end."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import httpx2  # google-genai's HTTP client (a fork of httpx under its own name)
import orjson
import pytest
from google import genai
from google.genai import errors, types

from orchestrator.clock import ManualClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer, GeminiBatchFault

MODEL = "gemini-2.5-flash"
KEY = "gemini-key"
DONE = {
    types.JobState.JOB_STATE_SUCCEEDED,
    types.JobState.JOB_STATE_FAILED,
    types.JobState.JOB_STATE_CANCELLED,
    types.JobState.JOB_STATE_EXPIRED,
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def emulator(clock: ManualClock) -> Iterator[Emulator]:
    config = EmulatorConfig(mode="gemini", api_key=KEY, rows_per_second=1, validation_seconds=5)
    with Emulator(config, clock) as emulator:
        yield emulator


@pytest.fixture
def server(emulator: Emulator) -> Iterator[EmulatorServer]:
    with EmulatorServer(emulator) as server:
        yield server


def sdk(server: EmulatorServer, key: str = KEY) -> genai.Client:
    options = types.HttpOptions(base_url=server.url, api_version="v1beta")
    return genai.Client(api_key=key, http_options=options)


@pytest.fixture
def client(server: EmulatorServer) -> genai.Client:
    return sdk(server)


def inline(text: str, key: str) -> types.InlinedRequest:
    content = types.Content(parts=[types.Part(text=text)], role="user")
    return types.InlinedRequest(contents=[content], metadata={"key": key})


def request_file(keys: list[str]) -> bytes:
    lines = (
        {"key": key, "request": {"contents": [{"parts": [{"text": f"Say {key}"}], "role": "user"}]}}
        for key in keys
    )
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload(client: genai.Client, content: bytes) -> types.File:
    return client.files.upload(
        file=io.BytesIO(content), config={"mime_type": "jsonl", "display_name": "requests"}
    )


def until_done(
    client: genai.Client, clock: ManualClock, name: str, step: float = 2.0
) -> tuple[types.BatchJob, list[Any]]:
    """Poll (advancing the clock) until the job is done; the job and the states seen."""
    states = []
    for _ in range(1000):
        job = client.batches.get(name=name)
        states.append(job.state)
        if job.state in DONE:
            return job, states
        clock.advance(step)
    raise AssertionError(f"{name} never finished")


def test_sdk_runs_an_inline_batch_and_reads_the_responses_in_order(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    keys = ["first", "second", "third"]
    created = client.batches.create(
        model=MODEL,
        src=[inline(f"Tell me about {key}", key) for key in keys],
        config={"display_name": "job-42-attempt-1"},
    )
    job, states = until_done(client, clock, str(created.name))

    assert created.state == types.JobState.JOB_STATE_PENDING
    assert str(created.name).startswith("batches/")
    assert created.model == f"models/{MODEL}"
    assert created.display_name == "job-42-attempt-1"
    assert created.end_time is None
    assert types.JobState.JOB_STATE_RUNNING in states
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.end_time is not None
    assert job.create_time is not None
    assert job.end_time > job.create_time
    assert job.dest is not None
    assert job.dest.inlined_responses is not None
    responses = job.dest.inlined_responses
    # In input order, each with its metadata echoed.
    assert [item.metadata for item in responses] == [{"key": key} for key in keys]
    produced = emulator.produced(str(job.name).removeprefix("batches/"))
    texts = [item.response.text for item in responses if item.response is not None]
    assert texts == [
        row["response"]["candidates"][0]["content"]["parts"][0]["text"] for row in produced
    ]
    assert len(set(texts)) == 3
    assert all(text is not None and len(text) == emulator.config.completion_chars for text in texts)
    for item in responses:
        assert item.response is not None
        assert item.response.text is not None
        usage = item.response.usage_metadata
        assert usage is not None
        assert usage.prompt_token_count is not None
        assert usage.prompt_token_count > 0
        assert usage.candidates_token_count == math.ceil(len(item.response.text) / 4)
        assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
        assert item.response.model_version == MODEL
        assert item.response.candidates is not None
        assert item.response.candidates[0].finish_reason == types.FinishReason.STOP
    # The ledger knows the batch by its display name (what a lost create is reconciled by).
    assert [b.metadata for b in emulator.ledger.batches] == [
        {"model": f"models/{MODEL}", "source": "inline", "displayName": "job-42-attempt-1"}
    ]


def test_sdk_runs_a_file_batch_and_downloads_the_responses_file(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    keys = ["k-a", "k-b", "k-c", "k-d"]
    uploaded = upload(client, request_file(keys))
    created = client.batches.create(model=MODEL, src=str(uploaded.name))
    job, _ = until_done(client, clock, str(created.name))
    assert job.dest is not None
    assert job.dest.file_name is not None
    generated = client.files.get(name=job.dest.file_name)
    lines = [orjson.loads(line) for line in client.files.download(file=generated).splitlines()]

    assert uploaded.source == types.FileSource.UPLOADED
    assert uploaded.size_bytes == len(request_file(keys))
    assert uploaded.download_uri is None
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest.inlined_responses is None
    assert generated.source == types.FileSource.GENERATED
    assert generated.download_uri is not None
    assert [line["key"] for line in lines] == keys
    assert lines == emulator.produced(str(job.name).removeprefix("batches/"))
    for line in lines:
        response = types.GenerateContentResponse.model_validate(line["response"])
        assert response.text is not None
        assert len(response.text) == emulator.config.completion_chars
        assert response.usage_metadata is not None
        assert response.usage_metadata.candidates_token_count == math.ceil(len(response.text) / 4)
    # Uploaded files cannot be downloaded (only generated ones).
    with pytest.raises(errors.ClientError) as refused:
        client.files.download(file=str(uploaded.name))
    assert refused.value.code == 400


def test_sdk_lists_batches_page_by_page(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    names = []
    for number in range(5):
        job = client.batches.create(model=MODEL, src=[inline("hi", f"r{number}")])
        names.append(job.name)
        clock.advance(1)

    pager = client.batches.list(config={"page_size": 2})
    first_page = [job.name for job in pager.page]
    listed = [job.name for job in pager]

    assert first_page == names[::-1][:2]
    assert listed == names[::-1]
    # Three pages of two, two and one.
    assert len(emulator.ledger.calls_to("list_batches", 200)) == 3


def test_sdk_cancels_and_deletes_batches(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    cancelled = client.batches.create(model=MODEL, src=[inline("hi", f"r{n}") for n in range(50)])
    kept = client.batches.create(model=MODEL, src=[inline("hi", "only")])
    clock.advance(10)
    client.batches.cancel(name=str(cancelled.name))
    clock.advance(10)
    after_cancel = client.batches.get(name=str(cancelled.name))
    client.batches.delete(name=str(cancelled.name))

    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name=str(cancelled.name))
    assert after_cancel.state == types.JobState.JOB_STATE_CANCELLED
    assert after_cancel.dest is None  # no results for a cancelled batch
    assert gone.value.code == 404
    assert gone.value.status == "NOT_FOUND"
    assert [job.name for job in client.batches.list()] == [kept.name]
    assert len(emulator.ledger.calls_to("delete_batch", 200)) == 1


def test_sdk_raises_its_own_errors_for_our_envelopes(
    server: EmulatorServer, client: genai.Client, emulator: Emulator
) -> None:
    job = client.batches.create(model=MODEL, src=[inline("hi", "a")])
    stranger = sdk(server, key="not-the-key")  # kept: a dropped Client closes its connections
    with pytest.raises(errors.ClientError) as bad_key:
        stranger.batches.get(name=str(job.name))
    emulator.faults.add("get_batch", status=429)
    emulator.faults.add("get_batch", status=429, retry_after=27)
    emulator.faults.add("get_batch", status=503)

    with pytest.raises(errors.ClientError) as limited:
        client.batches.get(name=str(job.name))
    with pytest.raises(errors.ClientError) as limited_with_delay:
        client.batches.get(name=str(job.name))
    with pytest.raises(errors.ServerError) as unavailable:
        client.batches.get(name=str(job.name))

    assert (bad_key.value.code, bad_key.value.status) == (400, "INVALID_ARGUMENT")
    assert bad_key.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    for error in (limited.value, limited_with_delay.value):
        assert error.response is not None
        assert "retry-after" not in error.response.headers
    details = [d["@type"].rsplit(".", 1)[-1] for d in limited.value.details["error"]["details"]]
    assert "RetryInfo" not in details
    delays = [
        d["retryDelay"]
        for d in limited_with_delay.value.details["error"]["details"]
        if d["@type"].endswith("RetryInfo")
    ]
    assert delays == ["27s"]
    assert (unavailable.value.code, unavailable.value.status) == (503, "UNAVAILABLE")


def test_sdk_sees_a_batch_expire_after_48_hours_with_nothing_to_show(
    clock: ManualClock,
) -> None:
    config = EmulatorConfig(mode="gemini", api_key=KEY, rows_per_second=0.00001)
    with Emulator(config, clock) as emulator, EmulatorServer(emulator) as server:
        client = sdk(server)
        job = client.batches.create(model=MODEL, src=[inline("hi", f"r{n}") for n in range(3)])
        clock.advance(48 * 3600 - 1)
        running = client.batches.get(name=str(job.name))
        clock.advance(1)
        expired = client.batches.get(name=str(job.name))

    assert running.state == types.JobState.JOB_STATE_RUNNING
    assert expired.state == types.JobState.JOB_STATE_EXPIRED
    assert expired.dest is None
    assert expired.end_time is not None
    assert expired.create_time is not None
    assert (expired.end_time - expired.create_time).total_seconds() == 48 * 3600


def test_a_lost_create_answer_was_carried_out(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    emulator.faults.add("create_batch", status=504, applied=True)

    with pytest.raises(errors.ServerError) as lost:
        client.batches.create(
            model=MODEL, src=[inline("hi", "a")], config={"display_name": "job-7-attempt-1"}
        )
    found = [job for job in client.batches.list() if job.display_name == "job-7-attempt-1"]

    assert (lost.value.code, lost.value.status) == (504, "DEADLINE_EXCEEDED")
    assert len(emulator.ledger.batches_with_metadata("displayName", "job-7-attempt-1")) == 1
    assert len(found) == 1
    assert found[0].name == f"batches/{emulator.ledger.batches[0].id}"


def test_a_truncated_download_breaks_the_read_and_a_retry_gets_it_whole(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    uploaded = upload(client, request_file(["a", "b", "c"]))
    job, _ = until_done(
        client, clock, str(client.batches.create(model=MODEL, src=str(uploaded.name)).name)
    )
    assert job.dest is not None
    assert job.dest.file_name is not None
    emulator.faults.add("file_content", truncate=0.5)

    with pytest.raises(httpx2.RemoteProtocolError):
        client.files.download(file=job.dest.file_name)
    whole = client.files.download(file=job.dest.file_name)

    assert [orjson.loads(line)["key"] for line in whole.splitlines()] == ["a", "b", "c"]


def test_succeeded_before_the_responses_file_is_visible(
    client: genai.Client, clock: ManualClock, emulator: Emulator
) -> None:
    emulator.faults.add("create_batch", GeminiBatchFault(hide_responses=60))
    uploaded = upload(client, request_file(["a", "b"]))
    job, _ = until_done(
        client, clock, str(client.batches.create(model=MODEL, src=str(uploaded.name)).name), step=1
    )
    assert job.dest is not None
    assert job.dest.file_name is not None

    with pytest.raises(errors.ClientError) as missing:
        client.files.download(file=job.dest.file_name)
    with pytest.raises(errors.ClientError) as missing_metadata:
        client.files.get(name=job.dest.file_name)
    clock.advance(60)
    visible = client.files.download(file=job.dest.file_name)

    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert (missing.value.code, missing_metadata.value.code) == (404, 404)
    assert [orjson.loads(line)["key"] for line in visible.splitlines()] == ["a", "b"]


def test_same_seed_gives_the_same_answers(clock: ManualClock) -> None:
    def run() -> tuple[str | None, list[Any]]:
        own = ManualClock()
        config = EmulatorConfig(mode="gemini", seed=7, rows_per_second=10)
        with Emulator(config, own) as emulator, EmulatorServer(emulator) as server:
            client = sdk(server)
            job = client.batches.create(
                model=MODEL, src=[inline(f"q{n}", f"r{n}") for n in range(3)]
            )
            own.advance(100)
            done = client.batches.get(name=str(job.name))
            assert done.dest is not None
            assert done.dest.inlined_responses is not None
            return job.name, [
                item.response.text for item in done.dest.inlined_responses if item.response
            ]

    assert run() == run()
