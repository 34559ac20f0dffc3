"""``anthropic`` mode: Anthropic's Message Batches API, as a wire adapter over the emulator's core.

Reference: ``anthropic-message-batches.md`` (its §10 is the checklist). Routes, under the
config's prefix (``/v1``), and the core's route names they map onto, so that fault rules and the
ledger read the same as in the other modes::

    POST   /messages/batches                create_batch
    GET    /messages/batches                list_batches   (limit 1-1000, after_id, before_id)
    GET    /messages/batches/{id}           get_batch
    POST   /messages/batches/{id}/cancel    cancel_batch
    DELETE /messages/batches/{id}           delete_batch   (only once ended)
    GET    /messages/batches/{id}/results   file_content   (JSONL, any order)

How a call becomes core operations:

- **create** validates ``{"requests": [{"custom_id", "params"}]}`` at once (1 to
  ``max_requests_per_file`` requests, custom ids ``^[a-zA-Z0-9_-]{1,64}$`` and unique, body at
  most ``max_file_bytes`` or 413), writes the requests as the core's JSONL input (``url``
  ``/v1/messages``, ``body`` = ``params``), registers it as an internal upload (no files route
  shows it) and creates a core batch from it. No metadata and no idempotency: each create makes
  a batch, and the ledger records each. Bad ``params`` do not fail the call: those requests end
  ``errored`` (:mod:`~orchestrator.emulator.modes.anthropic_messages`).
- **processing_status** follows the core's lifecycle: validating/in_progress/finalizing →
  ``in_progress``, cancelling → ``canceling``, completed/expired/cancelled → ``ended``. A batch
  the core fails as a whole (a ``fail_with`` fault, the enqueued-token budget) also ends, every
  request ``errored``: Anthropic has no failed batch. ``expires_at`` is ``created_at`` plus the
  config's ``completion_window_seconds`` (24 h by default).
- **results** convert the core's output and error files into one JSONL file the first time they
  are asked for (:mod:`~orchestrator.emulator.modes.anthropic_shapes`), always in a seeded
  shuffled order, then stream it from disk; before the batch ends, and once it is archived (29
  days after creation), they answer 404 ``not_found_error`` (the real answer is unverified).
- **delete** forgets the batch for the API (404 afterwards); the core keeps its record.

Authentication: ``x-api-key`` or ``Authorization: Bearer`` (the SDK 2.17 sends the latter), and
an ``anthropic-version`` header (400 without it). ``anthropic-workspace-id`` scopes batches: a
call with it sees only the batches created with the same value; a call without it sees all.
Every answer carries ``request-id``; error bodies repeat it, except the Cloudflare-style 413. A 429
with ``retry-after`` carries ``anthropic-ratelimit-requests-*`` headers instead of OpenAI's.

Limits: unless the config sets them, Anthropic's own apply (100,000 requests, 256 MB per create
body: ``config.MODE_DEFAULTS``); explicit values win, so tests can hit them cheaply.
"""

from __future__ import annotations

import dataclasses
import math
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from orchestrator.emulator import routes
from orchestrator.emulator.batches import BatchRecord, CreateParams
from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.errors import ApiProblem, register_error_renderer
from orchestrator.emulator.files import FileChunks
from orchestrator.emulator.ids import IdPrefixes, hex_id
from orchestrator.emulator.jsonl import JsonlScanner
from orchestrator.emulator.marks import BatchFault, merged
from orchestrator.emulator.messages import EmuRequest, EmuResponse, Handler, json_response
from orchestrator.emulator.modes import anthropic_shapes as shapes
from orchestrator.emulator.modes.anthropic_faults import MessageBatchFault
from orchestrator.emulator.modes.anthropic_messages import MESSAGES
from orchestrator.emulator.state import NotCancellable
from orchestrator.emulator.uploads import Upload

if TYPE_CHECKING:
    from orchestrator.emulator.faults import FaultInjector
    from orchestrator.emulator.lifecycle import Snapshot
    from orchestrator.emulator.state import State

DEFAULT_PAGE = 20
MAX_PAGE = 1000
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
RESULTS_TYPE = "application/x-jsonl"

# (method, path segments after "<prefix>/messages/batches") -> route name; "{}" is the batch id.
_TABLE: dict[tuple[str, tuple[str, ...]], str] = {
    ("POST", ()): routes.CREATE_BATCH,
    ("GET", ()): routes.LIST_BATCHES,
    ("GET", ("{}",)): routes.GET_BATCH,
    ("DELETE", ("{}",)): routes.DELETE_BATCH,
    ("POST", ("{}", "cancel")): routes.CANCEL_BATCH,
    ("GET", ("{}", "results")): routes.FILE_CONTENT,
}
_CREATE_KEYS = frozenset({"requests"})
_REQUEST_KEYS = frozenset({"custom_id", "params"})


@dataclasses.dataclass
class _MessageBatch:
    """What the wire keeps about a batch beyond the core's record."""

    id: str
    workspace: str | None
    # Before then the id answers 404 (a MessageBatchFault).
    visible_at: float
    crlf: bool
    deleted: bool = False
    results: shapes.ResultsFile | None = None
    results_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


class AnthropicWire:
    """The Message Batches API on the core's state, faults and ledger (a ``modes.Wire``)."""

    id_prefixes: ClassVar[IdPrefixes] = IdPrefixes("msgbatch_")

    def __init__(self, config: EmulatorConfig, state: State, faults: FaultInjector) -> None:
        self._config = config
        self._state = state
        self._faults = faults
        self._lock = threading.Lock()
        self._batches: dict[str, _MessageBatch] = {}
        self._order: list[str] = []
        self._handlers: dict[str, Handler] = {
            routes.CREATE_BATCH: self._create,
            routes.GET_BATCH: self._get,
            routes.LIST_BATCHES: self._list,
            routes.CANCEL_BATCH: self._cancel,
            routes.DELETE_BATCH: self._delete,
            routes.FILE_CONTENT: self._results,
        }
        self._organization = "org-" + hex_id(config.seed, "organization")

    # -- the Wire protocol ---------------------------------------------------------------------

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return self._handlers

    def match(self, method: str, path: str) -> routes.Match:
        base = self._config.path_prefix + "/messages/batches"
        if not (path == base or path.startswith(base + "/")):
            return routes.Match(routes.UNKNOWN)
        segments = tuple(part for part in path[len(base) :].split("/") if part)
        target = segments[0] if segments else None
        key = ("{}", *segments[1:]) if segments else ()
        route = _TABLE.get((method.upper(), key), routes.UNKNOWN)
        return routes.Match(route, target if route != routes.UNKNOWN else None)

    def authenticate(self, request: EmuRequest, _route: str) -> None:
        key = request.headers.get("x-api-key", "").strip()
        if not key:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else ""
        if not key:
            raise ApiProblem(401, "x-api-key header is required")
        if self._config.api_key is not None and key != self._config.api_key:
            raise ApiProblem(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version", "").strip():
            raise ApiProblem(400, "anthropic-version: header is required")

    def finish(
        self, _request: EmuRequest, _route: str, response: EmuResponse, request_id: str
    ) -> None:
        response.headers.pop("x-request-id", None)
        if response.status == 413:
            return  # Cloudflare's answer: nothing of the API's
        response.headers["request-id"] = request_id
        response.headers["anthropic-organization-id"] = self._organization
        if response.status == 429:
            _rate_limit_headers(response.headers, self._state.now())
        if response.status >= 400 and isinstance(response.body, bytes):
            response.body = _with_request_id(response.body, request_id)

    def produced(self, batch_id: str) -> list[Any]:
        with self._lock:
            batch = self._batches.get(batch_id)
        record = self._state.batch(batch_id)
        if batch is None or record is None:
            return []
        snap = self._state.settle(record)
        if not snap.terminal:
            return []
        results = self._results_file(record, batch, snap)
        with results.path.open("rb") as handle:
            return [orjson.loads(raw) for raw in handle if raw.strip()]

    # -- handlers ------------------------------------------------------------------------------

    def _create(self, request: EmuRequest, _target: str | None) -> EmuResponse:
        requests = self._parse_create(self._read_body(request))
        path = self._state.blobs.new_path()
        scanner = JsonlScanner(self._config)
        size = 0
        with path.open("wb") as out:
            for item in requests:
                line = {"custom_id": item["custom_id"], "method": "POST", "url": MESSAGES}
                data = orjson.dumps({**line, "body": item["params"]}) + b"\n"
                out.write(data)
                scanner.feed(data)
                size += len(data)
        upload = Upload("message_batch_requests.jsonl", path, size, scanner.finish(), {})
        source = self._state.add_upload(upload, "batch", None)
        taken = self._faults.take_marks(routes.CREATE_BATCH)
        fault, marks = merged(taken, BatchFault), merged(taken, MessageBatchFault)
        echo = ""
        if fault is not None and fault.echo_auth:
            echo = request.headers.get("authorization") or request.headers.get("x-api-key", "")
        params = CreateParams(source.id, MESSAGES, "24h", None)
        record = self._state.create_batch(params, fault, echo)
        if record is None:  # only if the input vanished in between, which nothing here does
            raise ApiProblem(500, "the batch input could not be stored")
        batch = _MessageBatch(
            record.id,
            request.headers.get("anthropic-workspace-id"),
            record.plan.created + (marks.not_found_seconds if marks else 0.0),
            marks.crlf if marks else False,
        )
        with self._lock:
            self._batches[batch.id] = batch
            self._order.append(batch.id)
        return json_response(200, self._view(request, record))

    def _read_body(self, request: EmuRequest) -> bytes:
        limit = self._config.max_file_bytes
        data = bytearray()
        for chunk in request.body:
            data += chunk
            if len(data) > limit:
                request.drain()
                raise ApiProblem(413)
        return bytes(data)

    def _parse_create(self, body: bytes) -> list[dict[str, Any]]:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiProblem(400, f"The request body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ApiProblem(400, "Input should be a valid dictionary")
        _no_extra(payload, _CREATE_KEYS, "")
        requests = payload.get("requests")
        if requests is None:
            raise ApiProblem(400, "requests: Field required")
        if not isinstance(requests, list):
            raise ApiProblem(400, "requests: Input should be a valid list")
        limit = self._config.max_requests_per_file
        if not 1 <= len(requests) <= limit:
            bound = "at least 1 item" if not requests else f"at most {limit} items"
            message = f"requests: List should have {bound} after validation, not {len(requests)}"
            raise ApiProblem(400, message)
        seen: set[str] = set()
        for number, item in enumerate(requests):
            _check_request(item, number, seen)
        return requests

    def _get(self, request: EmuRequest, target: str | None) -> EmuResponse:
        record, _batch = self._find(request, target)
        return json_response(200, self._view(request, record))

    def _cancel(self, request: EmuRequest, target: str | None) -> EmuResponse:
        request.drain()
        record, _batch = self._find(request, target)
        try:
            self._state.cancel(record)
        except NotCancellable:
            raise ApiProblem(400, f"Message batch {record.id} has already ended.") from None
        return json_response(200, self._view(request, record))

    def _delete(self, request: EmuRequest, target: str | None) -> EmuResponse:
        record, batch = self._find(request, target)
        snap = self._state.settle(record)
        if not snap.terminal:
            message = (
                f"Message batch {record.id} is still {shapes.processing_status(snap)}; only "
                "an ended batch can be deleted (cancel it first)."
            )
            raise ApiProblem(400, message)
        with self._lock:
            batch.deleted = True
        with batch.results_lock:
            if batch.results is not None:
                self._state.blobs.remove(batch.results.path)
                batch.results = None
        return json_response(200, {"id": record.id, "type": "message_batch_deleted"})

    def _list(self, request: EmuRequest, _target: str | None) -> EmuResponse:
        limit = _page_limit(request.query.get("limit"))
        after, before = request.query.get("after_id"), request.query.get("before_id")
        if after and before:
            raise ApiProblem(400, "Only one of after_id and before_id may be given.")
        now = self._state.now()
        workspace = request.headers.get("anthropic-workspace-id")
        with self._lock:
            ids = [
                batch_id
                for batch_id in reversed(self._order)
                if self._shown(self._batches[batch_id], workspace, now)
            ]
        page, has_more = _page(ids, limit, after, before)
        data = []
        for batch_id in page:
            record = self._state.batch(batch_id)
            if record is not None:
                data.append(self._view(request, record))
        return json_response(
            200,
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
        )

    def _results(self, request: EmuRequest, target: str | None) -> EmuResponse:
        record, batch = self._find(request, target)
        snap = self._state.settle(record)
        if not snap.terminal:
            status = shapes.processing_status(snap)
            raise ApiProblem(404, f"Message batch {record.id} has no results yet ({status}).")
        if self._state.now() >= record.plan.created + shapes.ARCHIVE_SECONDS:
            raise ApiProblem(404, f"The results of message batch {record.id} were archived.")
        results = self._results_file(record, batch, snap)
        try:
            chunks = FileChunks(results.path)
        except FileNotFoundError:  # deleted meanwhile
            raise ApiProblem(404, f"No message batch found with id '{target}'.") from None
        headers = {"content-type": RESULTS_TYPE, "content-length": str(results.bytes)}
        return EmuResponse(200, headers, chunks)

    # -- helpers -------------------------------------------------------------------------------

    def _find(self, request: EmuRequest, target: str | None) -> tuple[BatchRecord, _MessageBatch]:
        workspace = request.headers.get("anthropic-workspace-id")
        with self._lock:
            batch = self._batches.get(target or "")
            shown = batch is not None and self._shown(batch, workspace, self._state.now())
        record = self._state.batch(target or "") if shown else None
        if batch is None or record is None:
            raise ApiProblem(404, f"No message batch found with id '{target}'.")
        return record, batch

    def _shown(self, batch: _MessageBatch, workspace: str | None, now: float) -> bool:
        if batch.deleted or now < batch.visible_at:
            return False
        return workspace is None or batch.workspace == workspace

    def _view(self, request: EmuRequest, record: BatchRecord) -> dict[str, Any]:
        snap = self._state.settle(record)
        path = f"{self._config.path_prefix}/messages/batches/{record.id}/results"
        url = path if self._config.relative_results_url else request.base_url + path
        return shapes.message_batch(record, snap, shapes.BatchView(self._state.now(), url))

    def _results_file(
        self, record: BatchRecord, batch: _MessageBatch, snap: Snapshot
    ) -> shapes.ResultsFile:
        """The batch's Anthropic results file, written the first time it is needed."""
        with batch.results_lock:
            if batch.results is None:
                convert: Callable[[dict[str, Any]], dict[str, Any]]
                if record.plan.valid:
                    sources = self._core_files(record)
                    convert = shapes.result_line
                else:  # the core wrote no results: every request from the input
                    sources = [record.input_path]
                    convert = shapes.unrun_line(record, snap, self._config.seed)
                batch.results = shapes.write_results(
                    sources,
                    convert,
                    self._state.blobs,
                    shuffle_key=shapes.shuffle_key(self._config.seed, record.id),
                    crlf=batch.crlf,
                )
            return batch.results

    def _core_files(self, record: BatchRecord) -> list[Path]:
        files = record.results
        ids = (files.output_file_id, files.error_file_id) if files is not None else ()
        stored = [self._state.file(file_id) for file_id in ids if file_id]
        return [item.path for item in stored if item is not None]


def _check_request(item: object, number: int, seen: set[str]) -> None:
    where = f"requests.{number}"
    if not isinstance(item, dict):
        raise ApiProblem(400, f"{where}: Input should be a valid dictionary")
    _no_extra(item, _REQUEST_KEYS, where + ".")
    custom_id = item.get("custom_id")
    if custom_id is None:
        raise ApiProblem(400, f"{where}.custom_id: Field required")
    if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
        message = f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        raise ApiProblem(400, message)
    if custom_id in seen:
        message = (
            f"{where}.custom_id: Duplicate custom_id '{custom_id}'; each request in a batch "
            "needs a unique custom_id."
        )
        raise ApiProblem(400, message)
    seen.add(custom_id)
    params = item.get("params")
    if params is None:
        raise ApiProblem(400, f"{where}.params: Field required")
    if not isinstance(params, dict):
        raise ApiProblem(400, f"{where}.params: Input should be a valid dictionary")


def _no_extra(payload: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in payload:
        if key not in allowed:
            raise ApiProblem(400, f"{where}{key}: Extra inputs are not permitted")


def _page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiProblem(400, f"limit: Input should be an integer from 1 to {MAX_PAGE}")
    return int(raw)


def _page(
    ids: list[str], limit: int, after: str | None, before: str | None
) -> tuple[list[str], bool]:
    """One page of ``ids`` (newest first) and whether more lie beyond it in that direction;
    an unknown cursor gives an empty page."""
    if after:
        if after not in ids:
            return [], False
        start = ids.index(after) + 1
        return ids[start : start + limit], start + limit < len(ids)
    if before:
        if before not in ids:
            return [], False
        end = ids.index(before)
        start = max(0, end - limit)
        return ids[start:end], start > 0
    return ids[:limit], limit < len(ids)


def _rate_limit_headers(headers: dict[str, str], now: float) -> None:
    """Anthropic's ``anthropic-ratelimit-requests-*`` in place of OpenAI's ``x-ratelimit-*``
    (only with ``retry-after``: a spend cap says no moment when it lifts)."""
    for name in [name for name in headers if name.startswith("x-ratelimit-")]:
        del headers[name]
    retry_after = headers.get("retry-after")
    if retry_after is None:
        return
    reset = now + float(retry_after)
    headers["anthropic-ratelimit-requests-limit"] = "50"
    headers["anthropic-ratelimit-requests-remaining"] = "0"
    headers["anthropic-ratelimit-requests-reset"] = shapes.timestamp(math.ceil(reset))


def _with_request_id(body: bytes, request_id: str) -> bytes:
    """An error envelope with its ``request_id`` filled in (other bodies unchanged)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(payload, dict) and payload.get("type") == "error" and "request_id" in payload:
        payload["request_id"] = request_id
        return orjson.dumps(payload)
    return body


register_error_renderer("anthropic", shapes.error_response)
