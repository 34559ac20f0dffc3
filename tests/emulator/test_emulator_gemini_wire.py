"""Gemini mode's wire format, read raw (httpx through the in-process transport): the Operation,
batchStats as strings, errors, limits, row errors, the Gemini-only faults and the command line."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from orchestrator.clock import ManualClock
from orchestrator.emulator import (
    Emulator,
    EmulatorConfig,
    EmuRequest,
    GeminiBatchFault,
    mock_transport,
    parse_fault_spec,
)
from orchestrator.emulator.server import add_arguments, config_from_args

KEY = "gemini-key"
CREATE = "/v1beta/models/gemini-2.5-flash:batchGenerateContent"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"

MakeGemini = Callable[..., "Gemini"]


class Gemini:
    """An httpx client talking to a gemini-mode emulator in process."""

    def __init__(self, emulator: Emulator, clock: ManualClock) -> None:
        self.emulator = emulator
        self.clock = clock
        self.http = httpx.Client(
            transport=mock_transport(emulator),
            base_url="http://gemini.test",
            headers={"x-goog-api-key": KEY},
        )

    def create(self, requests: list[dict[str, Any]], **batch: Any) -> httpx.Response:
        body = {"batch": {"inputConfig": {"requests": {"requests": requests}}, **batch}}
        return self.http.post(CREATE, json=body)

    def submit(self, requests: list[dict[str, Any]], **batch: Any) -> dict[str, Any]:
        response = self.create(requests, **batch)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get(self, name: str) -> dict[str, Any]:
        response = self.http.get(f"/v1beta/{name}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def finish(self, name: str, step: float = 5.0) -> dict[str, Any]:
        for _ in range(1000):
            operation = self.get(name)
            if operation.get("done"):
                return operation
            self.clock.advance(step)
        raise AssertionError(f"{name} never finished")

    def upload(self, content: bytes) -> dict[str, Any]:
        start = self.http.post(
            "/upload/v1beta/files",
            json={"file": {"displayName": "requests"}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(len(content)),
                "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            },
        )
        assert start.status_code == 200, start.text
        url = start.headers["x-goog-upload-url"]
        # The SDK sends no key with the bytes: the session URL is the credential.
        done = self.http.post(
            url,
            content=content,
            headers={
                "x-goog-api-key": "",
                "X-Goog-Upload-Command": "upload, finalize",
                "X-Goog-Upload-Offset": "0",
            },
        )
        assert done.status_code == 200, done.text
        assert done.headers["x-goog-upload-status"] == "final"
        return dict(done.json()["file"])


def request(text: str, key: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"request": {"contents": [{"parts": [{"text": text}], "role": "user"}]}}
    if key is not None:
        item["metadata"] = {"key": key}
    return item


def file_lines(keys: list[str]) -> bytes:
    lines = ({"key": key, "request": request(f"about {key}")["request"]} for key in keys)
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


@pytest.fixture
def make_gemini(clock: ManualClock, tmp_path: Path) -> Iterator[MakeGemini]:
    made: list[Gemini] = []

    def make(own_clock: ManualClock | None = None, **config: Any) -> Gemini:
        config = {"mode": "gemini", "api_key": KEY, "storage_dir": tmp_path / "store", **config}
        used = own_clock or clock
        gemini = Gemini(Emulator(EmulatorConfig(**config), used), used)
        made.append(gemini)
        return gemini

    yield make
    for gemini in made:
        gemini.http.close()
        gemini.emulator.close()


@pytest.fixture
def gemini(make_gemini: MakeGemini) -> Gemini:
    return make_gemini(rows_per_second=1, validation_seconds=5)


def test_create_answers_a_pending_operation_without_done(gemini: Gemini) -> None:
    operation = gemini.submit([request("a", "r0"), request("b", "r1")], displayName="job-1")

    metadata = operation["metadata"]
    assert re.fullmatch(r"batches/[a-z0-9]+", operation["name"])
    assert "done" not in operation
    assert "response" not in operation
    assert metadata["@type"].endswith("v1main.GenerateContentBatch")
    assert metadata["state"] == "BATCH_STATE_PENDING"
    assert metadata["batchStats"] == {"requestCount": "2", "pendingRequestCount": "2"}
    assert metadata["model"] == "models/gemini-2.5-flash"
    assert metadata["displayName"] == "job-1"
    assert metadata["name"] == operation["name"]
    assert STAMP.match(metadata["createTime"])
    assert STAMP.match(metadata["updateTime"])
    assert "endTime" not in metadata
    assert metadata["inputConfig"] == {
        "requests": {"requests": [request("a", "r0"), request("b", "r1")]}
    }


def test_a_finished_batch_has_its_output_in_response_and_metadata(gemini: Gemini) -> None:
    name = gemini.submit([request("a", "r0"), request("b"), request("c", "r2")])["name"]
    gemini.clock.advance(6)
    running = gemini.get(name)
    done = gemini.finish(name)

    metadata = done["metadata"]
    assert running["metadata"]["state"] == "BATCH_STATE_RUNNING"
    assert running["metadata"]["batchStats"] == {
        "requestCount": "3",
        "successfulRequestCount": "1",
        "pendingRequestCount": "2",
    }
    assert done["done"] is True
    assert metadata["state"] == "BATCH_STATE_SUCCEEDED"
    assert metadata["batchStats"] == {"requestCount": "3", "successfulRequestCount": "3"}
    assert STAMP.match(metadata["endTime"])
    assert metadata["endTime"] == metadata["updateTime"]
    assert done["response"] == {"@type": OUTPUT_TYPE, **metadata["output"]}
    rows = metadata["output"]["inlinedResponses"]["inlinedResponses"]
    assert [row.get("metadata") for row in rows] == [{"key": "r0"}, None, {"key": "r2"}]
    for row in rows:
        answer = row["response"]
        assert answer["candidates"][0]["content"]["role"] == "model"
        assert answer["candidates"][0]["finishReason"] == "STOP"
        assert set(answer["usageMetadata"]) >= {
            "promptTokenCount",
            "candidatesTokenCount",
            "totalTokenCount",
        }
        assert answer["modelVersion"] == "gemini-2.5-flash"
        assert answer["responseId"]


def test_snake_case_bodies_and_the_key_in_the_query_are_accepted(gemini: Gemini) -> None:
    body = {
        "batch": {
            "display_name": "snake",
            "input_config": {"requests": {"requests": [request("a", "r0")]}},
        }
    }
    response = gemini.http.post(
        CREATE, json=body, params={"key": KEY}, headers={"x-goog-api-key": ""}
    )

    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["displayName"] == "snake"


def test_an_inline_body_over_20_mb_is_refused(gemini: Gemini) -> None:
    padding = "x" * (20 * 1024 * 1024)
    response = gemini.create([request(padding, "big")])

    assert response.status_code == 400
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "payload size exceeds" in response.json()["error"]["message"]
    assert gemini.emulator.ledger.batches == []


def test_refusals_use_google_envelopes(gemini: Gemini) -> None:
    no_key = gemini.http.get("/v1beta/batches", headers={"x-goog-api-key": ""})
    bad_key = gemini.http.get(
        "/v1beta/batches", params={"key": "wrong"}, headers={"x-goog-api-key": ""}
    )
    missing = gemini.http.get("/v1beta/batches/nosuchbatch")
    both_inputs = gemini.http.post(
        CREATE,
        json={"batch": {"inputConfig": {"fileName": "files/x", "requests": {"requests": []}}}},
    )
    missing_file = gemini.http.post(
        CREATE, json={"batch": {"inputConfig": {"fileName": "files/x"}}}
    )

    assert (no_key.status_code, no_key.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    error = bad_key.json()["error"]
    assert (bad_key.status_code, error["code"], error["status"]) == (400, 400, "INVALID_ARGUMENT")
    assert error["details"][0]["reason"] == "API_KEY_INVALID"
    assert (missing.status_code, missing.json()["error"]["status"]) == (404, "NOT_FOUND")
    assert (both_inputs.status_code, both_inputs.json()["error"]["status"]) == (
        400,
        "INVALID_ARGUMENT",
    )
    assert (missing_file.status_code, missing_file.json()["error"]["status"]) == (404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("status", "canonical"),
    [
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ],
)
def test_http_faults_speak_google(gemini: Gemini, status: int, canonical: str) -> None:
    gemini.emulator.faults.add("list_batches", status=status, retry_after=5)

    response = gemini.http.get("/v1beta/batches")

    error = response.json()["error"]
    assert (response.status_code, error["code"], error["status"]) == (status, status, canonical)
    assert not any(name.startswith(("retry-after", "x-ratelimit")) for name in response.headers)
    retry = [d for d in error.get("details", []) if d["@type"].endswith("RetryInfo")]
    assert retry == ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "5s"}]
                     if status == 429 else [])  # fmt: skip


def test_a_revoked_key_is_an_invalid_key(gemini: Gemini) -> None:
    gemini.emulator.revoke_key()

    response = gemini.http.get("/v1beta/batches")

    assert response.status_code == 400
    assert response.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_the_responses_file_downloads_on_both_paths_and_uploads_do_not(gemini: Gemini) -> None:
    uploaded = gemini.upload(file_lines(["k1", "k2"]))
    response = gemini.http.post(
        CREATE, json={"batch": {"inputConfig": {"fileName": uploaded["name"]}}}
    )
    done = gemini.finish(response.json()["name"])
    file_name = done["metadata"]["output"]["responsesFile"]
    documented = gemini.http.get(f"/download/v1beta/{file_name}:download", params={"alt": "media"})
    sdk_path = gemini.http.get(f"/v1beta/{file_name}:download", params={"alt": "media"})
    upload_download = gemini.http.get(
        f"/v1beta/{uploaded['name']}:download", params={"alt": "media"}
    )
    generated = gemini.get(file_name)

    assert uploaded["source"] == "UPLOADED"
    assert uploaded["sizeBytes"] == str(len(file_lines(["k1", "k2"])))
    assert re.fullmatch(r"files/[a-z0-9-]{1,40}", uploaded["name"])
    assert re.fullmatch(r"files/[a-z0-9-]{1,40}", file_name)
    assert documented.status_code == sdk_path.status_code == 200
    assert documented.content == sdk_path.content
    assert [orjson.loads(line)["key"] for line in documented.content.splitlines()] == ["k1", "k2"]
    assert upload_download.status_code == 400
    assert (generated["source"], generated["name"]) == ("GENERATED", file_name)
    assert "downloadUri" in generated
    assert done["metadata"]["inputConfig"] == {"fileName": uploaded["name"]}


def test_failed_rows_are_grpc_statuses_in_a_succeeded_batch(make_gemini: MakeGemini) -> None:
    gemini = make_gemini(fail_custom_ids={"bad"})
    gemini.emulator.faults.add_batch_fault(line_429=1.0, times=1)
    limited = gemini.finish(gemini.submit([request("a", "r0"), request("b", "r1")])["name"])
    done = gemini.finish(gemini.submit([request("a", "ok"), request("b", "bad")])["name"])

    rows = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert done["metadata"]["batchStats"] == {
        "requestCount": "2",
        "successfulRequestCount": "1",
        "failedRequestCount": "1",
    }
    assert "response" in rows[0]
    assert rows[1]["error"]["code"] == 3
    assert rows[1]["metadata"] == {"key": "bad"}
    limited_rows = limited["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert [row["error"]["code"] for row in limited_rows] == [8, 8]


def test_every_row_invalid_and_the_batch_still_succeeds(gemini: Gemini) -> None:
    gemini.emulator.faults.add("create_batch", GeminiBatchFault(invalid_rows=1.0))

    done = gemini.finish(gemini.submit([request("a", "r0"), request("b", "r1")])["name"])

    rows = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert done["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert done["metadata"]["batchStats"] == {"requestCount": "2", "failedRequestCount": "2"}
    assert [row["error"] for row in rows] == [
        {"code": 3, "message": "Request contains an invalid argument."}
    ] * 2


def test_null_row_responses(gemini: Gemini) -> None:
    gemini.emulator.faults.add("create_batch", GeminiBatchFault(null_responses=1.0))

    done = gemini.finish(gemini.submit([request("a", "r0"), request("b", "r1")])["name"])

    rows = done["metadata"]["output"]["inlinedResponses"]["inlinedResponses"]
    assert done["metadata"]["batchStats"] == {"requestCount": "2", "successfulRequestCount": "2"}
    assert rows == [
        {"metadata": {"key": "r0"}, "response": None},
        {"metadata": {"key": "r1"}, "response": None},
    ]


def test_a_long_pending_batch_starts_late(gemini: Gemini) -> None:
    gemini.emulator.faults.add("create_batch", GeminiBatchFault(pending_seconds=3600))
    name = gemini.submit([request("a", "r0")])["name"]

    gemini.clock.advance(3600)
    pending = gemini.get(name)
    gemini.clock.advance(5)
    started = gemini.get(name)

    assert pending["metadata"]["state"] == "BATCH_STATE_PENDING"
    assert started["metadata"]["state"] == "BATCH_STATE_RUNNING"


def test_mass_expiry_leaves_every_batch_without_results(gemini: Gemini) -> None:
    gemini.emulator.faults.add_json(
        {"route": "create_batch", "kind": "gemini", "expire": True, "times": None}
    )
    names = [gemini.submit([request("a", f"r{n}")])["name"] for n in range(3)]

    gemini.clock.advance(48 * 3600 - 1)
    before = [gemini.get(name)["metadata"]["state"] for name in names]
    gemini.clock.advance(1)
    after = [gemini.get(name) for name in names]

    assert before == ["BATCH_STATE_PENDING"] * 3
    for operation in after:
        assert operation["done"] is True
        assert operation["metadata"]["state"] == "BATCH_STATE_EXPIRED"
        assert "output" not in operation["metadata"]
        assert "response" not in operation


def test_a_failed_batch_carries_the_operation_error(gemini: Gemini) -> None:
    gemini.emulator.faults.add_batch_fault(fail_with="server_error")

    done = gemini.finish(gemini.submit([request("a", "r0")])["name"])

    assert done["metadata"]["state"] == "BATCH_STATE_FAILED"
    assert done["error"]["code"] == 13
    assert "output" not in done["metadata"]


def test_a_second_create_makes_a_second_batch(gemini: Gemini) -> None:
    first = gemini.submit([request("a", "r0")], displayName="same")
    second = gemini.submit([request("a", "r0")], displayName="same")

    assert first["name"] != second["name"]
    assert len(gemini.emulator.ledger.batches_with_metadata("displayName", "same")) == 2


def test_same_seed_and_calls_give_byte_identical_answers(make_gemini: MakeGemini) -> None:
    def run(gemini: Gemini) -> list[bytes]:
        bodies = [gemini.create([request("a", "r0"), request("b", "r1")]).content]
        uploaded = gemini.upload(file_lines(["k1"]))
        created = gemini.http.post(
            CREATE, json={"batch": {"inputConfig": {"fileName": uploaded["name"]}}}
        )
        gemini.clock.advance(100)
        names = [orjson.loads(bodies[0])["name"], created.json()["name"]]
        bodies += [gemini.http.get(f"/v1beta/{name}").content for name in names]
        output = orjson.loads(bodies[-1])["metadata"]["output"]["responsesFile"]
        bodies.append(gemini.http.get(f"/v1beta/{output}:download").content)
        return bodies

    first = run(make_gemini(own_clock=ManualClock(), seed=3))
    assert first == run(make_gemini(own_clock=ManualClock(), seed=3))


def test_the_command_line_serves_gemini_mode(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--mode", "gemini"]))
    with Emulator(config, ManualClock()) as emulator:
        health = emulator.handle(EmuRequest.build("GET", "/_emulator/health")).json()

    port_file = tmp_path / "port"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--mode", "gemini", "--port", "0",
        "--port-file", str(port_file), "--log-level", "warning", "--api-key", KEY,
        "--storage-dir", str(tmp_path / "store"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{int(port_file.read_text())}"
        served = httpx.get(f"{base}/_emulator/health").json()
        listed = httpx.get(f"{base}/v1beta/batches", headers={"x-goog-api-key": KEY})
    finally:
        process.terminate()
        process.communicate(timeout=20)

    assert (config.mode, config.completion_window_seconds) == ("gemini", 48 * 3600)
    assert (health["mode"], health["path_prefix"]) == ("gemini", "/v1beta")
    assert served["mode"] == "gemini"
    assert (listed.status_code, listed.json()) == (200, {})
    assert process.returncode == 0


def test_a_cancel_lands_after_a_while_and_a_finished_batch_refuses_it(gemini: Gemini) -> None:
    pending = gemini.submit([request("a", "r0")])["name"]
    running = gemini.submit([request(f"{n}", f"r{n}") for n in range(20)])["name"]
    gemini.clock.advance(6)
    answer = gemini.http.post(f"/v1beta/{running}:cancel")
    while_cancelling = gemini.get(running)["metadata"]["state"]
    gemini.clock.advance(10)
    cancelled = gemini.get(running)
    finished = gemini.get(pending)
    refused = gemini.http.post(f"/v1beta/{pending}:cancel")
    early = gemini.submit([request("a", "r0")])["name"]
    early_answer = gemini.http.post(f"/v1beta/{early}:cancel")

    assert [(a.status_code, a.json()) for a in (answer, early_answer)] == [(200, {}), (200, {})]
    assert while_cancelling == "BATCH_STATE_RUNNING"
    assert gemini.get(early)["metadata"]["state"] == "BATCH_STATE_PENDING"
    assert cancelled["done"] is True
    assert cancelled["metadata"]["state"] == "BATCH_STATE_CANCELLED"
    assert "output" not in cancelled["metadata"]
    assert finished["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert (refused.status_code, refused.json()["error"]["status"]) == (400, "FAILED_PRECONDITION")


def test_an_upload_step_refused_still_says_its_upload_status(gemini: Gemini) -> None:
    start = gemini.http.post(
        "/upload/v1beta/files",
        json={"file": {}},
        headers={"X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start"},
    )
    gemini.emulator.faults.add("upload_file", status=503)
    refused = gemini.http.post(
        start.headers["x-goog-upload-url"],
        content=b"{}\n",
        headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
    )

    # Without the header the SDK sleeps and sends the chunk again (three tries in all).
    assert (start.headers["x-goog-upload-status"], start.content) == ("active", b"")
    assert refused.status_code == 503
    assert refused.headers["x-goog-upload-status"] == "final"
    assert refused.json()["error"]["status"] == "UNAVAILABLE"


def test_gemini_faults_are_reachable_from_the_cli(gemini: Gemini) -> None:
    specs = [
        "create_batch:kind=gemini,expire,times=1",
        "create_batch:kind=gemini,pending_seconds=forever,hide_responses=30",
        "create_batch:kind=gemini,null_responses=0.5,invalid_rows=0.25,expire=false",
    ]
    rules = [gemini.emulator.faults.add_json(parse_fault_spec(spec)).to_json() for spec in specs]

    assert [rule["kind"] for rule in rules] == ["gemini"] * 3
    assert rules[0]["expire"] is True
    assert (rules[1]["pending_seconds"], rules[1]["hide_responses"]) == ("forever", 30)
    assert (rules[2]["null_responses"], rules[2]["invalid_rows"]) == (0.5, 0.25)
    assert "expire" not in rules[2]
    with pytest.raises(ValueError, match="at least one option"):
        gemini.emulator.faults.add_json(parse_fault_spec("create_batch:kind=gemini"))
