"""Fixtures for the emulator's tests: a manual clock, emulators, and clients over either adapter.

``make_api(adapter, **config)`` returns an :class:`Api`: an httpx client talking to a fresh
emulator through the in-process MockTransport (``"mock"``) or a real uvicorn server (``"server"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from orchestrator.clock import ManualClock
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer, mock_transport

TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT = "/v1/chat/completions"


def chat_line(
    custom_id: str, *, model: str = "openai/gpt-4o-mini", content: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content or f"Hi {custom_id}"}]}
    return {
        "custom_id": custom_id,
        "provider": "openai",
        "method": "POST",
        "url": CHAT,
        "body": body,
        **extra,
    }


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def chat_file(count: int, prefix: str = "r") -> bytes:
    return jsonl(chat_line(f"{prefix}{i}") for i in range(count))


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line]


@dataclasses.dataclass
class Api:
    """A client bound to one emulator, with the few calls every test needs.

    The JSONL builders hang off it too, so test modules need no import from this conftest.
    """

    chat_line = staticmethod(chat_line)
    jsonl = staticmethod(jsonl)
    chat_file = staticmethod(chat_file)
    parse_jsonl = staticmethod(parse_jsonl)

    emulator: Emulator
    clock: ManualClock
    http: httpx.Client
    base_url: str

    def upload(
        self, content: bytes, *, filename: str = "batch.jsonl", purpose: str | None = "batch"
    ) -> httpx.Response:
        data = {"purpose": purpose} if purpose is not None else {}
        return self.http.post("/files", data=data, files={"file": (filename, content)})

    def upload_id(self, content: bytes) -> str:
        response = self.upload(content)
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    def create(self, file_id: str, **overrides: Any) -> httpx.Response:
        payload = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
        return self.http.post("/batches", json={**payload, **overrides})

    def submit(self, content: bytes, **overrides: Any) -> dict[str, Any]:
        response = self.create(self.upload_id(content), **overrides)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def get(self, batch_id: str) -> dict[str, Any]:
        response = self.http.get(f"/batches/{batch_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def finish(self, batch_id: str, step: float = 10.0, max_steps: int = 1000) -> dict[str, Any]:
        """Advance the clock until the batch is terminal; returns the final batch object."""
        for _ in range(max_steps):
            batch = self.get(batch_id)
            if batch["status"] in TERMINAL:
                return batch
            self.clock.advance(step)
        raise AssertionError(f"batch {batch_id} never finished")

    def content(self, file_id: str) -> bytes:
        response = self.http.get(f"/files/{file_id}/content")
        assert response.status_code == 200, response.text
        return response.content


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_emulator(clock: ManualClock, tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    made: list[Emulator] = []

    def make(own_clock: ManualClock | None = None, **config: Any) -> Emulator:
        config.setdefault("storage_dir", tmp_path / "storage")
        emulator = Emulator(EmulatorConfig(**config), own_clock or clock)
        made.append(emulator)
        return emulator

    yield make
    for emulator in made:
        emulator.close()


@pytest.fixture
def make_api(
    make_emulator: Callable[..., Emulator], clock: ManualClock
) -> Iterator[Callable[..., Api]]:
    with contextlib.ExitStack() as stack:

        def make(
            adapter: str = "mock",
            *,
            token: str = "test-key",
            own_clock: ManualClock | None = None,
            **config: Any,
        ) -> Api:
            """``own_clock`` gives this emulator a clock of its own instead of the shared one."""
            emulator = make_emulator(own_clock, **config)
            headers = {"Authorization": f"Bearer {token}"}
            if adapter == "server":
                server = stack.enter_context(EmulatorServer(emulator))
                base_url = server.base_url
                http = httpx.Client(base_url=base_url, headers=headers, timeout=10.0)
            else:
                base_url = "http://emulator.test" + emulator.config.path_prefix
                transport = mock_transport(emulator)
                http = httpx.Client(transport=transport, base_url=base_url, headers=headers)
            stack.enter_context(http)
            return Api(emulator, own_clock or clock, http, base_url)

        yield make


@pytest.fixture(params=["mock", "server"])
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)
