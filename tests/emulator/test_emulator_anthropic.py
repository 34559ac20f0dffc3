"""anthropic mode on the wire: what the SDK does not show (headers, bodies, order, validation),
the core's faults on the Anthropic routes, the mode's own faults, and determinism."""

from __future__ import annotations

import contextlib
import dataclasses
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
    EmulatorServer,
    MessageBatchFault,
    NoContentType,
    mock_transport,
)
from orchestrator.emulator.faults import LateApply
from orchestrator.emulator.server import config_from_args

VERSION = {"anthropic-version": "2023-06-01"}
BATCHES = "/messages/batches"


@dataclasses.dataclass
class Api:
    emulator: Emulator
    clock: ManualClock
    http: httpx.Client

    def create(self, body: Any, **headers: str) -> httpx.Response:
        return self.http.post(BATCHES, json=body, headers=headers)

    def submit(self, count: int, prefix: str = "r", **extra: Any) -> dict[str, Any]:
        response = self.create({"requests": requests(count, prefix, **extra)})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get(self, batch_id: str) -> dict[str, Any]:
        response = self.http.get(f"{BATCHES}/{batch_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def end(self, batch_id: str) -> dict[str, Any]:
        for _ in range(1000):
            batch = self.get(batch_id)
            if batch["processing_status"] == "ended":
                return batch
            self.clock.advance(10)
        raise AssertionError("never ended")

    def results(self, batch_id: str) -> httpx.Response:
        return self.http.get(f"{BATCHES}/{batch_id}/results")

    def lines(self, batch_id: str) -> list[dict[str, Any]]:
        response = self.results(batch_id)
        assert response.status_code == 200, response.text
        return [orjson.loads(line) for line in response.content.splitlines() if line]


def params(number: int, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"question {number}"}]
    return {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": messages, **extra}


def requests(count: int, prefix: str = "r", **extra: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "params": params(i, **extra)} for i in range(count)]


MakeApi = Callable[..., Api]


@pytest.fixture
def make_api(clock: ManualClock, tmp_path: Path) -> Iterator[MakeApi]:
    with contextlib.ExitStack() as stack:

        def make(
            adapter: str = "mock",
            *,
            headers: dict[str, str] | None = None,
            own_clock: ManualClock | None = None,
            **config: Any,
        ) -> Api:
            config = {"mode": "anthropic", "storage_dir": tmp_path / "storage", **config}
            used = own_clock or clock
            emulator = stack.enter_context(Emulator(EmulatorConfig(**config), used))
            sent = {"x-api-key": "k", **VERSION} if headers is None else headers
            if adapter == "server":
                server = stack.enter_context(EmulatorServer(emulator))
                http = httpx.Client(base_url=server.base_url, headers=sent, timeout=10.0)
            else:
                base = "http://emulator.test/v1"
                http = httpx.Client(transport=mock_transport(emulator), base_url=base, headers=sent)
            stack.enter_context(http)
            return Api(emulator, used, http)

        yield make


# -- authentication and the error envelope ---------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "kind"),
    [
        ({"x-api-key": "k", **VERSION}, 200, None),
        ({"authorization": "Bearer k", **VERSION}, 200, None),  # what the SDK 2.17 sends
        ({"x-api-key": "nope", **VERSION}, 401, "authentication_error"),
        ({"authorization": "Bearer nope", **VERSION}, 401, "authentication_error"),
        (VERSION, 401, "authentication_error"),
        ({"x-api-key": "k"}, 400, "invalid_request_error"),  # anthropic-version is required
    ],
)
def test_a_key_in_either_header_and_a_version_are_required(
    make_api: MakeApi, headers: dict[str, str], status: int, kind: str | None
) -> None:
    api = make_api(headers=headers, api_key="k")

    response = api.http.get(BATCHES)

    assert response.status_code == status
    if kind is not None:
        body = response.json()
        assert body["type"] == "error" and body["error"]["type"] == kind
        assert body["request_id"] == response.headers["request-id"]
        assert body["request_id"].startswith("req_")
        assert "x-request-id" not in response.headers


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_every_error_status_gets_its_anthropic_type(
    make_api: MakeApi, adapter: str, status: int, kind: str
) -> None:
    api = make_api(adapter)
    api.emulator.faults.add("get_batch", status=status)

    response = api.http.get(f"{BATCHES}/msgbatch_x")

    assert response.status_code == status
    body = response.json()
    assert body["error"]["type"] == kind
    assert set(body) == {"type", "error", "request_id"}
    assert body["request_id"] == response.headers["request-id"]


def test_a_rate_limit_says_when_it_resets_and_a_spend_cap_does_not(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add("create_batch", status=429, retry_after=20)
    api.emulator.faults.add("create_batch", status=429, code="enforced_spend_limit_reached")

    limited = api.create({"requests": requests(1)})
    capped = api.create({"requests": requests(1)})

    assert limited.headers["retry-after"] == "20"
    assert limited.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert limited.headers["anthropic-ratelimit-requests-reset"] == "2026-01-01T00:00:20.000000Z"
    assert not any(name.startswith("x-ratelimit") for name in limited.headers)
    assert capped.json()["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
    assert "retry-after" not in capped.headers
    assert not any("ratelimit" in name for name in capped.headers)


def test_a_body_over_the_cap_gets_cloudflares_413(make_api: MakeApi, adapter: str) -> None:
    api = make_api(adapter, max_file_bytes=2000)

    response = api.create({"requests": requests(40)})

    assert response.status_code == 413
    assert response.json() == {
        "error": {"type": "request_too_large", "message": "Request exceeds the maximum size"}
    }
    assert "request-id" not in response.headers
    assert api.emulator.ledger.batches == []


def test_anthropic_limits_apply_unless_the_config_sets_its_own(make_api: MakeApi) -> None:
    assert make_api().emulator.config.max_requests_per_file == 100_000
    assert make_api().emulator.config.max_file_bytes == 256 * 1024 * 1024
    assert make_api(max_requests_per_file=3).emulator.config.max_requests_per_file == 3


# -- create ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"requests": []}, "requests: List should have at least 1 item"),
        ({"requests": requests(4)}, "requests: List should have at most 3 items"),
        ({}, "requests: Field required"),
        ({"requests": requests(1), "metadata": {"k": "v"}}, "metadata: Extra inputs"),
        ({"requests": [{"custom_id": "a b", "params": params(0)}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": params(0)}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "", "params": params(0)}]}, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "a"}]}, "requests.0.params: Field required"),
        ({"requests": [{"custom_id": "a", "params": []}]}, "requests.0.params: Input should"),
        (
            {"requests": [*requests(1), {"custom_id": "r0", "params": params(1)}]},
            "requests.1.custom_id: Duplicate custom_id 'r0'",
        ),
    ],
)
def test_create_refuses_a_malformed_batch_at_once(
    make_api: MakeApi, body: dict[str, Any], message: str
) -> None:
    api = make_api(max_requests_per_file=3)

    response = api.create(body)

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert response.json()["error"]["message"].startswith(message)
    assert api.emulator.ledger.batches == []


def test_create_accepts_the_widest_custom_ids(make_api: MakeApi) -> None:
    api = make_api()
    ids = ["A-z_09", "x" * 64, "-"]

    response = api.create({"requests": [{"custom_id": i, "params": params(0)} for i in ids]})

    assert response.status_code == 200
    assert response.json()["request_counts"]["processing"] == 3


def test_every_create_makes_a_new_batch_and_the_ledger_records_each(make_api: MakeApi) -> None:
    api = make_api()
    body = {"requests": requests(2)}

    first, second = api.create(body).json(), api.create(body).json()

    assert first["id"] != second["id"]
    assert [entry.id for entry in api.emulator.ledger.batches] == [first["id"], second["id"]]
    assert {entry.endpoint for entry in api.emulator.ledger.batches} == {"/v1/messages"}
    assert [call.route for call in api.emulator.ledger.calls] == ["create_batch"] * 2


def test_the_batch_object_has_all_ten_fields_with_explicit_nulls(make_api: MakeApi) -> None:
    api = make_api()

    batch = api.submit(2)

    assert batch == {
        "id": batch["id"],
        "type": "message_batch",
        "processing_status": "in_progress",
        "request_counts": {
            "processing": 2,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "ended_at": None,
        "created_at": "2026-01-01T00:00:00.000000Z",
        "expires_at": "2026-01-02T00:00:00.000000Z",
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": None,
    }


def test_bad_params_do_not_fail_the_create_but_end_errored(make_api: MakeApi) -> None:
    api = make_api()
    sent = [
        {"custom_id": "ok", "params": params(0)},
        {"custom_id": "no-max", "params": {"model": "m", "messages": [{"role": "user"}]}},
        {"custom_id": "zero", "params": params(1, max_tokens=0)},
        {"custom_id": "stream", "params": params(2, stream=True)},
        {"custom_id": "no-model", "params": {"max_tokens": 5, "messages": []}},
    ]

    batch = api.create({"requests": sent}).json()
    ended = api.end(batch["id"])
    lines = {line["custom_id"]: line["result"] for line in api.lines(batch["id"])}

    assert ended["request_counts"]["succeeded"] == 1
    assert ended["request_counts"]["errored"] == 4
    assert lines["ok"]["type"] == "succeeded"
    for custom_id in ("no-max", "zero", "stream", "no-model"):
        assert lines[custom_id]["type"] == "errored"
        assert lines[custom_id]["error"]["type"] == "error"
        assert lines[custom_id]["error"]["error"]["type"] == "invalid_request_error"
    assert lines["no-max"]["error"]["error"]["message"] == "max_tokens: Field required"
    assert lines["stream"]["error"]["error"]["message"].startswith("stream:")


def test_max_tokens_cuts_the_answer_short(make_api: MakeApi) -> None:
    api = make_api(completion_chars=200)
    batch = api.submit(1, max_tokens=5)
    api.end(batch["id"])

    (line,) = api.lines(batch["id"])

    message = line["result"]["message"]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 5
    assert len(message["content"][0]["text"]) == 20


# -- results ---------------------------------------------------------------------------------


def test_results_are_jsonl_in_a_seeded_shuffled_order(make_api: MakeApi, adapter: str) -> None:
    api = make_api(adapter)
    batch = api.submit(30)
    ended = api.end(batch["id"])

    response = api.results(batch["id"])
    order = [line["custom_id"] for line in api.lines(batch["id"])]

    assert response.headers["content-type"] == "application/x-jsonl"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content.endswith(b"}\n") and b"\r\n" not in response.content
    assert ended["results_url"].endswith(f"/v1/messages/batches/{batch['id']}/results")
    assert ended["results_url"].startswith("http://")
    assert sorted(order) == sorted(f"r{i}" for i in range(30))
    assert order != [f"r{i}" for i in range(30)]
    assert api.emulator.produced(batch["id"]) == api.lines(batch["id"])
    assert len(api.emulator.ledger.calls_to("file_content", 200)) == 3  # the results route


def test_a_relative_results_url_is_served_on_request(make_api: MakeApi) -> None:
    api = make_api(relative_results_url=True)
    batch = api.submit(1)

    ended = api.end(batch["id"])

    assert ended["results_url"] == f"/v1/messages/batches/{batch['id']}/results"
    assert api.http.get(ended["results_url"].removeprefix("/v1")).status_code == 200


def test_results_answer_404_before_the_end_and_once_archived(make_api: MakeApi) -> None:
    api = make_api()
    batch = api.submit(1)

    early = api.results(batch["id"])
    api.end(batch["id"])
    ready = api.results(batch["id"])
    api.clock.advance(29 * 86400)
    archived = api.get(batch["id"])
    late = api.results(batch["id"])

    assert (early.status_code, early.json()["error"]["type"]) == (404, "not_found_error")
    assert ready.status_code == 200
    assert archived["archived_at"] == "2026-01-30T00:00:00.000000Z"
    assert archived["processing_status"] == "ended"
    assert late.status_code == 404


def test_a_batch_the_core_fails_ends_with_every_request_errored(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(fail_with="server_error")
    batch = api.submit(3)

    ended = api.end(batch["id"])
    lines = api.lines(batch["id"])

    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 0,
        "errored": 3,
        "canceled": 0,
        "expired": 0,
    }
    assert sorted(line["custom_id"] for line in lines) == ["r0", "r1", "r2"]
    assert {line["result"]["error"]["error"]["type"] for line in lines} == {"api_error"}


def test_per_line_faults_become_errored_results_and_counts_still_sum(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(line_429=0.3, line_500=0.3, missing_lines=0.2)
    batch = api.submit(40)

    counts = api.end(batch["id"])["request_counts"]
    lines = api.lines(batch["id"])

    assert sum(counts.values()) == 40
    kinds = {
        line["result"]["error"]["error"]["type"] for line in lines if "error" in line["result"]
    }
    assert kinds == {"rate_limit_error", "api_error"}
    assert len(lines) < 40  # lines lost from the results, while the counts keep them
    errored = [line for line in lines if line["result"]["type"] == "errored"]
    assert 0 < len(errored) <= counts["errored"]


# -- list, cancel, delete --------------------------------------------------------------------


def test_list_pages_both_ways_and_checks_its_limit(make_api: MakeApi) -> None:
    api = make_api()
    ids = []
    for number in range(5):
        ids.append(api.submit(1, prefix=f"b{number}-")["id"])
    newest = ids[::-1]

    default = api.http.get(BATCHES).json()
    before = api.http.get(BATCHES, params={"limit": 2, "before_id": newest[3]}).json()
    oldest = api.http.get(BATCHES, params={"limit": 2, "before_id": newest[1]}).json()
    after = api.http.get(BATCHES, params={"limit": 10, "after_id": newest[2]}).json()

    assert [b["id"] for b in default["data"]] == newest
    assert default["has_more"] is False
    assert (default["first_id"], default["last_id"]) == (newest[0], newest[-1])
    assert [b["id"] for b in before["data"]] == newest[1:3]
    assert before["has_more"] is True
    assert ([b["id"] for b in oldest["data"]], oldest["has_more"]) == ([newest[0]], False)
    assert ([b["id"] for b in after["data"]], after["has_more"]) == (newest[3:], False)
    for limit in ("0", "1001", "x"):
        assert api.http.get(BATCHES, params={"limit": limit}).status_code == 400
    assert api.http.get(BATCHES, params={"limit": "1000"}).status_code == 200
    both = {"after_id": newest[0], "before_id": newest[1]}
    assert api.http.get(BATCHES, params=both).status_code == 400


def test_a_workspace_sees_only_its_own_batches(make_api: MakeApi) -> None:
    api = make_api()
    ours = api.create({"requests": requests(1)}, **{"anthropic-workspace-id": "wrkspc_a"}).json()
    theirs = api.create({"requests": requests(1)}, **{"anthropic-workspace-id": "wrkspc_b"}).json()

    listed = api.http.get(BATCHES, headers={"anthropic-workspace-id": "wrkspc_a"}).json()
    foreign = api.http.get(
        f"{BATCHES}/{theirs['id']}", headers={"anthropic-workspace-id": "wrkspc_a"}
    )

    assert [b["id"] for b in listed["data"]] == [ours["id"]]
    assert foreign.status_code == 404


def test_cancel_of_a_canceling_batch_is_a_no_op(make_api: MakeApi) -> None:
    api = make_api(cancel_seconds=10)
    batch = api.submit(3)

    first = api.http.post(f"{BATCHES}/{batch['id']}/cancel").json()
    api.clock.advance(5)
    second = api.http.post(f"{BATCHES}/{batch['id']}/cancel").json()

    assert first["processing_status"] == second["processing_status"] == "canceling"
    assert first["cancel_initiated_at"] == second["cancel_initiated_at"]
    assert [call.route for call in api.emulator.ledger.calls_to("cancel_batch", 200)] == [
        "cancel_batch"
    ] * 2


def test_unknown_paths_are_not_found(make_api: MakeApi) -> None:
    api = make_api()

    for method, path in [("GET", "/files"), ("POST", "/batches"), ("PUT", BATCHES)]:
        response = api.http.request(method, path)
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"


# -- the mode's own faults -------------------------------------------------------------------


def test_a_fresh_batch_id_answers_404_for_a_while(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add("create_batch", MessageBatchFault(not_found_seconds=3))
    batch = api.submit(1)

    early = api.http.get(f"{BATCHES}/{batch['id']}")
    early_list = api.http.get(BATCHES).json()["data"]
    api.clock.advance(3)
    later = api.http.get(f"{BATCHES}/{batch['id']}")
    again = api.submit(1)

    assert early.status_code == 404 and early_list == []
    assert later.status_code == 200
    assert api.http.get(f"{BATCHES}/{again['id']}").status_code == 200  # times=1: one batch


def test_crlf_results_and_a_missing_content_type(make_api: MakeApi, adapter: str) -> None:
    api = make_api(adapter)
    api.emulator.faults.add_json({"route": "create_batch", "kind": "message_batch", "crlf": True})
    api.emulator.faults.add("file_content", NoContentType())
    batch = api.submit(3)
    api.end(batch["id"])

    bare = api.results(batch["id"])
    labelled = api.results(batch["id"])

    assert "content-type" not in bare.headers
    assert labelled.headers["content-type"] == "application/x-jsonl"
    assert bare.content == labelled.content
    assert bare.content.count(b"\r\n") == 3 and bare.content.endswith(b"}\r\n")


def test_a_truncated_results_body_breaks_the_read(make_api: MakeApi) -> None:
    api = make_api()
    batch = api.submit(10)
    api.end(batch["id"])
    api.emulator.faults.add("file_content", truncate=0.5)

    with pytest.raises(httpx.RemoteProtocolError):
        api.results(batch["id"])
    assert len(api.lines(batch["id"])) == 10


def test_the_mode_faults_parse_from_json_and_are_checked() -> None:
    assert MessageBatchFault.from_json({"not_found_seconds": 2, "crlf": "true"}) == (
        MessageBatchFault(2.0, crlf=True)
    )
    assert MessageBatchFault(1.0).merge(MessageBatchFault(crlf=True)) == MessageBatchFault(
        1.0, True
    )
    with pytest.raises(ValueError, match="needs"):
        MessageBatchFault()
    with pytest.raises(ValueError, match=">= 0"):
        MessageBatchFault(-1.0)


# -- determinism, the command line and the admin routes --------------------------------------


def test_the_same_seed_gives_byte_identical_answers(make_api: MakeApi) -> None:
    def run(api: Api) -> list[bytes]:
        api.emulator.faults.add_batch_fault(line_500=0.2)
        created = api.create({"requests": requests(12)})
        batch_id = created.json()["id"]
        api.clock.advance(60)
        answers = [created.content, api.http.get(f"{BATCHES}/{batch_id}").content]
        return [*answers, api.results(batch_id).content, api.http.get(BATCHES).content]

    first = run(make_api(seed=7, own_clock=ManualClock()))
    second = run(make_api(seed=7, own_clock=ManualClock()))
    other = run(make_api(seed=8, own_clock=ManualClock()))

    assert first == second
    assert first[2] != other[2]


def test_the_command_line_and_health_know_the_mode(make_api: MakeApi) -> None:
    from tests.emulator.test_emulator_cli import parse

    config = config_from_args(parse("--mode", "anthropic", "--relative-results-url"))
    api = make_api()

    assert (config.mode, config.relative_results_url) == ("anthropic", True)
    assert api.http.get("http://emulator.test/_emulator/health").json()["mode"] == "anthropic"


def test_a_batch_bound_to_fail_but_cancelled_first_ends_canceled(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add_batch_fault(fail_with="server_error")
    batch = api.submit(2)

    api.http.post(f"{BATCHES}/{batch['id']}/cancel")
    counts = api.end(batch["id"])["request_counts"]

    assert (counts["canceled"], counts["errored"]) == (2, 0)
    assert [line["result"] for line in api.lines(batch["id"])] == [{"type": "canceled"}] * 2


def test_a_late_create_is_carried_out_after_its_error(make_api: MakeApi) -> None:
    api = make_api()
    api.emulator.faults.add("create_batch", LateApply(30))

    refused = api.create({"requests": requests(2)})
    nothing_yet = api.http.get(BATCHES).json()["data"]
    api.clock.advance(30)
    listed = api.http.get(BATCHES).json()["data"]

    assert (refused.status_code, refused.json()["error"]["type"]) == (502, "api_error")
    assert nothing_yet == []
    assert [b["request_counts"]["processing"] for b in listed] == [2]
    assert [entry.id for entry in api.emulator.ledger.batches] == [listed[0]["id"]]


def test_the_command_serves_anthropic_mode_with_its_faults(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    command = [
        sys.executable, "-m", "orchestrator", "emulator", "--port", "0",
        "--port-file", str(port_file), "--mode", "anthropic", "--log-level", "warning",
        "--fault", "get_batch:status=529,times=1",
        "--fault", "create_batch:kind=message_batch,not_found_seconds=600,times=1",
        "--storage-dir", str(tmp_path / "store"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    headers = {"x-api-key": "k", **VERSION}
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        base = f"http://127.0.0.1:{int(port_file.read_text())}/v1{BATCHES}"
        health = httpx.get(f"{base.split('/v1')[0]}/_emulator/health").json()
        overloaded = httpx.get(f"{base}/msgbatch_x", headers=headers)
        created = httpx.post(base, json={"requests": requests(1)}, headers=headers).json()
        fresh = httpx.get(f"{base}/{created['id']}", headers=headers)
    finally:
        process.terminate()
        process.communicate(timeout=20)

    assert health["mode"] == "anthropic"
    assert (overloaded.status_code, overloaded.json()["error"]["type"]) == (529, "overloaded_error")
    assert created["id"].startswith("msgbatch_")
    assert fresh.status_code == 404  # within its ten minutes of invisibility
    assert process.returncode == 0
