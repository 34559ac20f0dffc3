"""The /_emulator admin routes, over real HTTP, as an out-of-process test would use them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import pytest

from orchestrator.clock import ScaledClock, SystemClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer, EmuRequest

if TYPE_CHECKING:
    from tests.emulator.conftest import Api

    MakeApi = Callable[..., Api]


def test_admin_routes_drive_an_emulator_over_http(make_api: MakeApi) -> None:
    api = make_api("server")
    admin = httpx.Client(base_url=api.base_url.removesuffix("/v1") + "/_emulator")
    batch_id = api.submit(api.chat_file(2), metadata={"k": "v"})["id"]

    health = admin.get("/health").json()
    advanced = admin.post("/clock/advance", json={"seconds": 3600}).json()
    added = admin.post("/faults", json={"route": "get_batch", "status": 429, "retry_after": 1})
    listed = admin.get("/faults").json()
    limited = api.http.get(f"/batches/{batch_id}")
    done = api.get(batch_id)
    admin.post("/faults", json={"route": "*", "status": 500, "times": None})
    cleared = admin.delete("/faults")
    revoked = admin.post("/revoke-key")
    refused = api.http.get(f"/batches/{batch_id}")
    admin.post("/restore-key")
    ledger = admin.get("/ledger").json()
    admin.close()

    assert (health["status"], health["mode"], health["key_revoked"]) == ("ok", "fastrouter", False)
    assert advanced["now"] == health["now"] + 3600
    assert added.status_code == 201
    assert added.json()["route"] == "get_batch"
    assert [rule["status"] for rule in listed["rules"]] == [429]
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "1")
    assert done["status"] == "completed"
    assert cleared.json() == {"rules": []}
    assert revoked.json() == {"key_revoked": True}
    assert refused.status_code == 401
    assert ledger["batches"][0]["metadata"] == {"k": "v"}
    assert ledger["files"][0]["num_rows"] == 2
    assert [call["status"] for call in ledger["calls"] if call["route"] == "get_batch"] == [
        429,
        200,
        401,
    ]


def test_admin_refuses_bad_input(make_api: MakeApi) -> None:
    api = make_api()

    def admin(method: str, path: str, body: bytes = b"") -> int:
        return api.emulator.handle(_request(method, path, body)).status

    assert admin("POST", "/_emulator/faults", b'{"route": "nope", "status": 500}') == 400
    assert admin("POST", "/_emulator/faults", b'{"kind": "mystery"}') == 400
    assert admin("POST", "/_emulator/clock/advance", b"{}") == 400
    assert admin("POST", "/_emulator/clock/advance", b"[]") == 400
    assert admin("GET", "/_emulator/nothing") == 404


def test_advancing_a_clock_that_cannot_move_is_409() -> None:
    with Emulator(EmulatorConfig(), SystemClock()) as emulator:
        response = emulator.handle(_request("POST", "/_emulator/clock/advance", b'{"seconds": 1}'))

    assert response.status == 409


def test_scaled_clock_drives_the_lifecycle_as_the_cli_uses_it() -> None:
    # Real time runs 1000x faster, and advance() jumps ahead on top of that.
    clock = ScaledClock(scale=1000)
    config = EmulatorConfig(mode="openai")
    with Emulator(config, clock) as emulator, EmulatorServer(emulator) as server:
        http = httpx.Client(base_url=server.base_url, headers={"Authorization": "Bearer k"})
        line = (
            b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}'
        )
        file_id = http.post(
            "/files", data={"purpose": "batch"}, files={"file": ("a.jsonl", line)}
        ).json()["id"]
        batch_id = http.post(
            "/batches",
            json={
                "input_file_id": file_id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        ).json()["id"]
        clock.advance(60)
        status = http.get(f"/batches/{batch_id}").json()["status"]
        http.close()

    assert status == "completed"


def _request(method: str, path: str, body: bytes = b"") -> EmuRequest:
    return EmuRequest.build(method, path, body=body)


def test_admin_adds_every_fault_kind_and_releases_stuck_batches(make_api: MakeApi) -> None:
    api = make_api("server", mode="openai")
    admin = httpx.Client(base_url=api.base_url.removesuffix("/v1") + "/_emulator")
    rules = [
        {"route": "upload_file", "not_ready": 5},
        {"kind": "batch", "stuck_finalizing": "forever", "empty_error_file_id": True,
         "no_usage": True, "line_500": 1.0, "times": None},
        {"route": "file_content", "truncate": 0.5},
        {"route": "get_batch", "delay_seconds": 0.01},
    ]  # fmt: skip

    added = [admin.post("/faults", json=rule) for rule in rules]
    listed = admin.get("/faults").json()["rules"]
    file_id = api.upload_id(api.chat_file(2))
    not_ready = api.create(file_id)
    api.clock.advance(5)
    batch_id = api.create(file_id).json()["id"]
    api.clock.advance(3600)
    stuck = api.get(batch_id)
    released = admin.post("/batches/release").json()
    again = admin.post("/batches/release", json={"batch_id": batch_id}).json()
    unknown = admin.post("/batches/release", json={"batch_id": "batch_nope"})
    done = api.get(batch_id)
    with pytest.raises(httpx.RemoteProtocolError):
        api.http.get(f"/files/{done['error_file_id']}/content")
    ledger = admin.get("/ledger").json()
    admin.close()

    assert [r.status_code for r in added] == [201] * 4
    assert [(r["kind"], r["route"]) for r in listed] == [
        ("not_ready", "upload_file"),
        ("batch", "create_batch"),
        ("truncate", "file_content"),
        ("delay", "get_batch"),
    ]
    assert listed[1]["stuck_finalizing"] == "forever"
    assert not_ready.status_code == 400
    assert (stuck["status"], stuck["error_file_id"], "usage" in stuck) == ("finalizing", "", False)
    assert released == {"released": [batch_id]}
    assert again == {"released": []}
    assert unknown.status_code == 400
    assert (done["status"], done["output_file_id"]) == ("completed", None)
    assert ledger["batches"][0]["faults"]["line_500"] == 1.0
    assert ledger["files"][0]["visible_at"] == ledger["files"][0]["created_at"] + 5


def test_admin_rules_round_trip_through_their_json(make_api: MakeApi) -> None:
    api = make_api()
    faults = api.emulator.faults
    faults.add("get_batch", status=429, retry_after=3, times=None)
    faults.add("file_content", truncate=0.25)
    faults.add_file_not_ready(7)
    faults.add_batch_fault(stuck_finalizing=math.inf, line_429=0.1, shuffle=True)
    original = [rule.to_json() for rule in faults.rules()]

    faults.clear()
    for rule in original:
        faults.add_json(rule)

    def without_id(rules: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in rule.items() if k != "id"} for rule in rules]

    assert without_id([rule.to_json() for rule in faults.rules()]) == without_id(original)
