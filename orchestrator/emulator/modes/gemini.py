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
- the Operation is rendered from the core's batch record and snapshot: PENDING = validating, RUNNING =
  in_progress/finalizing (and cancelling), SUCCEEDED/FAILED/EXPIRED/CANCELLED; ``batchStats`` from
  its request counts; the output from its results file (inline: read back into
  ``inlinedResponses``; file: ``responsesFile``), in both ``response`` and ``metadata.output``.
  An EXPIRED or CANCELLED batch shows no output, although the core wrote its not-run rows (see
  ``Emulator.produced``): unlike OpenAI, an expired Gemini batch returns nothing, and the client
  must send all of it again.

Ids line up: a batch ``batches/<id>`` is the core's batch ``<id>`` (``Emulator.produced(id)``,
``ledger.batches``), a file ``files/<id>`` the core's file ``<id>`` (the Files API is in
:mod:`~orchestrator.emulator.modes.gemini_files`). The ledger's batch metadata
holds ``displayName``, ``model`` and ``source`` (the input file's name or ``inline``); an internal
request file shows in ``ledger.files`` as ``gemini-requests.jsonl``.

Where the SDK (google-genai 3.6.1) and the reference disagree, the SDK wins (see also
:mod:`~orchestrator.emulator.modes.gemini_files` for uploads and downloads):

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
import itertools
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import orjson

from orchestrator.emulator import routes
from orchestrator.emulator.batches import BatchRecord, CreateParams, render
from orchestrator.emulator.config import GEMINI_ROOT, EmulatorConfig
from orchestrator.emulator.errors import ApiProblem, register_error_renderer
from orchestrator.emulator.faults import FaultInjector
from orchestrator.emulator.ids import IdPrefixes
from orchestrator.emulator.jsonl import JsonlScanner
from orchestrator.emulator.lifecycle import Plan, Snapshot
from orchestrator.emulator.lines import Endpoint, register_endpoint
from orchestrator.emulator.marks import BatchFault, merged
from orchestrator.emulator.messages import EmuRequest, EmuResponse, Handler
from orchestrator.emulator.modes import gemini_shapes as shapes
from orchestrator.emulator.modes.gemini_faults import GeminiBatchFault
from orchestrator.emulator.modes.gemini_files import UPLOAD_ROOT, GeminiFiles, is_upload_step
from orchestrator.emulator.state import NotCancellable, State
from orchestrator.emulator.uploads import Upload

Json = dict[str, Any]
DEFAULT_PAGE = 50
MAX_PAGE = 1000
_ROW_ID = "\x1frow-"  # custom_id of a row without a usable key (no key holds this character)
_DOWNLOAD_ROOT = "/download" + GEMINI_ROOT + "/"


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


class GeminiWire:
    """The Gemini API's wire format over the core's state, faults and ledger (a ``modes.Wire``):
    the batch routes here, the Files API's in :class:`~.gemini_files.GeminiFiles`."""

    # Bare batch ids (the API names them "batches/<id>"); responses files "files/batch-<hex>".
    id_prefixes: ClassVar[IdPrefixes] = IdPrefixes("", "batch-")

    def __init__(self, config: EmulatorConfig, state: State, faults: FaultInjector) -> None:
        self._config = config
        self._state = state
        self._faults = faults
        self._lock = threading.Lock()
        self._batches: dict[str, _Batch] = {}
        self._files = GeminiFiles(config, state, faults)
        self._creates = itertools.count(1)
        self._handlers: dict[str, Handler] = {
            **self._files.handlers,
            routes.CREATE_BATCH: self._create,
            routes.GET_BATCH: self._get,
            routes.LIST_BATCHES: self._list,
            routes.CANCEL_BATCH: self._cancel,
            routes.DELETE_BATCH: self._delete,
        }

    # -- the Wire protocol ---------------------------------------------------------------------

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return self._handlers

    def match(self, method: str, path: str) -> routes.Match:
        if path.startswith(UPLOAD_ROOT):
            ok = method == "POST" and path[len(UPLOAD_ROOT) :] == "files"
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

    def authenticate(self, request: EmuRequest, route: str) -> None:
        if is_upload_step(request, route):
            return  # the session URL is the credential
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

    def finish(
        self, request: EmuRequest, route: str, response: EmuResponse, _request_id: str
    ) -> None:
        if is_upload_step(request, route) and "x-goog-upload-status" not in response.headers:
            response.headers["x-goog-upload-status"] = "final"

    def produced(self, batch_id: str) -> list[Any]:
        """The core's rows, every one worded by :func:`~.gemini_shapes.result_row`, even those of
        an expired or cancelled batch, whose Operation shows no output."""
        return self._state.produced(batch_id)

    # -- batches -------------------------------------------------------------------------------

    def _create(self, request: EmuRequest, target: str | None) -> EmuResponse:
        model = target or ""
        batch = shapes.field(_create_body(request), "batch")
        if not isinstance(batch, dict):
            raise ApiProblem(400, "Invalid JSON payload: 'batch' must be an object.")
        display = shapes.field(batch, "displayName", "display_name")
        if display is not None and not isinstance(display, str):
            raise ApiProblem(400, "Invalid value at 'batch.display_name': expected a string.")
        requested = shapes.field(batch, "inputConfig", "input_config")
        items, input_config, source = self._input(requested)
        priority = shapes.field(batch, "priority")
        # Marks are drawn only for a create that goes ahead, so a refused call spends none.
        number = next(self._creates)
        marks = self._faults.take_marks(routes.CREATE_BATCH)
        batch_fault, fault = merged(marks, BatchFault), merged(marks, GeminiBatchFault)
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
        return shapes.ok(self._operation(record, info))

    def _input(self, config: object) -> tuple[Iterator[tuple[str, Any]], Json, str]:
        """The rows to run (each ``("key", line)`` or ``("inline", item)``), the echo of the
        input config, and where the rows came from (the file's name or ``inline``)."""
        if not isinstance(config, dict):
            raise ApiProblem(400, "Invalid JSON payload: 'batch.input_config' is required.")
        file_name = shapes.field(config, "fileName", "file_name")
        requests = shapes.field(config, "requests")
        if (file_name is None) == (requests is None):
            message = "batch.input_config must set exactly one of file_name or requests."
            raise ApiProblem(400, message)
        if file_name is not None:
            if not isinstance(file_name, str) or not file_name.startswith("files/"):
                raise ApiProblem(400, "batch.input_config.file_name must look like 'files/<id>'.")
            found = self._files.public(file_name.removeprefix("files/"))
            if found is None or found[1].source != "UPLOADED":
                raise ApiProblem(404, f"File {file_name} not found.")
            return _file_rows(found[0].path), {"fileName": file_name}, file_name
        listed = shapes.field(requests, "requests") if isinstance(requests, dict) else requests
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

    def _record(self, target: str | None) -> tuple[BatchRecord, _Batch]:
        with self._lock:
            info = self._batches.get(target or "")
        record = self._state.batch(target or "")
        if info is None or record is None or info.deleted:
            raise ApiProblem(404, f"Batch batches/{target} not found.")
        return record, info

    def _get(self, _request: EmuRequest, target: str | None) -> EmuResponse:
        record, info = self._record(target)
        return shapes.ok(self._operation(record, info))

    def _cancel(self, request: EmuRequest, target: str | None) -> EmuResponse:
        request.drain()
        record, _info = self._record(target)
        try:
            self._state.cancel(record)
        except NotCancellable as exc:
            state = shapes.STATES.get(exc.status, exc.status)
            message = f"Batch batches/{target} is already finished ({state})."
            raise ApiProblem(400, message, code="FAILED_PRECONDITION") from None
        return shapes.ok({})

    def _delete(self, request: EmuRequest, target: str | None) -> EmuResponse:
        request.drain()
        _record, info = self._record(target)
        with self._lock:
            info.deleted = True
        return shapes.ok({})

    def _list(self, request: EmuRequest, _target: str | None) -> EmuResponse:
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
            body["operations"] = [self._operation(*item) for item in page]
        if len(listed) > size:
            body["nextPageToken"] = _token(page[-1][0].id)
        return shapes.ok(body)

    # -- the Operation ---------------------------------------------------------------------------

    def _operation(self, record: BatchRecord, info: _Batch) -> Json:
        snap = self._state.settle(record)  # writes the results once the batch has finished
        view = render(record, snap, self._config, self._state.now())
        done = snap.terminal
        state = shapes.gemini_state(snap.status, snap.in_progress_at is not None)
        name = f"batches/{record.id}"
        metadata: Json = {"@type": shapes.BATCH_TYPE, "model": info.model}
        if info.display_name:
            metadata["displayName"] = info.display_name
        metadata["inputConfig"] = info.input_config
        moments = [record.plan.created, *(m for m in _moments(snap) if m is not None)]
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
            output = self._output(record, info, view, end)
            if output is not None:
                metadata["output"] = output
                operation["response"] = {"@type": shapes.OUTPUT_TYPE, **output}
        if state == "BATCH_STATE_FAILED" and record.problems:
            message = "; ".join(problem.message for problem in record.problems)
            code = shapes.failure_code(record.problems[0].code)
            operation["error"] = {"code": code, "message": message}
        return operation

    def _output(self, record: BatchRecord, info: _Batch, view: Json, end: float) -> Json | None:
        file_id = view.get("output_file_id")
        hidden_until = end + (info.fault.hide_responses if info.fault else 0.0)
        if info.inline:
            if self._state.now() < hidden_until:
                return None
            return {"inlinedResponses": {"inlinedResponses": self._rows(file_id)}}
        if not file_id:
            return None
        self._files.add_generated(file_id, f"batch-{record.id}-responses", hidden_until)
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


def _create_body(request: EmuRequest) -> Json:
    """The create body, refused past 20 MB (inline requests must stay under it)."""
    data = bytearray()
    for chunk in request.body:
        data += chunk
        if len(data) > shapes.MAX_INLINE_BYTES:
            request.drain()
            raise ApiProblem(413)
    return shapes.json_object(bytes(data))


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


def _moments(snap: Snapshot) -> list[float | None]:
    return [
        snap.in_progress_at, snap.finalizing_at, snap.completed_at, snap.failed_at,
        snap.expired_at, snap.cancelling_at, snap.cancelled_at,
    ]  # fmt: skip


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


register_error_renderer("gemini", shapes.error_response)
register_endpoint(shapes.GENERATE_CONTENT, Endpoint(shapes.generate_content))
