"""Gemini mode: the Gemini API's batch mode (``generativelanguage.googleapis.com``), as an adapter
over the emulator's core.

Design. Gemini's calls are translated into the core's operations and the core's records back
into Gemini's shapes, so the state machine, the lifecycle on the injected clock, every fault rule
and the ledger are the core's own:

- routes get the core's names (``upload_file``, ``create_batch``, ``get_batch``,
  ``list_batches``, ``cancel_batch``, ``get_file``, ``delete_file``, ``file_content``, and
  ``delete_batch``, new), so ``faults.add("create_batch", status=429)`` means the same here;
- a create turns the inline requests, or the uploaded JSONL, into the core's request lines
  (``custom_id`` = the row's ``key``, or ``metadata.key`` when unique, else a row number; body =
  the GenerateContentRequest plus the model) in one internal file, and creates a core batch on it;
  the core answers each row with :func:`~.gemini_shapes.generate_content` and words it with
  :func:`~.gemini_shapes.result_row` (a per-batch LineShape), into a single responses file;
- the Operation is rendered from the core's batch view: PENDING = validating, RUNNING =
  in_progress/finalizing (and cancelling), SUCCEEDED/FAILED/EXPIRED/CANCELLED; ``batchStats`` from
  its request counts; the output from its results file (inline: read back into
  ``inlinedResponses``; file: ``responsesFile``), in both ``response`` and ``metadata.output``.
  An EXPIRED or CANCELLED batch shows no output, although the core wrote its not-run rows (see
  ``Emulator.produced``): unlike OpenAI, an expired Gemini batch returns nothing, and the client
  must send all of it again.

Ids line up: a batch ``batches/<id>`` is the core's batch ``<id>`` (``Emulator.produced(id)``,
``ledger.batches``), a file ``files/<id>`` the core's file ``<id>``. The ledger's batch metadata
holds ``displayName``, ``model`` and ``source`` (the input file's name or ``inline``); an internal
request file shows in ``ledger.files`` as ``gemini-requests.jsonl``.

Where the SDK (google-genai 3.6.1) and the reference disagree, the SDK wins:

- downloads: the SDK calls ``/v1beta/files/{id}:download?alt=media``, the docs
  ``/download/v1beta/...``; both are served;
- the upload's second step carries no API key in the SDK (the session URL is the credential), so
  it is not asked for one; its every answer, errors included, has ``x-goog-upload-status``, without
  which the SDK sleeps and retries;
- results: the SDK reads only ``metadata.output``; the reference saw ``response``: both are filled;
- batch names: the SDK refuses names not matching ``batches/[^/]+`` (ours are lowercase hex).

Choices where the reference is silent (unverified): an oversized inline body, a bad input config
and an unknown page token are 400 INVALID_ARGUMENT, a missing batch or file 404 NOT_FOUND, a
cancel of a finished batch 400 FAILED_PRECONDITION, a missing key 403 PERMISSION_DENIED; a FAILED
batch carries the LRO ``error`` (code 3, 8 or 13); an uploaded file cannot be downloaded (400);
an inline batch echoes its requests in ``metadata.inputConfig``; delete forgets a batch without
cancelling it; a row whose request is not an object fails INVALID_ARGUMENT (code 3). The core's
``completion_window_seconds`` drives expiry (48 h by default in this mode).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from orchestrator.emulator import routes
from orchestrator.emulator.batches import BatchRecord, CreateParams
from orchestrator.emulator.config import GEMINI_ROOT, EmulatorConfig
from orchestrator.emulator.errors import ApiProblem, register_error_renderer
from orchestrator.emulator.faults import FaultInjector
from orchestrator.emulator.files import FileChunks, StoredFile
from orchestrator.emulator.ids import IdGenerator
from orchestrator.emulator.jsonl import FileIndex, JsonlScanner
from orchestrator.emulator.lifecycle import TERMINAL, Plan, snapshot
from orchestrator.emulator.lines import register_answer
from orchestrator.emulator.marks import BatchFault, FileNotReady
from orchestrator.emulator.messages import EmuRequest, EmuResponse, dump_json
from orchestrator.emulator.modes import gemini_shapes as shapes
from orchestrator.emulator.modes.gemini_faults import GeminiBatchFault, merged
from orchestrator.emulator.state import NotCancellable, State
from orchestrator.emulator.uploads import Upload

Json = dict[str, Any]
# Gemini deletes files 48 h after their upload.
FILE_TTL_SECONDS = 172_800
DEFAULT_PAGE = 50
MAX_PAGE = 1000
UPLOADED = "uploaded"  # the core's purpose for a Files API upload (only the ledger shows it)
_ROW_ID = "\x1frow-"  # custom_id of a row without a usable key (no key holds this character)
_UPLOAD_ROOT = "/upload" + GEMINI_ROOT + "/"
_DOWNLOAD_ROOT = "/download" + GEMINI_ROOT + "/"

Handler = Callable[[EmuRequest, str], EmuResponse]


@dataclasses.dataclass
class _Batch:
    """What Gemini says about a batch that the core does not keep."""

    model: str
    display_name: str | None
    input_config: Json
    inline: bool
    fault: GeminiBatchFault | None
    priority: str | None
    deleted: bool = False


@dataclasses.dataclass
class _File:
    """A file the Files API shows: an upload, or a batch's responses file."""

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


class GeminiWire:
    """The Gemini API's wire format over the core's state, faults and ledger (a core ``Wire``)."""

    def __init__(self, config: EmulatorConfig, state: State, faults: FaultInjector) -> None:
        self._config = config
        self._state = state
        self._faults = faults
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._files: dict[str, _File] = {}
        self._sessions: dict[str, _Session] = {}
        self._ids = IdGenerator(config.seed, config.instance)
        self._creates = itertools.count(1)
        self._handlers: dict[str, Handler] = {
            routes.UPLOAD_FILE: self._upload,
            routes.CREATE_BATCH: self._create,
            routes.GET_BATCH: self._get,
            routes.LIST_BATCHES: self._list,
            routes.CANCEL_BATCH: self._cancel,
            routes.DELETE_BATCH: self._delete,
            routes.GET_FILE: self._get_file,
            routes.DELETE_FILE: self._delete_file,
            routes.FILE_CONTENT: self._download,
        }

    # -- the core's Wire protocol --------------------------------------------------------------

    def match(self, request: EmuRequest) -> routes.Match:
        path, method = request.path, request.method
        if path.startswith(_UPLOAD_ROOT):
            ok = method == "POST" and path[len(_UPLOAD_ROOT) :] == "files"
            return routes.Match(routes.UPLOAD_FILE) if ok else routes.Match(routes.UNKNOWN)
        if path.startswith(_DOWNLOAD_ROOT):
            return _download_match(method, path[len(_DOWNLOAD_ROOT) :])
        if path == GEMINI_ROOT + "/batches" and method == "GET":
            return routes.Match(routes.LIST_BATCHES)
        if not path.startswith(GEMINI_ROOT + "/"):
            return routes.Match(routes.UNKNOWN)
        collection, _, name = path[len(GEMINI_ROOT) + 1 :].partition("/")
        if not name or "/" in name:
            return routes.Match(routes.UNKNOWN)
        if collection == "batches":
            return _batch_match(method, name)
        if collection == "files":
            if name.endswith(":download"):
                return _download_match(method, "files/" + name)
            route = {"GET": routes.GET_FILE, "DELETE": routes.DELETE_FILE}.get(method)
            return routes.Match(route or routes.UNKNOWN, name if route else None)
        model, _, verb = name.partition(":")
        if collection in ("models", "tunedModels") and verb == "batchGenerateContent" and model:
            ok = method == "POST"
            target = f"{collection}/{model}"
            return routes.Match(routes.CREATE_BATCH, target) if ok else routes.Match(routes.UNKNOWN)
        return routes.Match(routes.UNKNOWN)

    def serve(self, request: EmuRequest, matched: routes.Match) -> EmuResponse:
        if not (matched.route == routes.UPLOAD_FILE and "upload_id" in request.query):
            self._authenticate(request)
        if matched.route == routes.UNKNOWN:
            raise ApiProblem(404, f"Invalid URL ({request.method} {request.path}).")
        return self._handlers[matched.route](request, matched.target or "")

    def finish(self, request: EmuRequest, matched: routes.Match, response: EmuResponse) -> None:
        upload_step = matched.route == routes.UPLOAD_FILE and "upload_id" in request.query
        if upload_step and "x-goog-upload-status" not in response.headers:
            response.headers["x-goog-upload-status"] = "final"

    def _authenticate(self, request: EmuRequest) -> None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            message = (
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API."
            )
            raise ApiProblem(403, message)
        if self._config.api_key is not None and key != self._config.api_key:
            raise ApiProblem(401)

    # -- files ---------------------------------------------------------------------------------

    def _upload(self, request: EmuRequest, _target: str) -> EmuResponse:
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
        payload = _json_body(request, allow_empty=True)
        meta = _field(payload, "file") or {}
        if not isinstance(meta, dict):
            raise ApiProblem(400, "Invalid JSON payload: 'file' must be an object.")
        display = _field(meta, "displayName", "display_name")
        mime = (
            request.headers.get("x-goog-upload-header-content-type")
            or _field(meta, "mimeType", "mime_type")
            or "application/octet-stream"
        )
        upload_id = self._ids.next("upload", "")
        session = _Session(display if isinstance(display, str) else None, str(mime),
                           self._state.blobs.new_path())  # fmt: skip
        session.path.touch()
        with self._lock:
            self._sessions[upload_id] = session
        host = request.headers.get("host", "localhost")
        url = f"http://{host}{_UPLOAD_ROOT}files?upload_id={upload_id}&upload_protocol=resumable"
        headers = {
            "x-goog-upload-url": url,
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
        info = _File(session.display_name, session.mime_type, "UPLOADED", digest)
        with self._lock:
            self._files[record.id] = info
        body = {"file": self._file_object(request, record, info)}
        headers = {"content-type": shapes.JSON_TYPE, "x-goog-upload-status": "final"}
        return EmuResponse(200, headers, dump_json(body))

    def _drop_session(self, upload_id: str, session: _Session) -> None:
        with self._lock:
            self._sessions.pop(upload_id, None)
        self._state.blobs.remove(session.path)

    def _public_file(self, file_id: str) -> tuple[StoredFile, _File] | None:
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

    def _file_object(self, request: EmuRequest, record: StoredFile, info: _File) -> Json:
        base = "http://" + request.headers.get("host", "localhost")
        return shapes.file_object(record.id, record.bytes, record.created_at, record.expires_at,
                                  info.info(), base)  # fmt: skip

    def _get_file(self, request: EmuRequest, target: str) -> EmuResponse:
        found = self._public_file(target)
        if found is None:
            raise _file_not_found(target)
        return _ok(self._file_object(request, *found))

    def _delete_file(self, request: EmuRequest, target: str) -> EmuResponse:
        request.drain()
        if self._public_file(target) is None or not self._state.delete_file(target):
            raise _file_not_found(target)
        with self._lock:
            self._files.pop(target, None)
        return _ok({})

    def _download(self, _request: EmuRequest, target: str) -> EmuResponse:
        found = self._public_file(target)
        if found is None:
            raise _file_not_found(target)
        record, info = found
        if info.source != "GENERATED":
            raise ApiProblem(400, "Only generated files can be downloaded; this file was uploaded.")
        try:
            chunks = FileChunks(record.path)
        except FileNotFoundError:
            raise _file_not_found(target) from None
        headers = {"content-type": "application/octet-stream", "content-length": str(record.bytes)}
        return EmuResponse(200, headers, chunks)

    # -- batches -------------------------------------------------------------------------------

    def _create(self, request: EmuRequest, model: str) -> EmuResponse:
        batch = _field(_create_body(request), "batch")
        if not isinstance(batch, dict):
            raise ApiProblem(400, "Invalid JSON payload: 'batch' must be an object.")
        display = _field(batch, "displayName", "display_name")
        if display is not None and not isinstance(display, str):
            raise ApiProblem(400, "Invalid value at 'batch.display_name': expected a string.")
        items, input_config, source = self._input(_field(batch, "inputConfig", "input_config"))
        priority = _field(batch, "priority")
        # Marks are drawn only for a create that goes ahead, so a refused call spends none.
        number = next(self._creates)
        marks = self._faults.take_marks(routes.CREATE_BATCH)
        batch_fault = _merged_batch_fault(marks)
        fault = merged(marks)
        requests = self._state.add_upload(self._request_file(items, model, fault, number), "batch",
                                          None)  # fmt: skip
        metadata = {"model": model, "source": source}
        if display:
            metadata["displayName"] = display
        params = CreateParams(requests.id, shapes.GENERATE_CONTENT, "48h", metadata)
        echo = ""
        if batch_fault is not None and batch_fault.echo_auth:
            echo = request.headers.get("x-goog-api-key", "")
        record = self._state.create_batch(params, batch_fault, echo, shape=shapes.result_row)
        if record is None:  # the internal file vanished: cannot happen short of a bug
            raise ApiProblem(500)
        if fault is not None and (fault.expire or fault.pending_seconds > 0):
            record.plan = _held(record.plan, fault)
        info = _Batch(model, display, input_config, source == "inline", fault,
                      None if priority in (None, 0, "0") else str(priority))  # fmt: skip
        with self._lock:
            self._batches[record.id] = info
        return _ok(self._operation(request, record, info))

    def _input(self, config: object) -> tuple[Iterator[tuple[str, Any]], Json, str]:
        """The rows to run (each ``("key", line)`` or ``("inline", item)``), the echo of the
        input config, and where the rows came from (the file's name or ``inline``)."""
        if not isinstance(config, dict):
            raise ApiProblem(400, "Invalid JSON payload: 'batch.input_config' is required.")
        file_name = _field(config, "fileName", "file_name")
        requests = _field(config, "requests")
        if (file_name is None) == (requests is None):
            message = "batch.input_config must set exactly one of file_name or requests."
            raise ApiProblem(400, message)
        if file_name is not None:
            if not isinstance(file_name, str) or not file_name.startswith("files/"):
                raise ApiProblem(400, "batch.input_config.file_name must look like 'files/<id>'.")
            found = self._public_file(file_name.removeprefix("files/"))
            if found is None or found[1].source != "UPLOADED":
                raise ApiProblem(404, f"File {file_name} not found.")
            return _file_rows(found[0].path), {"fileName": file_name}, file_name
        listed = _field(requests, "requests") if isinstance(requests, dict) else requests
        if not isinstance(listed, list) or not listed:
            message = "batch.input_config.requests.requests must be a non-empty list."
            raise ApiProblem(400, message)
        rows = (("inline", item) for item in listed)
        return rows, {"requests": {"requests": listed}}, "inline"

    def _request_file(
        self,
        rows: Iterator[tuple[str, Any]],
        model: str,
        fault: GeminiBatchFault | None,
        number: int,
    ) -> Upload:
        """The core's request lines for these rows, written to disk and indexed."""
        path = self._state.blobs.new_path()
        scanner = JsonlScanner(self._config)
        seen: set[str] = set()
        size = 0
        with path.open("wb") as out:
            for row, (kind, item) in enumerate(rows):
                line = _request_line(row, kind, item, model, seen)
                if fault is not None and fault.hits(self._config.seed, number, row, "invalid_rows"):
                    line["body"].pop("model", None)  # the core fails a row without a model
                    line["gemini_invalid"] = True
                if fault is not None and fault.hits(
                    self._config.seed, number, row, "null_responses"
                ):
                    line["gemini_null"] = True
                data = orjson.dumps(line) + b"\n"
                out.write(data)
                scanner.feed(data)
                size += len(data)
        return Upload("gemini-requests.jsonl", path, size, scanner.finish(), {})

    def _record(self, target: str) -> tuple[BatchRecord, _Batch]:
        with self._lock:
            info = self._batches.get(target)
        record = self._state.batch(target)
        if info is None or record is None or info.deleted:
            raise ApiProblem(404, f"Batch batches/{target} not found.")
        return record, info

    def _get(self, request: EmuRequest, target: str) -> EmuResponse:
        record, info = self._record(target)
        return _ok(self._operation(request, record, info))

    def _cancel(self, request: EmuRequest, target: str) -> EmuResponse:
        request.drain()
        record, _info = self._record(target)
        try:
            self._state.cancel(record)
        except NotCancellable as exc:
            state = shapes.STATES.get(exc.status, exc.status)
            message = f"Batch batches/{target} is already finished ({state})."
            raise ApiProblem(400, message, code="FAILED_PRECONDITION") from None
        return _ok({})

    def _delete(self, request: EmuRequest, target: str) -> EmuResponse:
        request.drain()
        _record, info = self._record(target)
        with self._lock:
            info.deleted = True
        return _ok({})

    def _list(self, request: EmuRequest, _target: str) -> EmuResponse:
        size = _page_size(request.query.get("pageSize"))
        everything = self._state.page(None, 1 << 62).records  # newest first
        start = 0
        token = request.query.get("pageToken")
        if token:
            cursor = _cursor(token)
            positions = [i for i, record in enumerate(everything) if record.id == cursor]
            if not positions:
                raise ApiProblem(400, "Invalid page token.")
            start = positions[0] + 1
        with self._lock:
            listed = [
                (record, self._batches[record.id])
                for record in everything[start:]
                if record.id in self._batches and not self._batches[record.id].deleted
            ]
        page = listed[:size]
        body: Json = {}
        if page:
            body["operations"] = [self._operation(request, *item) for item in page]
        if len(listed) > size:
            body["nextPageToken"] = _token(page[-1][0].id)
        return _ok(body)

    # -- the Operation ---------------------------------------------------------------------------

    def _operation(self, request: EmuRequest, record: BatchRecord, info: _Batch) -> Json:
        now = self._state.now()
        view: Json = self._state.view(record)  # writes the results once the batch has finished
        status = str(view["status"])
        snap = snapshot(record.plan, now, record.cancel_requested)
        done = status in TERMINAL
        state = shapes.gemini_state(status, view["in_progress_at"] is not None)
        name = f"batches/{record.id}"
        metadata: Json = {"@type": shapes.BATCH_TYPE, "model": info.model}
        if info.display_name:
            metadata["displayName"] = info.display_name
        metadata["inputConfig"] = info.input_config
        moments = [record.plan.created]
        if snap.status == status:  # else the clock moved between the two looks: whole seconds
            moments += [m for m in _moments(snap) if m is not None]
        else:
            moments += [float(m) for m in _view_moments(view) if m is not None]
        end = max(moments) if done else None
        metadata["createTime"] = shapes.rfc3339(record.plan.created)
        if end is not None:
            metadata["endTime"] = shapes.rfc3339(end)
        metadata["updateTime"] = shapes.rfc3339(max(moments))
        metadata["batchStats"] = shapes.batch_stats(record.plan.rows, view["request_counts"], done)
        metadata["state"] = state
        metadata["name"] = name
        if info.priority is not None:
            metadata["priority"] = info.priority
        operation: Json = {"name": name, "metadata": metadata}
        if done:
            operation["done"] = True
        if state == "BATCH_STATE_SUCCEEDED" and end is not None:
            output = self._output(request, record, info, view, end)
            if output is not None:
                metadata["output"] = output
                operation["response"] = {"@type": shapes.OUTPUT_TYPE, **output}
        if state == "BATCH_STATE_FAILED" and record.problems:
            message = "; ".join(problem.message for problem in record.problems)
            code = shapes.failure_code(record.problems[0].code)
            operation["error"] = {"code": code, "message": message}
        return operation

    def _output(
        self, request: EmuRequest, record: BatchRecord, info: _Batch, view: Json, end: float
    ) -> Json | None:
        file_id = view.get("output_file_id")
        hidden_until = end + (info.fault.hide_responses if info.fault else 0.0)
        if info.inline:
            if self._state.now() < hidden_until:
                return None
            return {"inlinedResponses": {"inlinedResponses": self._rows(file_id)}}
        if not file_id:
            return None
        with self._lock:
            if file_id not in self._files:
                display = f"batch-{record.id}-responses"
                self._files[file_id] = _File(display, "application/jsonl", "GENERATED",
                                             hidden_until=hidden_until)  # fmt: skip
        return {"responsesFile": f"files/{file_id}"}

    def _rows(self, file_id: object) -> list[Any]:
        stored = self._state.file(file_id) if isinstance(file_id, str) else None
        if stored is None:
            return []
        with stored.path.open("rb") as fh:
            return [orjson.loads(raw) for raw in fh if raw.strip()]


# -- helpers -------------------------------------------------------------------------------------


def _batch_match(method: str, name: str) -> routes.Match:
    batch_id, _, verb = name.partition(":")
    if not batch_id:
        return routes.Match(routes.UNKNOWN)
    if verb == "cancel" and method == "POST":
        return routes.Match(routes.CANCEL_BATCH, batch_id)
    if not verb and method in ("GET", "DELETE"):
        route = routes.GET_BATCH if method == "GET" else routes.DELETE_BATCH
        return routes.Match(route, batch_id)
    return routes.Match(routes.UNKNOWN)


def _download_match(method: str, rest: str) -> routes.Match:
    """``files/{id}:download`` (after the download root, or after /v1beta/ as the SDK calls it)."""
    collection, _, name = rest.partition("/")
    file_id, _, verb = name.partition(":")
    if method == "GET" and collection == "files" and file_id and verb == "download":
        return routes.Match(routes.FILE_CONTENT, file_id)
    return routes.Match(routes.UNKNOWN)


def _field(payload: object, *names: str) -> Any:
    """A field under its camelCase or snake_case name (protobuf JSON accepts both)."""
    if not isinstance(payload, dict):
        return None
    for name in names:
        if name in payload:
            return payload[name]
    return None


def _json_body(request: EmuRequest, allow_empty: bool = False) -> Json:
    body = b"".join(request.body)
    if not body.strip() and allow_empty:
        return {}
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiProblem(400, f"Invalid JSON payload received. {exc}") from None
    if not isinstance(payload, dict):
        raise ApiProblem(400, "Invalid JSON payload received: expected an object.")
    return payload


def _create_body(request: EmuRequest) -> Json:
    """The create body, refused past 20 MB (inline requests must stay under it)."""
    data = bytearray()
    for chunk in request.body:
        data += chunk
        if len(data) > shapes.MAX_INLINE_BYTES:
            request.drain()
            raise ApiProblem(413)
    request.body = (bytes(data),)
    return _json_body(request)


def _file_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                try:
                    yield "key", orjson.loads(raw)
                except orjson.JSONDecodeError:
                    yield "key", None


def _request_line(row: int, kind: str, item: Any, model: str, seen: set[str]) -> Json:
    """One row as the core's request line, with the key (file) or metadata (inline) to echo."""
    item = item if isinstance(item, dict) else {}
    extra: Json = {}
    if kind == "key":
        candidate = item.get("key")
        if "key" in item:
            extra["key"] = candidate
    else:
        metadata = item.get("metadata")
        candidate = metadata.get("key") if isinstance(metadata, dict) else None
        if metadata is not None:
            extra["metadata"] = metadata
    custom_id = candidate if isinstance(candidate, str) and candidate else f"{_ROW_ID}{row}"
    if custom_id in seen:
        custom_id = f"{_ROW_ID}{row}"
    seen.add(custom_id)
    request = item.get("request")
    body = {k: v for k, v in request.items() if k != "model"} if isinstance(request, dict) else {}
    if isinstance(request, dict):
        body["model"] = model
    else:
        extra["gemini_invalid"] = True
    line: Json = {"custom_id": custom_id, "method": "POST", "url": shapes.GENERATE_CONTENT}
    line["body"] = body
    return {**line, **extra}


def _merged_batch_fault(marks: list[Any]) -> BatchFault | None:
    result: BatchFault | None = None
    for mark in marks:
        if isinstance(mark, BatchFault):
            result = mark if result is None else result.merge(mark)
    return result


def _held(plan: Plan, fault: GeminiBatchFault) -> Plan:
    """The plan with its start put off (a long-pending fault): past the window for ``expire``,
    which then expires it, never running, with nothing to show."""
    latest = plan.expires - plan.in_progress + 1.0
    hold = latest if fault.expire else min(fault.pending_seconds, latest)
    return dataclasses.replace(
        plan,
        in_progress=plan.in_progress + hold,
        finalizing=plan.finalizing + hold,
        done=plan.done + hold,
        stuck_until=plan.stuck_until + hold,
    )


def _moments(snap: Any) -> list[float | None]:
    return [
        snap.in_progress_at, snap.finalizing_at, snap.completed_at, snap.failed_at,
        snap.expired_at, snap.cancelling_at, snap.cancelled_at,
    ]  # fmt: skip


def _view_moments(view: Json) -> list[Any]:
    keys = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
            "cancelling_at", "cancelled_at")  # fmt: skip
    return [view.get(key) for key in keys]


def _page_size(raw: str | None) -> int:
    if raw is None or raw == "0":
        return DEFAULT_PAGE
    if not raw.isdigit():
        raise ApiProblem(400, f"Invalid value for pageSize: {raw!r}.")
    return min(int(raw), MAX_PAGE)


def _token(batch_id: str) -> str:
    return base64.urlsafe_b64encode(batch_id.encode()).decode("ascii").rstrip("=")


def _cursor(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ApiProblem(400, "Invalid page token.") from None


def _file_not_found(file_id: str) -> ApiProblem:
    return ApiProblem(404, f"File files/{file_id} not found.")


def _ok(body: Json) -> EmuResponse:
    return EmuResponse(200, {"content-type": shapes.JSON_TYPE}, dump_json(body))


register_error_renderer("gemini", shapes.error_response)
register_answer(shapes.GENERATE_CONTENT, shapes.generate_content)
