"""The Batch API client: one method per operation over an injected ``httpx.Client``.

Every httpx error (every ``httpx.HTTPError``: a timeout, a cut connection, a body that cannot be
decoded, a redirect loop) and every non-2xx status becomes an :mod:`orchestrator.api.errors`
exception here and nowhere else. The client never retries by itself: whether and when to try again
is the runner's decision (``domain/decide.py``), so no thread sleeps and no lease is held while
waiting.

What the server sends back is scrubbed of the credentials the client sends before it becomes an
exception or a parsed object: proxies and gateways do quote the ``Authorization`` header in their
error messages, and from there it would reach the logs and the database (``last_error``, events).
"""

from __future__ import annotations

import functools
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import structlog

from orchestrator.api.errors import (
    ApiBadRequest,
    ApiDecodeError,
    ApiError,
    ApiNotFound,
    ApiRedirectLoop,
    ApiTimeout,
    ApiTransportError,
    ApiTruncatedDownload,
    error_for_status,
)
from orchestrator.api.schemas import BatchObject, BatchPage, FileObject
from orchestrator.config import TargetConfig
from orchestrator.observability import Metrics, Scrubber

# What an upload of a file on disk reads at a time.
UPLOAD_PIECE = 1024 * 1024

log = structlog.get_logger(__name__)

DOWNLOAD_CHUNK = 1024 * 1024
# A batch id no provider has issued: ``check_key`` asks for it to learn whether the key is accepted.
PROBE_BATCH_ID = "batch_orchestrator_check_0000000000"
# Request headers that carry a credential; their values are scrubbed from what the server answers.
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "api-key")
# Response headers that carry the provider's id of a call (OpenAI and FastRouter send the first;
# Anthropic's API the second), the first one present goes on the call's log line.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "openai-request-id")
# The routes of the metrics, relative to the target's base_url, one per operation: ids are never
# label values.
FILES = "/files"
FILE = "/files/{id}"
FILE_CONTENT = "/files/{id}/content"
BATCHES = "/batches"
BATCH = "/batches/{id}"
BATCH_CANCEL = "/batches/{id}/cancel"


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings every client of the process shares (httpx's defaults: certifi's CA
    bundle, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``). Reading the CA bundle takes 50-80 ms; built
    once, not once per client, and before the first batch (``Daemon.serve``), not during it."""
    return httpx.create_ssl_context()


def make_http_client(
    target: TargetConfig, *, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """An ``httpx.Client`` for one target: base URL, bearer key, timeouts, :func:`tls_context`."""
    headers = {"User-Agent": "batch-orchestrator"}
    if target.api_key is not None:
        headers["Authorization"] = f"Bearer {target.api_key.reveal()}"
    return httpx.Client(
        base_url=target.base_url.rstrip("/") + "/",
        headers=headers,
        timeout=httpx.Timeout(target.timeout_seconds, connect=target.connect_timeout_seconds),
        transport=transport,
        follow_redirects=True,
        verify=tls_context(),
    )


class BatchApiClient:
    """Files and batches of one target.

    ``before_request`` runs before every call and may raise (``TargetBlocked``) to stop it: that is
    how a 429 seen by one daemon keeps every other daemon from calling the target too early.
    ``after_success`` runs after every call that worked (it lifts a pause for a bad key).
    ``metrics`` counts every call that was sent, by route and status, with its duration.

    The credentials the ``http`` client sends (its ``Authorization`` header, ...) are replaced by
    a redaction marker in every answer, wherever the server quotes them.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        target: str = "",
        before_request: Callable[[], None] | None = None,
        after_success: Callable[[], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._http = http
        self._target = target
        self._metrics = metrics
        self._before_request = before_request
        self._after_success = after_success
        self._scrub = Scrubber(sent_credentials(http.headers))

    @property
    def scrub(self) -> Scrubber:
        """What takes this client's credentials out of a text: for the lines of a downloaded
        file, which the client hands over as they arrive (ingest scrubs them)."""
        return self._scrub

    # -- files ---------------------------------------------------------------------------

    def upload_file(self, path: Path, *, filename: str, purpose: str = "batch") -> FileObject:
        """Upload a JSONL file, streamed from disk."""
        with path.open("rb") as fh:
            pieces = iter(lambda: fh.read(UPLOAD_PIECE), b"")
            return self.upload(pieces, size=path.stat().st_size, filename=filename, purpose=purpose)

    def upload(
        self, pieces: Iterable[bytes], *, size: int, filename: str, purpose: str = "batch"
    ) -> FileObject:
        """Upload a JSONL file of ``size`` bytes as ``pieces`` come (built while it is sent, in
        constant memory): one multipart/form-data body with its Content-Length, as a form with a
        file would send it, not a chunked one (which not every server takes)."""
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
            "\r\nContent-Type: application/jsonl\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            sent = 0
            for piece in pieces:
                sent += len(piece)
                yield piece
            if sent != size:  # the file is not the one measured: send no file at all
                raise RuntimeError(f"{filename}: {sent} bytes where {size} were measured")
            yield tail

        headers = {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }
        response = self._send("POST", "files", route=FILES, content=body(), headers=headers)
        return FileObject.from_json(self._json(response))

    def download_file(self, file_id: str, dest: IO[bytes]) -> int:
        """Stream a file's content into ``dest``; returns the number of bytes written."""
        written = 0
        with self._stream_file(file_id) as chunks:
            for chunk in chunks:
                dest.write(chunk)
                written += len(chunk)
        return written

    @contextmanager
    def open_lines(self, file_id: str) -> Iterator[Iterator[bytes]]:
        """A file's lines (with their newline, blank lines skipped) as they arrive, in constant
        memory. Iterating raises ApiTruncatedDownload if the body is cut short."""
        with self._stream_file(file_id) as chunks:
            yield _split_lines(chunks)

    @contextmanager
    def _stream_file(self, file_id: str) -> Iterator[Iterator[bytes]]:
        self._gate()
        call = _Call("GET", f"files/{file_id}/content", FILE_CONTENT)
        try:
            with self._http.stream("GET", call.path) as response:
                # counted at the headers: the body may take minutes, and is watched below
                self._observe(call, str(response.status_code))
                call.request_id = request_id(response)
                if response.status_code >= 400:
                    response.read()
                    raise self._status_error(response, call)
                counted = _Counted(
                    response, call.path, lambda what: self._log_failure(call, 200, what)
                )
                yield counted.chunks()
                counted.check_complete()
        except httpx.HTTPError as exc:
            self._observe(call, "error")  # no answer (unless its headers were counted above)
            raise self._http_failure(call, exc) from exc
        self._log_success(call, 200, bytes=counted.received)
        self._succeeded()

    def delete_file(self, file_id: str) -> None:
        self._send("DELETE", f"files/{file_id}", route=FILE)

    # -- batches -------------------------------------------------------------------------

    def create_batch(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
    ) -> BatchObject:
        payload: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            payload["metadata"] = dict(metadata)
        response = self._send("POST", "batches", route=BATCHES, json=payload)
        return BatchObject.from_json(self._json(response))

    def get_batch(self, batch_id: str) -> BatchObject:
        response = self._send("GET", f"batches/{batch_id}", route=BATCH)
        return BatchObject.from_json(self._json(response))

    def cancel_batch(self, batch_id: str) -> BatchObject:
        response = self._send("POST", f"batches/{batch_id}/cancel", route=BATCH_CANCEL)
        return BatchObject.from_json(self._json(response))

    def list_batches(self, *, after: str | None = None, limit: int = 100) -> BatchPage:
        params: dict[str, str | int] = {"limit": limit}
        if after:
            params["after"] = after
        response = self._send("GET", "batches", route=BATCHES, params=params)
        return BatchPage.from_json(self._json(response))

    def check_key(self, *, can_list: bool) -> str:
        """One cheap authenticated call, for ``orchestrator check``: lists one batch where the
        target can list, else asks for a batch id that cannot exist, whose 404 (or 400, an id the
        provider finds malformed) means the key was accepted. Raises ApiAuthError (401/403) for a
        refused key, and any other ApiError as usual. Returns the call made."""
        if can_list:
            self._send("GET", "batches", route=BATCHES, params={"limit": 1})
            return "GET /batches?limit=1"
        try:
            self._send("GET", f"batches/{PROBE_BATCH_ID}", route=BATCH)
        except (ApiNotFound, ApiBadRequest) as exc:
            return f"GET /batches/{{id}}: {exc.status_code}, as expected for an unknown id"
        return "GET /batches/{id}"

    def iter_batches(self, *, page_size: int = 100) -> Iterator[BatchObject]:
        """Every batch, newest first, following the cursor."""
        after: str | None = None
        while True:
            page = self.list_batches(after=after, limit=page_size)
            yield from page.data
            if not page.has_more or page.last_id is None:
                return
            after = page.last_id

    # -- plumbing ------------------------------------------------------------------------

    def _gate(self) -> None:
        if self._before_request is not None:
            self._before_request()

    def _succeeded(self) -> None:
        if self._after_success is not None:
            self._after_success()

    def _send(self, method: str, path: str, *, route: str, **kwargs: Any) -> httpx.Response:
        """The one place every call but a download goes through: counted, timed and logged
        (at debug when it worked, at warning when not), each line with the provider's request id."""
        self._gate()
        call = _Call(method, path, route)
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self._observe(call, "error")
            raise self._http_failure(call, exc) from exc
        self._observe(call, str(response.status_code))
        call.request_id = request_id(response)
        if response.status_code >= 400:
            raise self._status_error(response, call)
        self._log_success(call, response.status_code)
        self._succeeded()
        return response

    def _observe(self, call: _Call, status: str) -> None:
        """Count the call once, by its status (``error``: no answer)."""
        if self._metrics is not None and not call.observed:
            call.observed = True
            elapsed = time.monotonic() - call.started
            self._metrics.observe_api(self._target, call.route, call.method, status, elapsed)

    def _http_failure(self, call: _Call, exc: httpx.HTTPError) -> ApiError:
        """The ApiError for anything httpx raised: every ``httpx.HTTPError`` maps to one, so
        none escapes as a crash. The message names the call and what went wrong, never httpx's
        own text (which may quote a URL or a body), and is scrubbed all the same."""
        what = type(exc).__name__
        logged = what
        cls: type[ApiError]
        if isinstance(exc, httpx.TimeoutException):
            cls, message = ApiTimeout, f"no answer in time ({what})"
        elif isinstance(exc, httpx.TooManyRedirects):
            cls = ApiRedirectLoop
            message = (
                f"redirected more than {self._http.max_redirects} times, in a loop; check the "
                "target's base_url (its scheme, host and path prefix)"
            )
        elif isinstance(exc, httpx.DecodingError):
            # A body that does not match its Content-Encoding (a proxy mangling gzip): the call
            # may have been carried out, and trying again later is expected to work.
            cls, message = ApiDecodeError, f"the answer's body could not be decoded ({what})"
        elif (refused := _certificate_refused(exc)) is not None:
            cls, logged = ApiTransportError, f"{what}: TLS certificate refused ({refused})"
            message = (
                f"the server's TLS certificate was not accepted ({refused}); if the server is "
                "the right one, trust its certificate authority with SSL_CERT_FILE"
            )
        else:  # TransportError, and any other RequestError
            cls, message = ApiTransportError, what
        self._log_failure(call, None, "timeout" if cls is ApiTimeout else logged)
        return cls(self._scrub(f"{call.method} {call.path}: {message}"))

    def _status_error(self, response: httpx.Response, call: _Call) -> ApiError:
        try:
            body: Any = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        error = error_for_status(
            response.status_code,
            self._scrub.deep(body),
            self._scrub(response.text),
            response.headers,
        )
        self._log_failure(call, response.status_code, error.message)
        return error

    def _log_success(self, call: _Call, status: int, **extra: Any) -> None:
        self._log_call(log.debug, "api_request_sent", call, status, **extra)

    def _log_failure(self, call: _Call, status: int | None, error: str) -> None:
        self._log_call(log.warning, "api_request_failed", call, status, error=error)

    def _log_call(
        self, emit: Any, event: str, call: _Call, status: int | None, **extra: Any
    ) -> None:
        """One line per API call: target, method, route and path, status, duration and the
        provider's request id, with what the caller adds."""
        emit(
            event,
            target=self._target,
            method=call.method,
            route=call.route,
            path=call.path,
            status_code=status,
            **extra,
            duration_ms=_ms(call.started),
            request_id=call.request_id,
        )

    def _json(self, response: httpx.Response) -> Any:
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise ApiDecodeError(
                f"{response.request.method} {response.request.url.path}: the answer is not JSON"
            ) from exc
        return self._scrub.deep(data)


def sent_credentials(headers: httpx.Headers) -> list[str]:
    """The secrets in a client's credential headers: the token after the scheme (``Bearer``), or
    the whole value when there is none."""
    found: list[str] = []
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name, "").strip()
        scheme, _, token = value.partition(" ")
        secret = token.strip() or scheme
        if secret:
            found.append(secret)
    return found


def request_id(response: httpx.Response) -> str | None:
    """The provider's id of the call, from the first of :data:`REQUEST_ID_HEADERS` it sent (cut
    to 200 characters: a header is the server's text)."""
    for name in REQUEST_ID_HEADERS:
        value: str = response.headers.get(name, "")
        if value:
            return value[:200]
    return None


class _Call:
    """One call being made: what its log lines and metrics say about it."""

    __slots__ = ("method", "observed", "path", "request_id", "route", "started")

    def __init__(self, method: str, path: str, route: str) -> None:
        self.method = method
        self.path = path
        self.route = route
        self.started = time.monotonic()
        self.request_id: str | None = None
        self.observed = False


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length")
    if raw is None or response.headers.get("content-encoding"):
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _certificate_refused(exc: BaseException) -> str | None:
    """What the TLS check said, when ``exc`` comes from a certificate it refused (OpenSSL's
    words: "self-signed certificate", "certificate has expired", ...); else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or "certificate verify failed")
        seen = seen.__cause__ or seen.__context__
    return None


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class _Counted:
    """The body of one download: counts what arrives, and tells a cut-off body from a whole one."""

    def __init__(self, response: httpx.Response, path: str, log_cut: Callable[[str], None]) -> None:
        self.response = response
        self.path = path
        self.log_cut = log_cut
        self.expected = _content_length(response)
        self.received = 0

    def chunks(self) -> Iterator[bytes]:
        # A provider (or a proxy) may compress the file (httpx asks for gzip): decode it then;
        # Content-Length counts the bytes on the wire either way.
        encoding = self.response.headers.get("content-encoding", "").strip().lower()
        decoded = encoding not in ("", "identity")
        body = (
            self.response.iter_bytes(DOWNLOAD_CHUNK)
            if decoded
            else self.response.iter_raw(DOWNLOAD_CHUNK)
        )
        try:
            for chunk in body:
                self.received = self.response.num_bytes_downloaded
                yield chunk
            self.received = self.response.num_bytes_downloaded
        except httpx.TimeoutException as exc:
            raise self._cut(f"timed out after {self.received} bytes") from exc
        except httpx.HTTPError as exc:
            raise self._cut(f"{type(exc).__name__} after {self.received} bytes") from exc

    def check_complete(self) -> None:
        if self.expected is not None and self.received != self.expected:
            raise self._cut(f"got {self.received} of {self.expected} bytes")

    def _cut(self, what: str) -> ApiTruncatedDownload:
        # Headers came in, then the body broke off: whatever was read must not be trusted.
        self.log_cut(what)
        return ApiTruncatedDownload(f"GET {self.path}: the download broke off ({what})")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Bytes chunks → lines, each with its newline; a last line without one is kept too."""
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk if rest else chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.strip():
                yield line
    if rest.strip():
        yield rest
