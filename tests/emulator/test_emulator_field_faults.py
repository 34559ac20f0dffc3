"""Faults seen in the field (issue 10) that the emulator plays: a create carried out after the
client gave up (``late``), a web page instead of a file (``html``), a body that ends cleanly but
short (``truncate`` with ``clean``), and a finished batch whose file ids read null for a while
(``hide_output``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from orchestrator.emulator.fault_specs import parse_fault_spec
from orchestrator.emulator.faults import HtmlPage, LateApply, TruncatedBody, fault_from_json

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


@pytest.mark.parametrize("mode", ["fastrouter", "openai"])
def test_a_late_create_answers_an_error_now_and_creates_the_batch_once_its_time_has_come(
    make_api: MakeApi, adapter: str, mode: str
) -> None:
    api = make_api(adapter, mode=mode)
    file_id = api.upload_id(api.chat_file(3))
    api.emulator.faults.add("create_batch", LateApply(60.0))

    response = api.create(file_id, metadata={"k": "v"})

    assert response.status_code == 502
    assert api.emulator.ledger.batches == []  # nothing yet
    api.clock.advance(59)
    assert api.emulator.run_due() == 0 and api.emulator.ledger.batches == []
    api.clock.advance(1)
    api.http.get("/batches/nothing")  # any call carries out what is due first
    (created,) = api.emulator.ledger.batches
    assert created.input_file_id == file_id and created.metadata == {"k": "v"}
    assert created.created_at == int(api.clock.now().timestamp())  # created when it landed
    assert api.get(created.id)["status"] == "validating"


def test_an_html_page_answers_200_with_a_web_page_and_does_nothing(
    make_api: MakeApi, adapter: str
) -> None:
    api = make_api(adapter, mode="openai")
    batch = api.finish(api.submit(api.chat_file(2))["id"])
    api.emulator.faults.add("file_content", HtmlPage())

    response = api.http.get(f"/files/{batch['output_file_id']}/content")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")
    assert len(api.parse_jsonl(api.content(batch["output_file_id"]))) == 2  # next call: the file


def test_a_clean_truncation_declares_the_short_length_so_http_sees_no_error(
    make_api: MakeApi, adapter: str
) -> None:
    api = make_api(adapter, mode="openai")
    batch = api.finish(api.submit(api.chat_file(10))["id"])
    whole = api.content(batch["output_file_id"])
    api.emulator.faults.add("file_content", TruncatedBody(0.5, clean=True))

    response = api.http.get(f"/files/{batch['output_file_id']}/content")

    assert response.status_code == 200
    assert response.content == whole[: len(whole) // 2]
    assert int(response.headers["content-length"]) == len(whole) // 2


def test_hide_output_keeps_the_file_ids_null_for_a_while_after_the_batch_completed(
    make_api: MakeApi, adapter: str
) -> None:
    api = make_api(adapter, mode="openai")
    api.emulator.faults.add_batch_fault(hide_output=300.0)
    batch = api.finish(api.submit(api.chat_file(4))["id"], step=1.0)

    assert batch["status"] == "completed" and batch["request_counts"]["completed"] == 4
    assert batch["output_file_id"] is None and batch["error_file_id"] is None
    api.clock.advance(300)
    later = api.get(batch["id"])
    assert (
        later["output_file_id"] and len(api.parse_jsonl(api.content(later["output_file_id"]))) == 4
    )


def test_the_new_faults_parse_from_json_and_the_command_line_syntax() -> None:
    assert fault_from_json({"kind": "late", "seconds": 30}) == LateApply(30.0)
    assert fault_from_json({"kind": "html"}) == HtmlPage()
    assert fault_from_json({"truncate": 0.25, "clean": True}) == TruncatedBody(0.25, clean=True)
    spec = parse_fault_spec("batch:hide_output=forever")
    assert fault_from_json(spec).hide_output == math.inf  # type: ignore[attr-defined]
    spec = parse_fault_spec("create_batch:kind=late,seconds=600,status=503")
    assert fault_from_json(spec) == LateApply(600.0, status=503)
    with pytest.raises(ValueError, match="seconds must be > 0"):
        LateApply(0.0)
