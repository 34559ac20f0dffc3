"""The emulator's single entry point, ``Emulator.handle(EmuRequest) -> EmuResponse``.

Framework-free: the httpx MockTransport adapter (:mod:`orchestrator.emulator.mock`) and the
Starlette adapter (:mod:`orchestrator.emulator.server`) only translate requests and responses.
Per call: admin routes aside, resolve the route, refuse everything while the key is revoked, let a
response fault intercept, check the bearer token, then run the handler; the call is recorded in the
ledger with the status it got. Uploads and creates that succeed also collect the marking faults
(file not ready, batch faults) for the object they create.

The handlers here speak the OpenAI-style wire (``fastrouter`` and ``openai`` modes). Other modes
bring a wire of their own (:class:`orchestrator.emulator.modes.Wire`: route table, authentication,
handlers, a last touch on each answer), looked up once in :data:`orchestrator.emulator.modes.WIRES`;
it names each call with the core's route names, so fault rules and the ledger apply unchanged, and
runs on this same state, lifecycle, fault injection and ledger.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from orchestrator.clock import Clock, SystemClock
from orchestrator.emulator import admin, modes, routes
from orchestrator.emulator.batches import parse_create
from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.errors import ApiProblem, error_response
from orchestrator.emulator.faults import FaultContext, FaultInjector
from orchestrator.emulator.files import FileChunks, file_object_fastrouter, file_object_openai
from orchestrator.emulator.ids import hex_id
from orchestrator.emulator.ledger import CallEntry, Ledger
from orchestrator.emulator.marks import BatchFault, FileNotReady, merged
from orchestrator.emulator.messages import EmuRequest, EmuResponse, Handler, json_response
from orchestrator.emulator.state import InputUnusable, NotCancellable, State
from orchestrator.emulator.uploads import TooLarge, Upload, receive_upload

OPENAI_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
DEFAULT_PAGE = 20
MAX_PAGE = 100


class Emulator:
    """A deterministic FastRouter/OpenAI-compatible Batch API, driven by an injected clock."""

    def __init__(self, config: EmulatorConfig | None = None, clock: Clock | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.clock: Clock = clock or SystemClock()
        self.ledger = Ledger()
        self.faults = FaultInjector(self.config.seed)
        wire = modes.WIRES.get(self.config.mode)  # None: the core's own wire
        prefixes = wire.id_prefixes if wire is not None else None
        self._state = State(self.config, self.clock, self.ledger, prefixes)
        self._wire = wire(self.config, self._state, self.faults) if wire is not None else None
        self._later: list[tuple[float, Callable[[], EmuResponse]]] = []  # (due, call)
        self._later_lock = threading.Lock()
        self._call_numbers = itertools.count(1)
        self._numbers_lock = threading.Lock()
        self._handlers: dict[str, Handler] = {
            routes.UPLOAD_FILE: self._upload_file,
            routes.CREATE_BATCH: self._create_batch,
            routes.GET_BATCH: self._get_batch,
            routes.LIST_BATCHES: self._list_batches,
            routes.CANCEL_BATCH: self._cancel_batch,
            routes.FILE_CONTENT: self._file_content,
            routes.GET_FILE: self._get_file,
            routes.DELETE_FILE: self._delete_file,
        }
        if self._wire is not None:
            self._handlers = dict(self._wire.handlers)

    # -- public API ----------------------------------------------------------------------------

    def handle(self, request: EmuRequest) -> EmuResponse:
        self.run_due()
        if admin.is_admin_path(request.path):
            return admin.handle(self, request)
        if self._wire is not None:
            matched = self._wire.match(request.method, request.path)
        else:
            matched = routes.match(request.method, request.path, self.config.path_prefix)
        response, faulted = self._respond(request, matched)
        response.headers["x-request-id"] = request_id = self._request_id()
        if self._wire is not None:
            self._wire.finish(request, matched.route, response, request_id)
        self.ledger.record_call(
            CallEntry(
                self._state.now(), request.method, matched.route, request.path,
                response.status, response.delay_seconds, faulted,
            )
        )  # fmt: skip
        return response

    def run_due(self) -> int:
        """Carry out the calls a ``late`` fault deferred whose moment has come (every call to
        the emulator does this first). Returns how many ran."""
        now = self._state.now()
        with self._later_lock:
            due = [call for at, call in self._later if at <= now]
            self._later = [(at, call) for at, call in self._later if at > now]
        for call in due:
            call().close()
        return len(due)

    def _defer(self, seconds: float, call: Callable[[], EmuResponse]) -> None:
        with self._later_lock:
            self._later.append((self._state.now() + seconds, call))

    def revoke_key(self) -> None:
        """From now on every API call gets 401, as with a key revoked at the provider."""
        self.faults.set_key_revoked(True)

    def restore_key(self) -> None:
        self.faults.set_key_revoked(False)

    def release_stuck(self, batch_id: str | None = None) -> list[str]:
        """Let batches held in finalizing by a ``stuck_finalizing`` fault complete (one or all).

        Returns the ids released; raises ValueError for an unknown ``batch_id``.
        """
        return self._state.release_stuck(batch_id)

    def produced(self, batch_id: str) -> list[Any]:
        """Every line of the batch's output and error files, parsed, in file order (empty until
        they are written): what the provider produced, for a test to hold the ingested results
        against. Faults that cut a download short do not change what is stored.
        In a mode with a wire of its own: the lines of its results as that wire serves them."""
        if self._wire is not None:
            return self._wire.produced(batch_id)
        return self._state.produced(batch_id)

    def close(self) -> None:
        """Delete the stored file contents."""
        self._state.close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- dispatch ------------------------------------------------------------------------------

    def _respond(self, request: EmuRequest, matched: routes.Match) -> tuple[EmuResponse, bool]:
        """The response, and whether a fault rule produced or altered it."""
        if self.faults.key_revoked:
            return self._refuse(request, ApiProblem(401, code="invalid_api_key")), False
        fault = self.faults.take(matched.route) if matched.route != routes.UNKNOWN else None
        if fault is None:
            return self._serve(request, matched), False
        ctx = FaultContext(self.config.mode, matched.route, request, later=self._defer)
        return fault.apply(ctx, lambda: self._serve(request, matched)), True

    def _serve(self, request: EmuRequest, matched: routes.Match) -> EmuResponse:
        try:
            if self._wire is not None:
                self._wire.authenticate(request, matched.route)
            else:
                self._authenticate(request)
            if matched.route == routes.UNKNOWN or not self._offered(matched.route):
                raise ApiProblem(404, f"Invalid URL ({request.method} {request.path})")
            return self._handlers[matched.route](request, matched.target)
        except ApiProblem as problem:
            return self._refuse(request, problem)

    def _refuse(self, request: EmuRequest, problem: ApiProblem) -> EmuResponse:
        request.drain()
        return error_response(self.config.mode, problem)

    def _offered(self, route: str) -> bool:
        if self._wire is not None:
            return route in self._handlers
        return self.config.is_openai or route in routes.FASTROUTER_ROUTES

    def _authenticate(self, request: EmuRequest) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            raise ApiProblem(401, message if self.config.is_openai else None)
        expected = self.config.api_key
        if expected is not None and token != expected:
            masked = f"{token[:3]}...{token[-4:]}" if len(token) > 8 else "***"
            message = f"Incorrect API key provided: {masked}."
            raise ApiProblem(401, message if self.config.is_openai else None)

    def _request_id(self) -> str:
        with self._numbers_lock:
            number = next(self._call_numbers)
        return "req_" + hex_id(self.config.seed, "call", number)

    def _not_found(self, kind: str, target: str | None) -> ApiProblem:
        if self.config.is_openai:
            what = "batch" if kind == "batch" else "File object"
            return ApiProblem(404, f"No such {what}: {target}", param="id")
        return ApiProblem(404, f"{kind.title()} ID not found: {target}", code=f"{kind}_not_found")

    # -- files ---------------------------------------------------------------------------------

    def _upload_file(self, request: EmuRequest, _target: str | None) -> EmuResponse:
        try:
            upload = receive_upload(request, self._state.blobs, self.config)
        except TooLarge:
            if self.config.is_openai:
                raise ApiProblem(400, "File is too large.", param="file") from None
            raise ApiProblem(413) from None
        try:
            purpose = self._purpose(upload.fields.get("purpose"))
            if purpose == "batch":
                self._check_batch_file(upload)
            expires_after = self._expires_after(upload.fields)
        except ApiProblem:
            self._state.blobs.remove(upload.path)
            raise
        marks = self.faults.take_marks(routes.UPLOAD_FILE)
        not_ready = max((m.not_ready for m in marks if isinstance(m, FileNotReady)), default=0.0)
        record = self._state.add_upload(upload, purpose, expires_after, not_ready)
        render = file_object_openai if self.config.is_openai else file_object_fastrouter
        return json_response(200, render(record))

    def _purpose(self, purpose: str | None) -> str:
        if purpose is None:
            if self.config.is_openai:
                raise ApiProblem(400, "Missing required parameter: 'purpose'.", param="purpose")
            return "batch"
        allowed = OPENAI_PURPOSES if self.config.is_openai else ("batch",)
        if purpose not in allowed:
            message = f"{purpose!r} is not one of {list(allowed)} - 'purpose'"
            raise ApiProblem(400, message, param="purpose")
        return purpose

    def _check_batch_file(self, upload: Upload) -> None:
        if self.config.is_openai and not upload.filename.endswith(".jsonl"):
            raise ApiProblem(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
        if upload.index.bad_line is not None:
            message = (
                f"Invalid file format: line {upload.index.bad_line} is not a JSON object. "
                "Each line must be a JSON object (JSONL)."
            )
            raise ApiProblem(400, message, param="file", code="invalid_file_format")

    def _expires_after(self, fields: dict[str, str]) -> int | None:
        seconds = fields.get("expires_after[seconds]")
        if seconds is None or not self.config.is_openai:
            return None
        if not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
            message = "expires_after[seconds] must be between 3600 and 2592000."
            raise ApiProblem(400, message, param="expires_after")
        return int(seconds)

    def _file_content(self, _request: EmuRequest, target: str | None) -> EmuResponse:
        record = self._state.file(target or "")
        if record is None:
            raise self._not_found("file", target)
        try:
            chunks = FileChunks(record.path)
        except FileNotFoundError:
            raise self._not_found("file", target) from None
        kind = "application/octet-stream" if self.config.is_openai else "application/jsonl"
        headers = {"content-type": kind, "content-length": str(record.bytes)}
        return EmuResponse(200, headers, chunks)

    def _get_file(self, _request: EmuRequest, target: str | None) -> EmuResponse:
        record = self._state.file(target or "")
        if record is None:
            raise self._not_found("file", target)
        return json_response(200, file_object_openai(record))

    def _delete_file(self, _request: EmuRequest, target: str | None) -> EmuResponse:
        if not self._state.delete_file(target or ""):
            raise self._not_found("file", target)
        return json_response(200, {"id": target, "object": "file", "deleted": True})

    # -- batches -------------------------------------------------------------------------------

    def _create_batch(self, request: EmuRequest, _target: str | None) -> EmuResponse:
        try:
            payload = request.read_json()
        except ValueError as exc:
            raise ApiProblem(
                400, f"We could not parse the JSON body of your request: {exc}"
            ) from exc
        params = parse_create(payload, self.config.mode)
        try:
            found = self._state.input_file(params.input_file_id) is not None
        except InputUnusable as exc:
            message = f"The input file must have purpose 'batch', not {exc}."
            raise ApiProblem(400, message, param="input_file_id") from None
        # Marks are drawn only for a create that goes ahead, so a refused call spends none.
        fault = merged(self.faults.take_marks(routes.CREATE_BATCH), BatchFault) if found else None
        echo = request.headers.get("authorization", "") if fault and fault.echo_auth else ""
        record = self._state.create_batch(params, fault, echo) if found else None
        if record is not None:
            return json_response(200, self._state.view(record))
        if self.config.is_openai:
            message = (
                f"Cannot find file {params.input_file_id}, or project does not have access to it."
            )
            raise ApiProblem(400, message, param="input_file_id")
        raise ApiProblem(404, "File ID not found", code="file_not_found")

    def _get_batch(self, _request: EmuRequest, target: str | None) -> EmuResponse:
        record = self._state.batch(target or "")
        if record is None:
            raise self._not_found("batch", target)
        return json_response(200, self._state.view(record))

    def _cancel_batch(self, request: EmuRequest, target: str | None) -> EmuResponse:
        request.drain()
        record = self._state.batch(target or "")
        if record is None:
            raise self._not_found("batch", target)
        try:
            self._state.cancel(record)
        except NotCancellable as exc:
            message = f"Cannot cancel a batch with status '{exc.status}'."
            raise ApiProblem(400, message) from None
        return json_response(200, self._state.view(record))

    def _list_batches(self, request: EmuRequest, _target: str | None) -> EmuResponse:
        limit = _page_limit(request.query.get("limit"))
        page = self._state.page(request.query.get("after"), limit)
        data = [self._state.view(record) for record in page.records]
        return json_response(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": page.has_more,
            },
        )


def _page_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiProblem(400, "limit must be an integer between 1 and 100.", param="limit")
    return int(raw)
