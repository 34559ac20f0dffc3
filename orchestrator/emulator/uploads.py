"""Receive a multipart upload as a stream: the ``file`` part goes straight to disk and through the
JSONL scanner, chunk by chunk; the small text fields (``purpose``, ...) are kept in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.errors import ApiProblem
from orchestrator.emulator.files import BlobDir
from orchestrator.emulator.jsonl import FileIndex, JsonlScanner
from orchestrator.emulator.messages import EmuRequest

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 64 * 1024
DEFAULT_FILENAME = "upload.jsonl"


@dataclasses.dataclass
class Upload:
    """A received ``file`` part (already on disk) and the form's other fields."""

    filename: str
    path: Path
    bytes: int
    index: FileIndex
    fields: dict[str, str]


class TooLarge(Exception):
    """The file part passed ``max_file_bytes``; the rest of the body was drained unread."""


def receive_upload(request: EmuRequest, blobs: BlobDir, config: EmulatorConfig) -> Upload:
    """Parse the multipart body; raises ApiProblem(400) or TooLarge."""
    boundary = _boundary(request.headers.get("content-type", ""))
    sink = _Sink(blobs, config)
    parser = MultipartParser(boundary, callbacks=sink.callbacks())
    body = iter(request.body)
    try:
        for chunk in body:
            parser.write(chunk)
            if sink.too_large:
                break
        else:
            parser.finalize()
    except (MultipartParseError, ValueError) as exc:
        sink.discard()
        raise ApiProblem(400, f"Invalid multipart body: {exc}") from exc
    if sink.too_large:
        # Keep reading so the client finishes sending and sees our answer, not a reset.
        for _ in body:
            pass
        sink.discard()
        raise TooLarge()
    return sink.result()


def _boundary(content_type: str) -> bytes:
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiProblem(400, "Expected a multipart/form-data body with a 'file' part.")
    return params[b"boundary"]


class _Sink:
    """The parser's callbacks: routes each part's bytes to the file on disk or a text field."""

    def __init__(self, blobs: BlobDir, config: EmulatorConfig) -> None:
        self._blobs = blobs
        self._config = config
        self._headers: dict[str, bytes] = {}
        self._field_name = b""
        self._field_value = b""
        # What the current part is: "file", "field:<name>", or None for a part we ignore.
        self._part: str | None = None
        self._field = bytearray()
        self._handle: BinaryIO | None = None
        self._scanner = JsonlScanner(config)
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self.too_large = False

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}
        self._field_name = self._field_value = b""
        self._part = None
        self._field.clear()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._field_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field_name.decode("latin-1").lower()] = self._field_value
        self._field_name = self._field_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get("content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == "file" and self.path is None:
            filename = params.get(b"filename", b"").decode("utf-8", "replace")
            self.filename = filename or DEFAULT_FILENAME
            self.path = self._blobs.new_path()
            self._handle = self.path.open("wb")
            self._part = "file"
        elif name and name != "file":
            self._part = "field:" + name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part == "file" and self._handle is not None and not self.too_large:
            self._write_file(data[start:end])
        elif self._part is not None and self._part.startswith("field:"):
            if len(self._field) + (end - start) > MAX_FIELD_BYTES:
                raise ValueError(f"form field {self._part[6:]!r} is too large")
            self._field += data[start:end]

    def _write_file(self, chunk: bytes) -> None:
        assert self._handle is not None
        self.size += len(chunk)
        if self.size > self._config.max_file_bytes:
            self.too_large = True
            return
        self._handle.write(chunk)
        self._scanner.feed(chunk)

    def _part_end(self) -> None:
        if self._part == "file" and self._handle is not None:
            self._handle.close()
        elif self._part is not None and self._part.startswith("field:"):
            self.fields[self._part[6:]] = self._field.decode("utf-8", "replace")
        self._part = None

    def result(self) -> Upload:
        if self.path is None or self.filename is None:
            self.discard()
            raise ApiProblem(400, "Missing required parameter: 'file'.", param="file")
        if self._handle is not None and not self._handle.closed:
            self.discard()
            raise ApiProblem(400, "Invalid multipart body: the file part is incomplete.")
        index = self._scanner.finish()
        return Upload(self.filename, self.path, self.size, index, self.fields)

    def discard(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
        if self.path is not None:
            self._blobs.remove(self.path)
