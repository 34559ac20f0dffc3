"""Admin routes under ``/_emulator`` (outside the API prefix, no auth, never faulted or logged).

They let a test that talks to the emulator over real HTTP do what an in-process test does with the
Python objects: read the ledger, move the clock, add or clear faults, revoke the key, release
batches a fault holds in finalizing.

    GET    /_emulator/health           mode, prefix, seed, virtual now, key state
    GET    /_emulator/ledger           files, batches, calls
    POST   /_emulator/clock/advance    {"seconds": 3600}
    GET    /_emulator/faults           the active rules
    POST   /_emulator/faults           one rule: {"route", "times", "probability", "kind", ...}
    DELETE /_emulator/faults           remove every rule (batches already marked stay marked)
    POST   /_emulator/revoke-key       every API call gets 401 ...
    POST   /_emulator/restore-key      ... until this
    POST   /_emulator/batches/release  {"batch_id": "..."} or no body for all stuck batches
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from orchestrator.emulator.messages import EmuRequest, EmuResponse, json_response

if TYPE_CHECKING:
    from orchestrator.emulator.core import Emulator

ADMIN_PREFIX = "/_emulator"


@runtime_checkable
class AdvanceableClock(Protocol):
    def advance(self, seconds: float) -> dt.datetime: ...


AdminHandler = Callable[["Emulator", EmuRequest], EmuResponse]


def is_admin_path(path: str) -> bool:
    return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")


def handle(emulator: Emulator, request: EmuRequest) -> EmuResponse:
    action = request.path[len(ADMIN_PREFIX) :].rstrip("/")
    handler = _HANDLERS.get((request.method, action))
    if handler is None:
        return _error(404, f"no admin route {request.method} {request.path}")
    try:
        return handler(emulator, request)
    except (ValueError, KeyError, TypeError) as exc:
        return _error(400, str(exc))


def _health(emulator: Emulator, _request: EmuRequest) -> EmuResponse:
    config = emulator.config
    return json_response(
        200,
        {
            "status": "ok",
            "mode": config.mode,
            "path_prefix": config.api_root,
            "seed": config.seed,
            "now": emulator.clock.now().timestamp(),
            "key_revoked": emulator.faults.key_revoked,
        },
    )


def _ledger(emulator: Emulator, _request: EmuRequest) -> EmuResponse:
    return json_response(200, emulator.ledger.to_json())


def _advance(emulator: Emulator, request: EmuRequest) -> EmuResponse:
    seconds = float(_object(request)["seconds"])
    if seconds < 0:
        raise ValueError("seconds must be >= 0")
    clock = emulator.clock
    if not isinstance(clock, AdvanceableClock):
        return _error(409, f"the emulator's clock ({type(clock).__name__}) cannot be advanced")
    return json_response(200, {"now": clock.advance(seconds).timestamp()})


def _list_faults(emulator: Emulator, _request: EmuRequest) -> EmuResponse:
    return json_response(200, {"rules": [rule.to_json() for rule in emulator.faults.rules()]})


def _add_fault(emulator: Emulator, request: EmuRequest) -> EmuResponse:
    rule = emulator.faults.add_json(_object(request))
    return json_response(201, rule.to_json())


def _clear_faults(emulator: Emulator, _request: EmuRequest) -> EmuResponse:
    emulator.faults.clear()
    return json_response(200, {"rules": []})


def _revoke(emulator: Emulator, _request: EmuRequest) -> EmuResponse:
    emulator.revoke_key()
    return json_response(200, {"key_revoked": True})


def _restore(emulator: Emulator, _request: EmuRequest) -> EmuResponse:
    emulator.restore_key()
    return json_response(200, {"key_revoked": False})


def _release(emulator: Emulator, request: EmuRequest) -> EmuResponse:
    options = _object(request, allow_empty=True)
    batch_id = options.get("batch_id")
    if batch_id is not None and not isinstance(batch_id, str):
        raise ValueError("batch_id must be a string")
    return json_response(200, {"released": emulator.release_stuck(batch_id)})


def _object(request: EmuRequest, allow_empty: bool = False) -> dict[str, Any]:
    if allow_empty:
        body = b"".join(request.body)
        request.body = (body,)
        if not body.strip():
            return {}
    payload = request.read_json()
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    return payload


def _error(status: int, message: str) -> EmuResponse:
    return json_response(status, {"error": {"message": message, "type": "emulator_admin_error"}})


_HANDLERS: dict[tuple[str, str], AdminHandler] = {
    ("GET", "/health"): _health,
    ("GET", "/ledger"): _ledger,
    ("POST", "/clock/advance"): _advance,
    ("GET", "/faults"): _list_faults,
    ("POST", "/faults"): _add_fault,
    ("DELETE", "/faults"): _clear_faults,
    ("POST", "/revoke-key"): _revoke,
    ("POST", "/restore-key"): _restore,
    ("POST", "/batches/release"): _release,
}
