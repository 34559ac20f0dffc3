"""Error answers to calls the server did carry out (``applied``), and error messages that quote the
caller's key (``echo_auth``): two things real gateways do that a client must survive."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from orchestrator.emulator.fault_specs import parse_fault_spec

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


@pytest.mark.parametrize("mode", ["fastrouter", "openai"])
def test_an_applied_error_creates_the_batch_then_answers_the_error(
    make_api: MakeApi, adapter: str, mode: str
) -> None:
    api = make_api(adapter, mode=mode)
    file_id = api.upload_id(api.chat_file(3))
    api.emulator.faults.add("create_batch", status=502, applied=True)

    response = api.create(file_id, metadata={"k": "v"})

    assert response.status_code == 502
    (created,) = api.emulator.ledger.batches  # the work was done all the same
    assert created.input_file_id == file_id and created.metadata == {"k": "v"}
    assert api.get(created.id)["status"] == "validating"
    if mode == "openai":  # and a client that lists batches can find it
        listed = api.http.get("/batches").json()["data"]
        assert [b["id"] for b in listed] == [created.id]


def test_a_plain_error_creates_nothing(make_api: MakeApi) -> None:
    api = make_api()
    file_id = api.upload_id(api.chat_file(3))
    api.emulator.faults.add("create_batch", status=502)

    assert api.create(file_id).status_code == 502
    assert api.emulator.ledger.batches == []


def test_an_echoing_error_quotes_the_authorization_header(make_api: MakeApi, adapter: str) -> None:
    api = make_api(adapter, token="sk-secret-1234567890")
    api.emulator.faults.add("get_batch", status=500, echo_auth=True, message="upstream failed")

    response = api.http.get("/batches/x")

    assert response.status_code == 500
    assert response.json()["error"]["message"] == (
        "upstream failed (received Authorization: Bearer sk-secret-1234567890)"
    )


def test_both_options_parse_from_the_command_line_syntax() -> None:
    spec = parse_fault_spec("create_batch:status=503,applied,echo_auth,times=2")
    assert spec == {
        "route": "create_batch",
        "times": 2,
        "status": 503,
        "applied": True,
        "echo_auth": True,
    }
