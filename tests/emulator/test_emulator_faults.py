"""Fault injection: error statuses, Retry-After, delays that trip client timeouts, revoked keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from orchestrator.emulator import Delay, EmuRequest, HttpError
from orchestrator.emulator.errors import SUPPORTED_ERROR_STATUSES

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


@pytest.mark.parametrize("mode", ["fastrouter", "openai"])
@pytest.mark.parametrize("status", sorted(SUPPORTED_ERROR_STATUSES))
def test_status_fault_answers_with_the_modes_envelope(
    make_api: MakeApi, mode: str, status: int
) -> None:
    api = make_api(mode=mode)
    api.emulator.faults.add("get_batch", status=status)

    response = api.http.get("/batches/anything")

    assert response.status_code == status
    error = response.json()["error"]
    expected = {"message", "type", "code", "status"} if mode == "fastrouter" else None
    assert set(error) == (expected or {"message", "type", "param", "code"})
    assert error["message"]


def test_status_fault_fires_for_the_next_n_calls_then_stops(make_api: MakeApi) -> None:
    api = make_api()
    batch_id = api.submit(api.chat_file(1))["id"]
    api.emulator.faults.add("get_batch", status=503, times=2)

    statuses = [api.http.get(f"/batches/{batch_id}").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert [c.faulted for c in api.emulator.ledger.calls_to("get_batch")] == [True, True, False]


def test_rate_limit_fault_sends_retry_after_and_ratelimit_headers(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add("create_batch", status=429, retry_after=2.5)
    file_id = api.upload_id(api.chat_file(1))

    limited = api.create(file_id)
    retried = api.create(file_id)

    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "3"
    assert limited.headers["retry-after-ms"] == "2500"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.headers["x-ratelimit-reset-requests"] == "2.5s"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert retried.status_code == 200
    # the refused create made no batch
    assert len(api.emulator.ledger.batches) == 1


def test_fault_on_any_route_hits_the_next_call_whatever_it_is(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add(status=500)

    first = api.upload(api.chat_file(1))
    second = api.upload(api.chat_file(1))

    assert (first.status_code, second.status_code) == (500, 200)


def test_probabilistic_faults_repeat_exactly_for_the_same_seed(make_api: MakeApi) -> None:
    patterns = []
    for _ in range(2):
        api = make_api(seed=42)
        api.emulator.faults.add("get_batch", status=502, times=None, probability=0.5)
        patterns.append([api.http.get("/batches/x").status_code for _ in range(40)])

    assert patterns[0] == patterns[1]
    assert 8 <= patterns[0].count(502) <= 32


def test_delay_fault_times_out_a_mock_client_after_the_work_is_done(make_api: MakeApi) -> None:
    api = make_api()
    file_id = api.upload_id(api.chat_file(1))
    api.emulator.faults.add("create_batch", delay_seconds=30)

    with pytest.raises(httpx.ReadTimeout):
        api.create(file_id)

    # the server created the batch even though the client never heard back
    (entry,) = api.emulator.ledger.batches
    assert entry.input_file_id == file_id
    (call,) = api.emulator.ledger.calls_to("create_batch")
    assert (call.status, call.delay_seconds) == (200, 30)


def test_delay_shorter_than_the_client_timeout_is_answered(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add("get_batch", delay_seconds=1)

    response = api.http.get("/batches/x", timeout=10)

    assert response.status_code == 404


def test_delay_fault_times_out_a_real_http_client(make_api: MakeApi) -> None:
    api = make_api("server")
    api.emulator.faults.add("get_batch", delay_seconds=0.5)

    with pytest.raises(httpx.ReadTimeout):
        api.http.get("/batches/x", timeout=httpx.Timeout(5.0, read=0.05))

    assert api.http.get("/batches/x").status_code == 404


def test_delayed_error_combines_both(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add("get_batch", HttpError(503, delay_seconds=2.0))

    response = api.emulator.handle(
        EmuRequest.build("GET", "/v1/batches/x", headers={"Authorization": "Bearer k"})
    )

    assert (response.status, response.delay_seconds) == (503, 2.0)


def test_revoked_key_gets_401_everywhere_until_restored(make_api: MakeApi) -> None:
    api = make_api()
    batch_id = api.submit(api.chat_file(1))["id"]

    api.emulator.revoke_key()
    refused = [
        api.http.get(f"/batches/{batch_id}").status_code,
        api.upload(api.chat_file(1)).status_code,
        api.create("file-x").status_code,
    ]
    api.emulator.restore_key()

    assert refused == [401, 401, 401]
    assert api.http.get(f"/batches/{batch_id}").status_code == 200


def test_clear_removes_every_rule(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add(status=500, times=None)
    api.emulator.faults.add("get_batch", Delay(3))

    api.emulator.faults.clear()

    assert api.emulator.faults.rules() == []
    assert api.http.get("/batches/x").status_code == 404


@pytest.mark.parametrize(
    "kwargs",
    [
        {"route": "no_such_route", "status": 500},
        {"status": 418},
        {"status": 500, "times": 0},
        {"status": 500, "probability": 1.5},
        {},
    ],
)
def test_bad_fault_rules_are_refused(make_api: MakeApi, kwargs: dict[str, object]) -> None:
    api = make_api()

    with pytest.raises(ValueError, match=r"."):
        api.emulator.faults.add(**kwargs)  # type: ignore[arg-type]


def test_garbage_fault_answers_200_with_text_quoting_the_key_and_does_nothing(
    make_api: MakeApi, adapter: str
) -> None:
    from orchestrator.emulator.faults import Garbage  # (appended test; the imports are shared)

    api = make_api(adapter, token="sk-test-secret")
    file_id = api.upload_id(api.chat_file(1))
    api.emulator.faults.add("create_batch", Garbage(), times=1)

    garbage = api.create(file_id)
    created = api.create(file_id)

    assert garbage.status_code == 200 and garbage.headers["content-type"].startswith("text/plain")
    assert "authorization: Bearer sk-test-secret" in garbage.text
    assert created.status_code == 200 and created.json()["id"]
    assert len(api.emulator.ledger.batches) == 1  # the garbage answer created nothing
    assert [c.faulted for c in api.emulator.ledger.calls_to("create_batch")] == [True, False]


def test_garbage_fault_labelled_gzip_fails_a_client_while_decoding(
    make_api: MakeApi, adapter: str
) -> None:
    from orchestrator.emulator.fault_specs import parse_fault_spec

    api = make_api(adapter)
    rule = api.emulator.faults.add_json(parse_fault_spec("get_batch:kind=garbage,gzip,times=1"))
    assert rule.to_json() == {
        "id": rule.id, "route": "get_batch", "times": 1, "probability": None, "fired": 0,
        "kind": "garbage", "gzip": True,
    }  # fmt: skip

    with pytest.raises(httpx.DecodingError):
        api.http.get("/batches/anything")
    assert api.http.get("/batches/anything").status_code == 404  # it fired once


def test_redirect_fault_sends_the_call_back_to_itself_and_a_loop_never_ends(
    make_api: MakeApi, adapter: str
) -> None:
    from orchestrator.emulator.fault_specs import parse_fault_spec

    api = make_api(adapter)
    rule = api.emulator.faults.add_json(parse_fault_spec("get_batch:kind=redirect,times=2"))
    assert rule.to_json() == {
        "id": rule.id, "route": "get_batch", "times": 2, "probability": None, "fired": 0,
        "kind": "redirect", "status": 307,
    }  # fmt: skip

    hop = api.http.get("/batches/anything?x=1", follow_redirects=False)
    assert hop.status_code == 307 and hop.headers["location"].endswith("/batches/anything?x=1")
    # followed: one more hop, then the real answer (the rule fired twice)
    assert api.http.get("/batches/anything", follow_redirects=True).status_code == 404
    api.emulator.faults.add_json(parse_fault_spec("get_batch:kind=redirect"))  # times: unlimited
    with pytest.raises(httpx.TooManyRedirects):
        api.http.get("/batches/anything", follow_redirects=True)
