"""Gemini mode's Files API: resumable uploads, File objects, get, delete and download.

A file ``files/<id>`` is the core's stored file ``<id>``: an upload (purpose ``uploaded``, only the
ledger shows it; kept 48 h) or a batch's responses file, which the core wrote and the batch side
(:mod:`orchestrator.emulator.modes.gemini`) makes public with :meth:`GeminiFiles.add_generated`.

Where the SDK (google-genai 3.6.1) and the reference disagree, the SDK wins:

- the upload's second step carries no API key in the SDK (the session URL is the credential), so
  it is not asked for one (``GeminiWire.authenticate``); its every answer, errors included, has
  ``x-goog-upload-status``, without which the SDK sleeps and retries (``GeminiWire.finish``);
- downloads: the SDK calls ``/v1beta/files/{id}:download?alt=media``, the docs
  ``/download/v1beta/...``; both are served.

Only resumable uploads are supported; an uploaded file cannot be downloaded (400, unverified).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
from pathlib import Path
from typing import Any

from orchestrator.emulator import routes
from orchestrator.emulator.config import GEMINI_ROOT, EmulatorConfig
from orchestrator.emulator.errors import ApiProblem
from orchestrator.emulator.faults import FaultInjector
from orchestrator.emulator.files import FileChunks, StoredFile
from orchestrator.emulator.ids import IdGenerator
from orchestrator.emulator.jsonl import FileIndex
from orchestrator.emulator.marks import FileNotReady
from orchestrator.emulator.messages import EmuRequest, EmuResponse, Handler, dump_json
from orchestrator.emulator.modes import gemini_shapes as shapes
from orchestrator.emulator.state import State
from orchestrator.emulator.uploads import Upload

Json = dict[str, Any]
# Gemini deletes files 48 h after their upload.
FILE_TTL_SECONDS = 172_800
UPLOADED = "uploaded"  # the core's purpose for a Files API upload (only the ledger shows it)
UPLOAD_ROOT = "/upload" + GEMINI_ROOT + "/"


def is_upload_step(request: EmuRequest, route: str) -> bool:
    """A call that sends an upload session its bytes (after the ``start`` call)."""
    return route == routes.UPLOAD_FILE and "upload_id" in request.query


@dataclasses.dataclass
class FileInfo:
    """What the Files API says about a file that the core does not keep."""

    display_name: str | None
    mime_type: str
    source: str  # UPLOADED | GENERATED
    sha256: str | None = None
    # A hide_responses fault: not found until then (virtual Unix seconds).
    hidden_until: float = 0.0

    def info(self) -> Json:
        return {
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sha256Hash": self.sha256,
            "source": self.source,
        }


@dataclasses.dataclass
class _Session:
    """A resumable upload between its start and its finalize."""

    display_name: str | None
    mime_type: str
    path: Path
    received: int = 0
    sha256: Any = dataclasses.field(default_factory=hashlib.sha256)


class GeminiFiles:
    """The Files API's half of gemini mode, on the core's state and faults."""

    def __init__(self, config: EmulatorConfig, state: State, faults: FaultInjector) -> None:
        self._config = config
        self._state = state
        self._faults = faults
        self._lock = threading.Lock()
        self._files: dict[str, FileInfo] = {}
        self._sessions: dict[str, _Session] = {}
        self._ids = IdGenerator(config.seed, config.instance)
        self.handlers: dict[str, Handler] = {
            routes.UPLOAD_FILE: self._upload,
            routes.GET_FILE: self._get_file,
            routes.DELETE_FILE: self._delete_file,
            routes.FILE_CONTENT: self._download,
        }

    def public(self, file_id: str) -> tuple[StoredFile, FileInfo] | None:
        """A file the Files API shows now: known, visible, not expired nor hidden by a fault."""
        with self._lock:
            info = self._files.get(file_id)
        record = self._state.file(file_id)
        now = self._state.now()
        if info is None or record is None or now < info.hidden_until:
            return None
        if record.expires_at is not None and now >= record.expires_at:
            return None
        return record, info

    def add_generated(self, file_id: str, display_name: str, hidden_until: float) -> None:
        """Show a batch's responses file (the first call for it decides when)."""
        with self._lock:
            if file_id not in self._files:
                self._files[file_id] = FileInfo(
                    display_name, "application/jsonl", "GENERATED", hidden_until=hidden_until
                )

    # -- uploads -------------------------------------------------------------------------------

    def _upload(self, request: EmuRequest, _target: str | None) -> EmuResponse:
        commands = {
            part.strip()
            for part in request.headers.get("x-goog-upload-command", "").lower().split(",")
        }
        if "start" in commands:
            return self._start_upload(request)
        upload_id = request.query.get("upload_id")
        if upload_id is None or not commands & {"upload", "finalize"}:
            request.drain()
            message = "Only resumable uploads are supported (X-Goog-Upload-Protocol: resumable)."
            raise ApiProblem(400, message)
        return self._receive(request, upload_id, "finalize" in commands)

    def _start_upload(self, request: EmuRequest) -> EmuResponse:
        if request.headers.get("x-goog-upload-protocol", "").lower() != "resumable":
            request.drain()
            raise ApiProblem(400, "Only resumable uploads are supported.")
        payload = shapes.json_object(b"".join(request.body), allow_empty=True)
        meta = shapes.field(payload, "file") or {}
        if not isinstance(meta, dict):
            raise ApiProblem(400, "Invalid JSON payload: 'file' must be an object.")
        display = shapes.field(meta, "displayName", "display_name")
        mime = (
            request.headers.get("x-goog-upload-header-content-type")
            or shapes.field(meta, "mimeType", "mime_type")
            or "application/octet-stream"
        )
        upload_id = self._ids.next("upload", "")
        session = _Session(display if isinstance(display, str) else None, str(mime),
                           self._state.blobs.new_path())  # fmt: skip
        session.path.touch()
        with self._lock:
            self._sessions[upload_id] = session
        query = f"upload_id={upload_id}&upload_protocol=resumable"
        headers = {
            "x-goog-upload-url": f"{_base_url(request)}{UPLOAD_ROOT}files?{query}",
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": "8388608",
            "content-type": shapes.JSON_TYPE,
        }
        return EmuResponse(200, headers, b"")

    def _receive(self, request: EmuRequest, upload_id: str, finalize: bool) -> EmuResponse:
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None:
            request.drain()
            raise ApiProblem(404, f"No upload session {upload_id!r}.")
        offset = request.headers.get("x-goog-upload-offset")
        if offset is not None and offset.strip() != str(session.received):
            request.drain()
            raise ApiProblem(400, f"Upload offset {offset} does not match {session.received}.")
        with session.path.open("ab") as out:
            for chunk in request.body:
                session.received += len(chunk)
                if session.received > self._config.max_file_bytes:
                    request.drain()
                    self._drop_session(upload_id, session)
                    raise ApiProblem(400, "The file is larger than the upload limit.")
                out.write(chunk)
                session.sha256.update(chunk)
        if not finalize:
            return EmuResponse(200, {"x-goog-upload-status": "active"}, b"")
        with self._lock:
            self._sessions.pop(upload_id, None)
        marks = self._faults.take_marks(routes.UPLOAD_FILE)
        hide = max((m.not_ready for m in marks if isinstance(m, FileNotReady)), default=0.0)
        upload = Upload(session.display_name or "upload.jsonl", session.path, session.received,
                        FileIndex(), {})  # fmt: skip
        record = self._state.add_upload(upload, UPLOADED, FILE_TTL_SECONDS, hide)
        digest = base64.b64encode(session.sha256.digest()).decode("ascii")
        info = FileInfo(session.display_name, session.mime_type, "UPLOADED", digest)
        with self._lock:
            self._files[record.id] = info
        body = {"file": _file_object(request, record, info)}
        headers = {"content-type": shapes.JSON_TYPE, "x-goog-upload-status": "final"}
        return EmuResponse(200, headers, dump_json(body))

    def _drop_session(self, upload_id: str, session: _Session) -> None:
        with self._lock:
            self._sessions.pop(upload_id, None)
        self._state.blobs.remove(session.path)

    # -- files ---------------------------------------------------------------------------------

    def _get_file(self, request: EmuRequest, target: str | None) -> EmuResponse:
        file_id = target or ""
        found = self.public(file_id)
        if found is None:
            raise _file_not_found(file_id)
        return shapes.ok(_file_object(request, *found))

    def _delete_file(self, request: EmuRequest, target: str | None) -> EmuResponse:
        request.drain()
        file_id = target or ""
        if self.public(file_id) is None or not self._state.delete_file(file_id):
            raise _file_not_found(file_id)
        with self._lock:
            self._files.pop(file_id, None)
        return shapes.ok({})

    def _download(self, _request: EmuRequest, target: str | None) -> EmuResponse:
        file_id = target or ""
        found = self.public(file_id)
        if found is None:
            raise _file_not_found(file_id)
        record, info = found
        if info.source != "GENERATED":
            raise ApiProblem(400, "Only generated files can be downloaded; this file was uploaded.")
        try:
            chunks = FileChunks(record.path)
        except FileNotFoundError:
            raise _file_not_found(file_id) from None
        headers = {"content-type": "application/octet-stream", "content-length": str(record.bytes)}
        return EmuResponse(200, headers, chunks)


def _base_url(request: EmuRequest) -> str:
    """Scheme and authority the client called, for the absolute URLs of answers."""
    return request.base_url or "http://localhost"


def _file_object(request: EmuRequest, record: StoredFile, info: FileInfo) -> Json:
    return shapes.file_object(record.id, record.bytes, record.created_at, record.expires_at,
                              info.info(), _base_url(request))  # fmt: skip


def _file_not_found(file_id: str) -> ApiProblem:
    return ApiProblem(404, f"File files/{file_id} not found.")
