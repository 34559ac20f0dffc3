"""Refusals: error envelopes per mode, 400/401/404/413 paths and validation failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def assert_fastrouter_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "status"}
    assert error["status"] == status
    assert isinstance(error["code"], str)
    return dict(error)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


def test_unknown_batch_is_404_in_each_mode(make_api: MakeApi) -> None:
    fastrouter, openai = make_api(), make_api(mode="openai")

    assert_fastrouter_error(fastrouter.http.get("/batches/fr_batch-nope"), 404)
    assert_openai_error(openai.http.get("/batches/batch_nope"), 404)


def test_create_on_unknown_file_is_404_on_fastrouter_and_400_on_openai(make_api: MakeApi) -> None:
    fastrouter, openai = make_api(), make_api(mode="openai")

    fr_error = assert_fastrouter_error(fastrouter.create("file-missing"), 404)
    oa_error = assert_openai_error(openai.create("file-missing"), 400)

    assert fr_error["message"] == "File ID not found"
    assert oa_error["message"].startswith("Cannot find file file-missing")
    assert oa_error["param"] == "input_file_id"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"endpoint": "/v1/completions"}, "endpoint"),
        ({"endpoint": None}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_bad_create_parameters_are_400(
    make_api: MakeApi, overrides: dict[str, Any], param: str
) -> None:
    api = make_api(mode="openai")
    file_id = api.upload_id(api.chat_file(1))

    error = assert_openai_error(api.create(file_id, **overrides), 400)

    assert error["param"] == param


def test_create_with_a_non_json_body_is_400(make_api: MakeApi) -> None:
    api = make_api()

    response = api.http.post("/batches", content=b"{not json")

    assert_fastrouter_error(response, 400)


def test_metadata_at_the_limits_is_accepted(make_api: MakeApi) -> None:
    api = make_api()
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}

    created = api.submit(api.chat_file(1), metadata=metadata)

    assert created["metadata"] == metadata


def test_upload_that_is_not_jsonl_is_400(make_api: MakeApi) -> None:
    api = make_api()

    error = assert_fastrouter_error(api.upload(b'{"custom_id": "a"}\n[1, 2]\n'), 400)

    assert "line 2" in error["message"]
    assert api.emulator.ledger.files == []
    assert_fastrouter_error(api.upload(b'{"a": 1}\n\n{"b": 2}\n'), 400)
    assert_fastrouter_error(api.upload(b"not json at all"), 400)


def test_upload_without_a_file_part_is_400(make_api: MakeApi) -> None:
    api = make_api()

    response = api.http.post("/files", data={"purpose": "batch"}, files={"other": ("x", b"1")})

    assert_fastrouter_error(response, 400)
    assert_fastrouter_error(api.http.post("/files", json={"file": "x"}), 400)


def test_purpose_defaults_to_batch_on_fastrouter_but_is_required_on_openai(
    make_api: MakeApi,
) -> None:
    fastrouter, openai = make_api(), make_api(mode="openai")

    uploaded = fastrouter.upload(fastrouter.chat_file(4), purpose=None)
    missing = openai.upload(openai.chat_file(1), purpose=None)
    wrong = openai.upload(openai.chat_file(1), purpose="nonsense")

    assert uploaded.status_code == 200
    assert set(uploaded.json()) == {
        "file_id", "id", "object", "filename", "purpose", "bytes", "num_rows", "url", "created_at",
    }  # fmt: skip
    assert uploaded.json()["file_id"] == uploaded.json()["id"]
    assert (uploaded.json()["purpose"], uploaded.json()["num_rows"]) == ("batch", 4)
    assert assert_openai_error(missing, 400)["param"] == "purpose"
    assert assert_openai_error(wrong, 400)["param"] == "purpose"
    assert_fastrouter_error(fastrouter.upload(fastrouter.chat_file(1), purpose="vision"), 400)


def test_openai_batch_upload_must_be_named_jsonl(make_api: MakeApi) -> None:
    api = make_api(mode="openai")

    error = assert_openai_error(api.upload(api.chat_file(1), filename="batch.txt"), 400)

    assert error["message"] == "Invalid file format for Batch API. Must be .jsonl"


@pytest.mark.parametrize("adapter_name", ["mock", "server"])
def test_oversized_upload_is_413_on_fastrouter_and_400_on_openai(
    make_api: MakeApi, adapter_name: str
) -> None:
    fastrouter = make_api(adapter_name, max_file_bytes=10_000)
    openai = make_api(adapter_name, mode="openai", max_file_bytes=10_000)
    content = fastrouter.chat_file(200)

    assert_fastrouter_error(fastrouter.upload(content), 413)
    error = assert_openai_error(openai.upload(content), 400)

    assert error["message"] == "File is too large."
    # the connection is still usable after the refused upload
    assert fastrouter.upload(fastrouter.chat_file(1)).status_code == 200
    assert fastrouter.emulator.ledger.calls_to("upload_file", status=413)


def test_missing_or_wrong_bearer_token_is_401(make_api: MakeApi) -> None:
    api = make_api(api_key="right-key", token="right-key")
    open_api = make_api()

    no_header = api.http.get("/batches/x", headers={"Authorization": ""})
    wrong = api.http.get("/batches/x", headers={"Authorization": "Bearer wrong-key"})
    right = api.http.get("/batches/x", headers={"Authorization": "Bearer right-key"})
    any_token = open_api.http.get("/batches/x", headers={"Authorization": "Bearer anything"})

    assert_fastrouter_error(no_header, 401)
    assert_fastrouter_error(wrong, 401)
    assert right.status_code == any_token.status_code == 404


def test_openai_401_does_not_echo_the_whole_key(make_api: MakeApi) -> None:
    api = make_api(mode="openai", api_key="right-key", token="right-key")

    response = api.http.get("/batches", headers={"Authorization": "Bearer sk-secret-1234567"})

    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_api_key"
    assert "sk-secret-1234567" not in response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/batches"),
        ("POST", "/batches/fr_batch-x/cancel"),
        ("GET", "/files/file-x"),
        ("DELETE", "/files/file-x"),
        ("GET", "/nowhere"),
    ],
)
def test_fastrouter_mode_offers_only_the_documented_routes(
    make_api: MakeApi, method: str, path: str
) -> None:
    api = make_api()

    response = api.http.request(method, path)

    assert_fastrouter_error(response, 404)


def test_unknown_file_content_is_404(make_api: MakeApi) -> None:
    fastrouter, openai = make_api(), make_api(mode="openai")

    assert_fastrouter_error(fastrouter.http.get("/files/file-nope/content"), 404)
    assert_openai_error(openai.http.get("/files/file-nope/content"), 404)


def test_path_prefix_can_be_empty(make_api: MakeApi) -> None:
    api = make_api(path_prefix="")

    batch = api.submit(api.chat_file(1))

    assert api.http.get(f"/batches/{batch['id']}").status_code == 200
    assert api.http.get(f"/v1/batches/{batch['id']}").status_code == 404


LINE_PROBLEMS = [
    ("duplicate_custom_id", "custom_id", lambda lines: lines[1].update(custom_id="r0")),
    ("missing_required_parameter", "custom_id", lambda lines: lines[1].pop("custom_id")),
    ("missing_required_parameter", "method", lambda lines: lines[1].pop("method")),
    ("invalid_method", "method", lambda lines: lines[1].update(method="GET")),
    ("invalid_url", "url", lambda lines: lines[1].update(url="/v1/embeddings")),
    ("missing_required_parameter", "url", lambda lines: lines[1].pop("url")),
    ("missing_required_parameter", "body", lambda lines: lines[1].pop("body")),
]
# FastRouter lines must also name their provider.
PROVIDER_PROBLEMS = [
    ("missing_required_parameter", "provider", lambda lines: lines[1].pop("provider")),
    ("invalid_provider", "provider", lambda lines: lines[1].update(provider="acme")),
]


@pytest.mark.parametrize(
    ("mode", "code", "param", "mutate"),
    [("fastrouter", *case) for case in LINE_PROBLEMS + PROVIDER_PROBLEMS]
    + [("openai", *case) for case in LINE_PROBLEMS],
)
def test_invalid_lines_fail_the_batch_after_validation(
    make_api: MakeApi,
    mode: str,
    code: str,
    param: str,
    mutate: Callable[[list[dict[str, Any]]], object],
) -> None:
    api = make_api(mode=mode)
    lines = [api.chat_line(f"r{i}") for i in range(3)]
    mutate(lines)
    created = api.submit(api.jsonl(lines))

    api.clock.advance(4)
    still = api.get(created["id"])
    api.clock.advance(1)
    failed = api.get(created["id"])

    assert (still["status"], still["errors"]) == ("validating", None)
    assert failed["status"] == "failed"
    assert failed["failed_at"] == created["created_at"] + 5
    assert failed["errors"]["object"] == "list"
    (error,) = failed["errors"]["data"]
    assert (error["code"], error["param"], error["line"]) == (code, param, 2)
    assert failed["output_file_id"] is failed["error_file_id"] is None
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


@pytest.mark.parametrize("mode", ["fastrouter", "openai"])
def test_too_many_requests_fail_validation_at_the_first_line_past_the_limit(
    make_api: MakeApi, mode: str
) -> None:
    api = make_api(mode=mode, max_requests_per_file=3)

    failed = api.finish(api.submit(api.chat_file(4))["id"])

    assert failed["status"] == "failed"
    (error,) = failed["errors"]["data"]
    assert (error["code"], error["line"]) == ("too_many_requests", 4)
    assert "3 maximum number of requests" in error["message"]


def test_every_problem_is_listed_in_file_order(make_api: MakeApi) -> None:
    api = make_api(max_requests_per_file=4)
    lines = [api.chat_line(f"r{i}") for i in range(5)]
    lines[1]["url"] = "/v1/embeddings"
    lines[3]["custom_id"] = "r0"
    del lines[4]["provider"]

    failed = api.finish(api.submit(api.jsonl(lines))["id"])

    assert [(e["code"], e["line"]) for e in failed["errors"]["data"]] == [
        ("invalid_url", 2),
        ("duplicate_custom_id", 4),
        ("missing_required_parameter", 5),
        ("too_many_requests", 5),
    ]


def test_empty_file_fails_validation(make_api: MakeApi) -> None:
    api = make_api()

    failed = api.finish(api.submit(b"")["id"])

    assert [(e["code"], e["line"]) for e in failed["errors"]["data"]] == [("empty_file", None)]


def test_openai_mode_does_not_require_provider(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    line = api.chat_line("a", model="gpt-4o-mini")
    del line["provider"]

    done = api.finish(api.submit(api.jsonl([line]))["id"])

    assert done["status"] == "completed"
