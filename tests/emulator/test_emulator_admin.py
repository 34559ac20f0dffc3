"""The /_emulator admin routes, over real HTTP, as an out-of-process test would use them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

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
