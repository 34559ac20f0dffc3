"""In-process adapter: an ``httpx.MockTransport`` that hands each request to the emulator.

A delay fault cannot sleep here (tests must not wait), so it is judged against the client's read
timeout: a delay at least that long raises ``httpx.ReadTimeout`` (after the emulator did the work,
as a real server would have); a shorter one is answered at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from orchestrator.emulator.core import Emulator
from orchestrator.emulator.messages import EmuRequest, EmuResponse


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body streamed from the emulator (works for sync and async clients)."""

    def __init__(self, response: EmuResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[bytes]:
        body = self._response.body
        if isinstance(body, bytes):
            yield body
        else:
            yield from body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk

    def close(self) -> None:
        self._response.close()

    async def aclose(self) -> None:
        self._response.close()


def to_emu_request(request: httpx.Request) -> EmuRequest:
    # MockTransport has already read the request body into memory.
    return EmuRequest.build(
        request.method,
        request.url.path,
        query=dict(request.url.params),
        headers=request.headers.items(),
        body=request.content,
    )


def mock_transport(emulator: Emulator) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        response = emulator.handle(to_emu_request(request))
        if response.delay_seconds > 0 and _times_out(request, response.delay_seconds):
            response.close()
            raise httpx.ReadTimeout(
                f"emulated delay of {response.delay_seconds}s exceeded the read timeout",
                request=request,
            )
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_Body(response),
            request=request,
        )

    return httpx.MockTransport(handler)


def _times_out(request: httpx.Request, delay: float) -> bool:
    timeout = request.extensions.get("timeout", {})
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return read is not None and delay >= read
