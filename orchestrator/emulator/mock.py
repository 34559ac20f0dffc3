"""In-process adapter: an ``httpx.MockTransport`` that hands each request to the emulator.

A delay fault cannot sleep here (tests must not wait), so it is judged against the client's read
timeout: a delay at least that long raises ``httpx.ReadTimeout`` (after the emulator did the work,
as a real server would have); a shorter one is answered at once. A truncated body raises
``httpx.RemoteProtocolError`` once its short prefix has been read, in httpx's own words, as it does
when a real server closes the connection before ``content-length`` bytes arrived.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx

from orchestrator.emulator.core import Emulator
from orchestrator.emulator.messages import EmuRequest, EmuResponse


class _Body(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body streamed from the emulator (works for sync and async clients)."""

    def __init__(self, response: EmuResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        body = self._response.body
        chunks = (body,) if isinstance(body, bytes) else body
        received = 0
        for chunk in chunks:
            received += len(chunk)
            yield chunk
        if self._response.drop_connection:
            self._response.close()
            expected = self._response.headers.get("content-length")
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body "
                f"(received {received} bytes, expected {expected})",
                request=self._request,
            )

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
        base_url=f"{request.url.scheme}://{request.url.netloc.decode('ascii')}",
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
            stream=_Body(response, request),
            request=request,
        )

    return httpx.MockTransport(handler)


def _times_out(request: httpx.Request, delay: float) -> bool:
    timeout = request.extensions.get("timeout", {})
    read = timeout.get("read") if isinstance(timeout, dict) else None
    return read is not None and delay >= read
