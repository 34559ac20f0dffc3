"""Faults that break a call on the wire or hide a file: truncated bodies, "not found" after upload."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from orchestrator.api.client import BatchApiClient
from orchestrator.api.errors import ApiTruncatedDownload
from orchestrator.emulator import EmuRequest, TruncatedBody

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def finished_output(api: Api, rows: int = 200) -> tuple[str, bytes]:
    done = api.finish(api.submit(api.chat_file(rows))["id"])
    return done["output_file_id"], api.content(done["output_file_id"])


def read_until_broken(api: Api, path: str) -> tuple[int, bytes, httpx.RemoteProtocolError]:
    """Stream ``path`` until the connection breaks: declared length, bytes received, the error."""
    got = bytearray()
    with api.http.stream("GET", path) as response:
        declared = int(response.headers["content-length"])
        try:
            for chunk in response.iter_raw():
                got += chunk
        except httpx.RemoteProtocolError as exc:
            return declared, bytes(got), exc
    raise AssertionError(f"GET {path} was not cut off")


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_truncated_download_sends_a_strict_prefix_then_breaks(
    make_api: MakeApi, adapter: str, fraction: float
) -> None:
    api = make_api(adapter)
    file_id, whole = finished_output(api)
    api.emulator.faults.add("file_content", TruncatedBody(fraction))

    declared, got, error = read_until_broken(api, f"/files/{file_id}/content")

    assert declared == len(whole)
    assert len(got) == int(len(whole) * fraction)
    assert whole.startswith(got)
    assert "peer closed connection without sending complete message body" in str(error)
    assert f"expected {len(whole)}" in str(error)
    # the next download is whole again (the rule fired once)
    assert api.content(file_id) == whole
    (faulted, clean) = api.emulator.ledger.calls_to("file_content")[-2:]
    assert (faulted.faulted, clean.faulted) == (True, False)


def test_orchestrator_client_reports_a_truncated_download(make_api: MakeApi, adapter: str) -> None:
    api = make_api(adapter)
    file_id, whole = finished_output(api)
    api.emulator.faults.add("file_content", truncate=0.9)
    client = BatchApiClient(api.http)

    with pytest.raises(ApiTruncatedDownload):
        client.download_file(file_id, io.BytesIO())
    sink = io.BytesIO()
    written = client.download_file(file_id, sink)

    assert (written, sink.getvalue()) == (len(whole), whole)


def test_truncate_cuts_json_answers_too_but_never_errors(make_api: MakeApi) -> None:
    api = make_api("server")
    batch_id = api.submit(api.chat_file(1))["id"]
    api.emulator.faults.add("get_batch", truncate=0.3, times=2)

    with pytest.raises(httpx.RemoteProtocolError):
        api.http.get(f"/batches/{batch_id}")
    missing = api.http.get("/batches/fr_batch-missing")

    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "batch_not_found"


def test_a_deliberate_cut_does_not_log_a_server_error(
    make_api: MakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    api = make_api("server")
    file_id, _ = finished_output(api, rows=5)
    api.emulator.faults.add("file_content", truncate=0.5)

    with caplog.at_level(logging.INFO, logger="uvicorn.error"), pytest.raises(httpx.HTTPError):
        api.http.get(f"/files/{file_id}/content")
    api.content(file_id)

    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_truncate_fraction_must_leave_something_out(make_api: MakeApi) -> None:
    api = make_api()

    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="truncate"):
            api.emulator.faults.add("file_content", truncate=bad)


def test_truncate_zero_sends_headers_only(make_api: MakeApi) -> None:
    api = make_api()
    file_id, whole = finished_output(api, rows=3)
    api.emulator.faults.add("file_content", truncate=0)

    response = api.emulator.handle(
        EmuRequest.build(
            "GET", f"/v1/files/{file_id}/content", headers={"Authorization": "Bearer k"}
        )
    )

    assert response.drop_connection
    assert response.headers["content-length"] == str(len(whole))
    assert response.read() == b""


# -- "file not found" right after upload (spec §8 X6) ----------------------------------------


def test_fresh_upload_is_404_on_fastrouter_until_it_is_ready(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_file_not_ready(10)
    file_id = api.upload_id(api.chat_file(2))

    early_create = api.create(file_id)
    early_content = api.http.get(f"/files/{file_id}/content")
    api.clock.advance(9.9)
    still = api.create(file_id)
    api.clock.advance(0.1)
    created = api.create(file_id)

    for refused in (early_create, early_content, still):
        assert refused.status_code == 404
        assert set(refused.json()["error"]) == {"message", "type", "code", "status"}
    assert early_create.json()["error"]["code"] == "file_not_found"
    assert created.status_code == 200
    assert len(api.emulator.ledger.batches) == 1
    assert api.emulator.ledger.files[0].visible_at == api.emulator.ledger.files[0].created_at + 10


def test_fresh_upload_gives_openai_cannot_find_file(make_api: MakeApi) -> None:
    api = make_api(mode="openai")
    api.emulator.faults.add_file_not_ready(5)
    file_id = api.upload_id(api.chat_file(2))

    create = api.create(file_id)
    retrieve = api.http.get(f"/files/{file_id}")
    content = api.http.get(f"/files/{file_id}/content")
    api.clock.advance(5)

    error = create.json()["error"]
    assert create.status_code == 400
    assert error["message"].startswith(f"Cannot find file {file_id}")
    assert (error["param"], error["type"]) == ("input_file_id", "invalid_request_error")
    assert (retrieve.status_code, content.status_code) == (404, 404)
    assert api.create(file_id).status_code == 200
    assert api.http.get(f"/files/{file_id}").status_code == 200


def test_not_ready_marks_only_the_next_uploads(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_file_not_ready(30, times=1)
    hidden = api.upload_id(api.chat_file(1))
    visible = api.upload_id(api.chat_file(1))

    assert api.create(hidden).status_code == 404
    assert api.create(visible).status_code == 200


def test_refused_upload_does_not_spend_a_not_ready_rule(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_file_not_ready(30, times=1)

    assert api.upload(b"[1]").status_code == 400
    marked = api.upload_id(api.chat_file(1))

    assert api.create(marked).status_code == 404


def test_not_ready_is_bound_to_uploads(make_api: MakeApi) -> None:
    api = make_api()

    rule = api.emulator.faults.add_json({"kind": "not_ready", "not_ready": 3})

    assert rule.route == "upload_file"
    with pytest.raises(ValueError, match="upload_file"):
        api.emulator.faults.add_json({"route": "get_batch", "not_ready": 3})
