"""Framework-free request and response values: what the adapters translate to and from.

The body of a request is an iterable of byte chunks so an upload can be streamed to disk; the body of
a response is bytes or an iterator of chunks so a file can be streamed from disk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

JSON_TYPE = "application/json"

# JSON bodies of API calls (create batch, admin) are tiny; refuse to buffer more than this.
MAX_JSON_BODY_BYTES = 1024 * 1024


class Headers(Mapping[str, str]):
    """A read-only, case-insensitive mapping of header names to values."""

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items = {name.lower(): value for name, value in pairs}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        shown = {k: ("***" if k == "authorization" else v) for k, v in self._items.items()}
        return f"Headers({shown!r})"


@dataclasses.dataclass
class EmuRequest:
    """One HTTP request, as the core sees it."""

    method: str
    path: str
    query: Mapping[str, str] = dataclasses.field(default_factory=dict)
    headers: Headers = dataclasses.field(default_factory=Headers)
    body: Iterable[bytes] = ()
    # Scheme and authority the client called ("http://127.0.0.1:8800"), "" when unknown: for
    # answers that hold an absolute URL of the emulator itself.
    base_url: str = ""

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] = b"",
        base_url: str = "",
    ) -> EmuRequest:
        chunks: Iterable[bytes] = (body,) if isinstance(body, bytes) else body
        return cls(method.upper(), path, dict(query or {}), Headers(headers), chunks, base_url)

    def read_json(self) -> Any:
        """The body parsed as JSON; raises ValueError if it is too large or not JSON."""
        data = bytearray()
        for chunk in self.body:
            data += chunk
            if len(data) > MAX_JSON_BODY_BYTES:
                raise ValueError("request body is too large")
        if not data.strip():
            raise ValueError("request body is empty")
        return orjson.loads(bytes(data))

    def drain(self) -> None:
        """Consume what is left of the body, so a streaming client is not cut off mid-send."""
        for _ in self.body:
            pass


@dataclasses.dataclass
class EmuResponse:
    """One HTTP response. ``delay_seconds`` asks the adapter to answer late (a fault);
    ``drop_connection`` asks it to break the connection once the body is sent, which
    :meth:`cut_short` made shorter than its ``content-length`` (a fault too)."""

    status: int
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes | Iterator[bytes] = b""
    delay_seconds: float = 0.0
    drop_connection: bool = False

    def cut_short(self, fraction: float) -> None:
        """Keep ``fraction`` of the body (always less than all of it) but declare its full length.

        Streamed bodies must carry ``content-length``; an empty body has nothing to cut.
        """
        body = self.body
        total = len(body) if isinstance(body, bytes) else int(self.headers["content-length"])
        if total == 0:
            return
        keep = min(int(total * fraction), total - 1)
        self.headers["content-length"] = str(total)
        self.body = self.body[:keep] if isinstance(self.body, bytes) else _Prefix(self.body, keep)
        self.drop_connection = True

    def end_early(self, fraction: float) -> None:
        """Keep ``fraction`` of the body and declare only that: a response that ends cleanly,
        short, as from a proxy that buffered part of it. The client cannot tell from HTTP."""
        body = self.body
        total = len(body) if isinstance(body, bytes) else int(self.headers["content-length"])
        keep = min(int(total * fraction), max(total - 1, 0))
        self.headers["content-length"] = str(keep)
        self.body = self.body[:keep] if isinstance(self.body, bytes) else _Prefix(self.body, keep)

    def read(self) -> bytes:
        """The whole body (consumes a streamed one)."""
        if isinstance(self.body, bytes):
            return self.body
        data = b"".join(self.body)
        self.body = data
        return data

    def json(self) -> Any:
        return orjson.loads(self.read())

    def close(self) -> None:
        """Release a streamed body that will not be read (closes its file handle)."""
        close = getattr(self.body, "close", None)
        if callable(close):
            close()


# What answers a route (the core's and every mode's): the request, and the id its path names
# (None for a collection's routes).
Handler = Callable[[EmuRequest, str | None], EmuResponse]


class _Prefix(Iterator[bytes]):
    """The first ``limit`` bytes of a chunk stream; closes the stream when done or closed."""

    def __init__(self, chunks: Iterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._left = limit

    def __next__(self) -> bytes:
        if self._left <= 0:
            self.close()
            raise StopIteration
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self._left = 0
            raise
        chunk = chunk[: self._left]
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if callable(close):
            close()


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> EmuResponse:
    merged = {"content-type": JSON_TYPE, **(headers or {})}
    return EmuResponse(status, merged, dump_json(payload))


def dump_json(payload: Any) -> bytes:
    # orjson keeps insertion order and has one fixed float format: stable bytes for equal input.
    return orjson.dumps(payload)
