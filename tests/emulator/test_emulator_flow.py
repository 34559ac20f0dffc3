"""Upload → create → poll → download, over both adapters and in both modes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from orchestrator.emulator import mock_transport

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]

BATCH_FIELDS = {
    "id", "object", "endpoint", "model", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", "created_at", "in_progress_at", "expires_at",
    "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at",
    "request_counts", "usage", "metadata",
}  # fmt: skip
USAGE_FIELDS = {
    "input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details",
    "total_tokens",
}  # fmt: skip


def test_fastrouter_batch_walks_every_status_and_downloads_both_files(
    make_api: MakeApi, adapter: str
) -> None:
    # Given 10 lines of which r3 fails, at 2 rows per virtual second
    api = make_api(adapter, fail_custom_ids={"r3"}, rows_per_second=2)
    created = api.submit(api.chat_file(10), metadata={"job": "j1"})

    # When the clock moves on in 1 s steps
    seen = [created["status"]]
    batch = created
    while batch["status"] != "completed":
        api.clock.advance(1)
        batch = api.get(created["id"])
        if batch["status"] != seen[-1]:
            seen.append(batch["status"])

    # Then every status was observed, in order, and the files hold every line exactly once
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert batch["request_counts"] == {"total": 10, "completed": 9, "failed": 1}
    output = api.parse_jsonl(api.content(batch["output_file_id"]))
    errors = api.parse_jsonl(api.content(batch["error_file_id"]))
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(10) if i != 3]
    assert [line["custom_id"] for line in errors] == ["r3"]
    assert batch["metadata"] == {"job": "j1"}


def test_fastrouter_batch_object_carries_every_documented_field(make_api: MakeApi) -> None:
    api = make_api()
    created = api.submit(api.chat_file(3))

    done = api.finish(created["id"])

    assert set(done) == BATCH_FIELDS | {"batch_id"}
    assert done["id"] == done["batch_id"]
    assert done["id"].startswith("fr_batch-")
    assert done["object"] == "batch"
    assert done["model"] == "openai/gpt-4o-mini"
    assert done["errors"] is None
    assert done["expires_at"] == done["created_at"] + 86400
    assert created["expires_at"] == done["expires_at"]
    assert set(done["usage"]) == USAGE_FIELDS | {"cost"}
    assert isinstance(done["usage"]["cost"], float)
    assert done["usage"]["cost"] > 0
    assert done["usage"]["total_tokens"] == (
        done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    )
    assert done["error_file_id"] is None


def test_openai_mode_shapes_batches_and_files_like_openai(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    uploaded = api.upload(api.chat_file(2)).json()
    created = api.create(uploaded["id"]).json()

    done = api.finish(created["id"])

    assert set(uploaded) == {
        "id", "object", "bytes", "created_at", "filename", "purpose", "status", "expires_at",
        "status_details",
    }  # fmt: skip
    assert uploaded["status"] == "processed"
    assert set(done) == BATCH_FIELDS
    assert done["id"].startswith("batch_")
    assert set(done["usage"]) == USAGE_FIELDS
    output = api.http.get(f"/files/{done['output_file_id']}").json()
    assert output["purpose"] == "batch_output"
    assert output["filename"] == f"{done['id']}_output.jsonl"


def test_request_counts_rise_while_in_progress(make_api: MakeApi) -> None:
    api = make_api(rows_per_second=10, validation_seconds=5, fail_custom_ids={"r0", "r1"})
    batch_id = api.submit(api.chat_file(50))["id"]

    seen = []
    for step in (4, 1, 1, 3, 1):
        api.clock.advance(step)
        batch = api.get(batch_id)
        seen.append((batch["status"], batch["request_counts"]))

    assert seen == [
        ("validating", {"total": 0, "completed": 0, "failed": 0}),
        ("in_progress", {"total": 50, "completed": 0, "failed": 0}),
        ("in_progress", {"total": 50, "completed": 8, "failed": 2}),
        ("in_progress", {"total": 50, "completed": 38, "failed": 2}),
        ("finalizing", {"total": 50, "completed": 48, "failed": 2}),
    ]


def test_success_line_has_the_openai_output_shape(make_api: MakeApi) -> None:
    api = make_api(completion_chars=120)
    line = api.chat_line("a", model="openai/gpt-4.1-nano")
    done = api.finish(api.submit(api.jsonl([line]))["id"])

    (result,) = api.parse_jsonl(api.content(done["output_file_id"]))

    assert result["id"].startswith("batch_req_")
    assert result["error"] is None
    assert result["response"]["status_code"] == 200
    assert result["response"]["request_id"].startswith("req_")
    body = result["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "openai/gpt-4.1-nano"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"]) == 120
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] >= 1
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def test_failing_line_goes_to_the_error_file_as_a_400_response(make_api: MakeApi) -> None:
    api = make_api(fail_custom_ids={"bad"})
    lines = [api.chat_line("ok"), api.chat_line("bad")]
    done = api.finish(api.submit(api.jsonl(lines))["id"])

    (error,) = api.parse_jsonl(api.content(done["error_file_id"]))

    assert error["custom_id"] == "bad"
    assert error["error"] is None
    assert error["response"]["status_code"] == 400
    assert set(error["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    assert error["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_fail_custom_ids_fail_exactly_those_lines(make_api: MakeApi) -> None:
    failing = {f"r{i}" for i in range(0, 40, 7)}
    api = make_api(fail_custom_ids=failing)
    done = api.finish(api.submit(api.chat_file(40))["id"])

    errors = api.parse_jsonl(api.content(done["error_file_id"]))
    output = api.parse_jsonl(api.content(done["output_file_id"]))

    assert {line["custom_id"] for line in errors} == failing
    assert len(output) == 40 - len(failing)
    assert [line["custom_id"] for line in output] == [
        f"r{i}" for i in range(40) if f"r{i}" not in failing
    ]
    assert {line["response"]["status_code"] for line in output} == {200}
    assert {line["custom_id"]: line["response"]["body"]["error"]["message"] for line in errors} == {
        c: f"Emulated failure: custom_id {c!r} is in fail_custom_ids." for c in failing
    }
    assert done["request_counts"] == {"total": 40, "completed": 34, "failed": 6}


def test_output_file_id_stays_null_when_every_line_fails(make_api: MakeApi) -> None:
    api = make_api(line_failure_rate=1.0)
    done = api.finish(api.submit(api.chat_file(4))["id"])

    assert done["status"] == "completed"
    assert done["output_file_id"] is None
    assert done["error_file_id"] is not None
    assert done["request_counts"] == {"total": 4, "completed": 0, "failed": 4}
    assert len(api.parse_jsonl(api.content(done["error_file_id"]))) == 4
    assert [
        (line["custom_id"], line["response"]["body"]["error"]["message"])
        for line in api.parse_jsonl(api.content(done["error_file_id"]))
    ] == [(f"r{i}", f"Emulated failure: line_failure_rate=1.0 selected 'r{i}'.") for i in range(4)]


def test_line_failure_rate_fails_a_stable_share(make_api: MakeApi) -> None:
    first = make_api(line_failure_rate=0.25, seed=7)
    second = make_api(line_failure_rate=0.25, seed=7)

    counts = [
        api.finish(api.submit(api.chat_file(400))["id"])["request_counts"]
        for api in (first, second)
    ]

    assert counts[0] == counts[1]
    assert 60 <= counts[0]["failed"] <= 140


def test_line_without_model_fails_like_the_real_api(make_api: MakeApi) -> None:
    api = make_api()
    line = api.chat_line("x")
    del line["body"]["model"]
    done = api.finish(api.submit(api.jsonl([line]))["id"])

    (error,) = api.parse_jsonl(api.content(done["error_file_id"]))

    assert error["response"]["body"]["error"]["param"] == "model"


def test_max_tokens_cuts_the_reply_with_finish_reason_length(make_api: MakeApi) -> None:
    api = make_api(completion_chars=400)
    line = api.chat_line("a")
    line["body"]["max_tokens"] = 5
    done = api.finish(api.submit(api.jsonl([line]))["id"])

    (result,) = api.parse_jsonl(api.content(done["output_file_id"]))

    body = result["response"]["body"]
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_embeddings_batch_returns_deterministic_vectors(make_api: MakeApi) -> None:
    api = make_api(embedding_dimensions=4)
    lines = [
        {
            "custom_id": f"e{i}",
            "provider": "openai",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "openai/text-embedding-3-small", "input": ["a", f"b{i}"]},
        }
        for i in range(3)
    ]
    created = api.submit(api.jsonl(lines), endpoint="/v1/embeddings")
    done = api.finish(created["id"])

    results = api.parse_jsonl(api.content(done["output_file_id"]))

    body = results[0]["response"]["body"]
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(len(item["embedding"]) == 4 for item in body["data"])
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    # the same input gets the same vector only for the same custom_id (seeded by both)
    assert body["data"][0]["embedding"] != results[1]["response"]["body"]["data"][0]["embedding"]
    assert done["usage"]["output_tokens"] == 0


def test_shuffled_output_order_is_a_stable_permutation(make_api: MakeApi) -> None:
    orders = []
    for _ in range(2):
        api = make_api(output_order="shuffled")
        done = api.finish(api.submit(api.chat_file(30))["id"])
        orders.append(
            [r["custom_id"] for r in api.parse_jsonl(api.content(done["output_file_id"]))]
        )

    assert orders[0] == orders[1]
    assert sorted(orders[0]) == sorted(f"r{i}" for i in range(30))
    assert orders[0] != [f"r{i}" for i in range(30)]


def test_expired_batch_keeps_partial_results(make_api: MakeApi) -> None:
    api = make_api(rows_per_second=1, validation_seconds=0, completion_window_seconds=4)
    created = api.submit(api.chat_file(10))

    api.clock.advance(4)
    done = api.get(created["id"])

    assert done["status"] == "expired"
    assert done["expired_at"] == created["created_at"] + 4
    assert done["request_counts"] == {"total": 10, "completed": 4, "failed": 6}
    output = api.parse_jsonl(api.content(done["output_file_id"]))
    errors = api.parse_jsonl(api.content(done["error_file_id"]))
    assert [line["custom_id"] for line in output] == ["r0", "r1", "r2", "r3"]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert [line["custom_id"] for line in errors] == [f"r{i}" for i in range(4, 10)]
    assert all(line["response"] is None for line in errors)


def test_cancel_keeps_finished_lines_and_cancels_the_rest(make_api: MakeApi) -> None:
    api = make_api(mode="openai", rows_per_second=1, validation_seconds=0, cancel_seconds=2)
    created = api.submit(api.chat_file(10))
    api.clock.advance(3)

    cancelling = api.http.post(f"/batches/{created['id']}/cancel").json()
    again = api.http.post(f"/batches/{created['id']}/cancel").json()
    api.clock.advance(2)
    done = api.get(created["id"])

    assert cancelling["status"] == again["status"] == "cancelling"
    assert cancelling["cancelling_at"] == created["created_at"] + 3
    assert done["status"] == "cancelled"
    assert done["cancelled_at"] == created["created_at"] + 5
    assert done["request_counts"] == {"total": 10, "completed": 3, "failed": 7}
    errors = api.parse_jsonl(api.content(done["error_file_id"]))
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert len(api.parse_jsonl(api.content(done["output_file_id"]))) == 3
    output = api.parse_jsonl(api.content(done["output_file_id"]))
    assert [line["custom_id"] for line in output] == ["r0", "r1", "r2"]
    assert [line["custom_id"] for line in errors] == [f"r{i}" for i in range(3, 10)]


def test_cancel_of_a_finished_batch_is_refused(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    done = api.finish(api.submit(api.chat_file(1))["id"])

    response = api.http.post(f"/batches/{done['id']}/cancel")

    assert response.status_code == 400
    assert "completed" in response.json()["error"]["message"]


def test_list_batches_pages_newest_first_with_a_cursor(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    file_id = api.upload_id(api.chat_file(1))
    ids = []
    for _ in range(5):
        ids.append(api.create(file_id).json()["id"])
        api.clock.advance(1)

    first = api.http.get("/batches", params={"limit": 2}).json()
    second = api.http.get("/batches", params={"limit": 2, "after": first["last_id"]}).json()
    last = api.http.get("/batches", params={"limit": 2, "after": second["last_id"]}).json()

    newest = ids[::-1]
    assert [b["id"] for b in first["data"]] == newest[:2]
    assert (first["object"], first["first_id"], first["has_more"]) == ("list", newest[0], True)
    assert [b["id"] for b in second["data"]] == newest[2:4]
    assert ([b["id"] for b in last["data"]], last["has_more"]) == (newest[4:], False)
    assert api.http.get("/batches").json()["data"][0]["id"] == newest[0]
    assert api.http.get("/batches", params={"limit": 101}).status_code == 400


def test_deleting_the_input_file_does_not_break_a_running_batch(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    file_id = api.upload_id(api.chat_file(3))
    batch_id = api.create(file_id).json()["id"]

    deleted = api.http.delete(f"/files/{file_id}")
    done = api.finish(batch_id)

    assert deleted.json() == {"id": file_id, "object": "file", "deleted": True}
    assert api.http.get(f"/files/{file_id}").status_code == 404
    assert api.http.delete(f"/files/{file_id}").status_code == 404
    assert len(api.parse_jsonl(api.content(done["output_file_id"]))) == 3
    output = api.parse_jsonl(api.content(done["output_file_id"]))
    assert [(line["custom_id"], line["response"]["status_code"]) for line in output] == [
        ("r0", 200), ("r1", 200), ("r2", 200),
    ]  # fmt: skip


def test_ledger_records_files_batches_and_calls(make_api: MakeApi) -> None:
    api = make_api()
    created = api.submit(api.chat_file(2), metadata={"orchestrator_key": "k1"})
    api.get(created["id"])
    api.http.get("/batches/fr_batch-missing")

    ledger = api.emulator.ledger

    (file_entry,) = ledger.files
    assert (file_entry.num_rows, file_entry.purpose, file_entry.filename) == (
        2,
        "batch",
        "batch.jsonl",
    )
    assert [b.id for b in ledger.batches_with_metadata("orchestrator_key", "k1")] == [created["id"]]
    assert ledger.batches_with_metadata("orchestrator_key", "other") == []
    assert [c.route for c in ledger.calls] == [
        "upload_file",
        "create_batch",
        "get_batch",
        "get_batch",
    ]
    assert [c.status for c in ledger.calls_to("get_batch")] == [200, 404]
    assert len(ledger.calls_to("get_batch", status=404)) == 1


def test_file_contents_live_on_disk_not_in_memory(make_api: MakeApi, tmp_path: Any) -> None:
    api = make_api(storage_dir=tmp_path / "store")
    api.submit(api.chat_file(5))

    blobs = list((tmp_path / "store").rglob("blob-*"))

    assert len(blobs) == 1
    assert blobs[0].read_bytes() == api.chat_file(5)


@pytest.mark.parametrize("mode", ["fastrouter", "openai"])
def test_large_upload_streams_over_real_http(make_api: MakeApi, mode: str) -> None:
    api = make_api("server", mode=mode, completion_chars=900, rows_per_second=100_000)
    content = api.chat_file(5000)

    uploaded = api.upload(content)
    done = api.finish(api.create(uploaded.json()["id"]).json()["id"])
    response = api.http.get(f"/files/{done['output_file_id']}/content")

    assert uploaded.json()["bytes"] == len(content)
    assert api.emulator.ledger.files[0].num_rows == 5000
    assert int(response.headers["content-length"]) == len(response.content)
    assert len(response.content) > 5000 * 1000
    assert response.content.count(b"\n") == 5000


def test_mock_transport_also_serves_an_async_client(make_api: MakeApi) -> None:
    api = make_api()
    done = api.finish(api.submit(api.chat_file(2))["id"])

    async def download() -> bytes:
        transport = mock_transport(api.emulator)
        headers = {"Authorization": "Bearer k"}
        async with httpx.AsyncClient(transport=transport, headers=headers) as client:
            response = await client.get(f"http://e/v1/files/{done['output_file_id']}/content")
            return response.content

    assert len(api.parse_jsonl(asyncio.run(download()))) == 2
