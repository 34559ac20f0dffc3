"""The API client against the emulator over real HTTP: every status in the doc maps to its
exception, and the happy path parses every response."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestrator.api import errors as e
from orchestrator.api.client import BatchApiClient, make_http_client
from orchestrator.clock import ManualClock
from orchestrator.config import Secret, make_target
from orchestrator.domain.decide import ErrorKind
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from tests.support import API_KEY, chat_body

LINES = "".join(
    f'{{"custom_id": "r{i}", "provider": "openai", "method": "POST", '
    f'"url": "/v1/chat/completions", "body": {json.dumps(chat_body(i))}}}\n'
    for i in range(5)
)


Env = tuple[Emulator, BatchApiClient, ManualClock, Path]


@contextmanager
def _env(tmp_path: Path, *, timeout: float) -> Iterator[Env]:
    clock = ManualClock()
    emulator = Emulator(EmulatorConfig(api_key=API_KEY), clock)
    with emulator, EmulatorServer(emulator) as server:
        target = make_target(
            "fastrouter",
            "fastrouter",
            base_url=server.base_url,
            api_key=Secret(API_KEY),
            timeout_seconds=timeout,
        )
        http = make_http_client(target)
        path = tmp_path / "in.jsonl"
        path.write_text(LINES)
        yield emulator, BatchApiClient(http, target="fastrouter"), clock, path
        http.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    # A timeout no answer of this machine's own server reaches, however loaded the machine (0.5 s
    # did, with two test suites and a mutation run beside: an upload timed out): the test of a
    # timeout makes its own client
    with _env(tmp_path, timeout=30.0) as made:
        yield made


def test_the_documented_flow_parses_every_response(env) -> None:  # type: ignore[no-untyped-def]
    _emulator, client, clock, path = env
    uploaded = client.upload_file(path, filename="in.jsonl")
    assert uploaded.id.startswith("file-") and uploaded.num_rows == 5
    assert uploaded.bytes == path.stat().st_size
    batch = client.create_batch(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        metadata={"orchestrator_key": "k1"},
    )
    assert batch.id.startswith("fr_batch-") and batch.status == "validating"
    assert batch.metadata == {"orchestrator_key": "k1"}
    clock.advance(3600)
    done = client.get_batch(batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id is None
    assert done.usage is not None and done.usage["total_tokens"] > 0
    sink = io.BytesIO()
    assert client.download_file(done.output_file_id, sink) == len(sink.getvalue()) > 0
    assert sink.getvalue().count(b"\n") == 5
    # the five lines of the provider's output file, as it stored them: a success for each request
    lines = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert lines == _emulator.produced(batch.id)
    assert [(line["custom_id"], line["response"]["status_code"]) for line in lines] == [
        (f"r{i}", 200) for i in range(5)
    ]


@pytest.mark.parametrize(
    ("status", "cls", "kind"),
    [
        (400, e.ApiBadRequest, ErrorKind.INVALID),
        (401, e.ApiAuthError, ErrorKind.ACCOUNT),
        (402, e.ApiPaymentRequired, ErrorKind.ACCOUNT),
        (403, e.ApiAuthError, ErrorKind.ACCOUNT),
        (404, e.ApiNotFound, ErrorKind.NOT_FOUND),
        (409, e.ApiServerError, ErrorKind.TRANSIENT),
        (413, e.ApiPayloadTooLarge, ErrorKind.TOO_LARGE),
        (429, e.ApiRateLimited, ErrorKind.RATE_LIMITED),
        (500, e.ApiServerError, ErrorKind.TRANSIENT),
        (502, e.ApiServerError, ErrorKind.TRANSIENT),
        (503, e.ApiServerError, ErrorKind.TRANSIENT),
    ],
)
@pytest.mark.parametrize("route", ["upload_file", "create_batch", "get_batch", "file_content"])
def test_each_status_maps_to_its_exception(env, status, cls, kind, route) -> None:  # type: ignore[no-untyped-def]
    emulator, client, clock, path = env
    uploaded = client.upload_file(path, filename="in.jsonl")
    batch = client.create_batch(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
    clock.advance(3600)
    output = client.get_batch(batch.id).output_file_id
    assert output is not None
    emulator.faults.add(route, status=status, message=f"injected {status}")
    calls = {
        "upload_file": lambda: client.upload_file(path, filename="in.jsonl"),
        "create_batch": lambda: client.create_batch(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions"
        ),
        "get_batch": lambda: client.get_batch(batch.id),
        "file_content": lambda: client.download_file(output, io.BytesIO()),
    }
    with pytest.raises(cls) as caught:
        calls[route]()
    assert type(caught.value) is cls
    assert caught.value.status_code == status and caught.value.kind is kind
    assert caught.value.message == f"injected {status}"  # the provider's own message
    assert caught.value.retryable == (kind in (ErrorKind.TRANSIENT, ErrorKind.RATE_LIMITED))


def test_429_carries_retry_after(env) -> None:  # type: ignore[no-untyped-def]
    emulator, client, _, _ = env
    emulator.faults.add("get_batch", status=429, retry_after=30)
    with pytest.raises(e.ApiRateLimited) as caught:
        client.get_batch("fr_batch-x")
    assert caught.value.retry_after == 30


def test_a_slow_answer_is_a_timeout(tmp_path: Path) -> None:
    with _env(tmp_path, timeout=0.5) as (emulator, client, _, _):
        emulator.faults.add("get_batch", delay_seconds=2)
        with pytest.raises(e.ApiTimeout) as caught:
            client.get_batch("fr_batch-x")
    assert caught.value.kind is ErrorKind.TRANSIENT


def test_a_closed_port_is_a_transport_error() -> None:
    target = make_target(
        "t",
        "fastrouter",
        base_url="http://127.0.0.1:9/v1",
        timeout_seconds=1,
        connect_timeout_seconds=1,
    )
    with make_http_client(target) as http, pytest.raises(e.ApiTransportError) as caught:
        BatchApiClient(http).get_batch("x")
    assert caught.value.retryable


def test_the_key_is_sent_but_never_shown(env) -> None:  # type: ignore[no-untyped-def]
    emulator, client, _, _ = env
    emulator.revoke_key()
    with pytest.raises(e.ApiAuthError) as caught:
        client.get_batch("fr_batch-x")
    assert API_KEY not in str(caught.value) and API_KEY not in repr(caught.value.body)
    assert API_KEY not in repr(
        make_target("t", "fastrouter", api_key=Secret(API_KEY), base_url="http://x")
    )


def test_a_blocked_target_sends_nothing(env) -> None:  # type: ignore[no-untyped-def]
    emulator, client, _, _ = env

    def blocked() -> None:
        raise e.TargetBlocked(429, "wait", retry_after=5)

    gated = BatchApiClient(client._http, before_request=blocked)
    before = len(emulator.ledger.calls)
    with pytest.raises(e.TargetBlocked):
        gated.get_batch("x")
    assert len(emulator.ledger.calls) == before


def _key_windows(text: str) -> list[str]:
    """Every 8-character window of the key's distinctive part (after ``sk-test-``) found in text."""
    distinct = API_KEY.removeprefix("sk-test-")
    return [distinct[i : i + 8] for i in range(len(distinct) - 7) if distinct[i : i + 8] in text]


@pytest.mark.parametrize(
    ("route", "status", "cls"),
    [
        ("get_batch", 500, e.ApiServerError),
        ("create_batch", 500, e.ApiServerError),
        ("upload_file", 500, e.ApiServerError),
        ("get_batch", 401, e.ApiAuthError),
    ],
)
def test_an_answer_quoting_the_key_leaves_it_out_of_the_exception(  # type: ignore[no-untyped-def]
    env, route, status, cls
) -> None:
    emulator, client, _, path = env
    emulator.faults.add(route, status=status, echo_auth=True)
    calls = {
        "upload_file": lambda: client.upload_file(path, filename="in.jsonl"),
        "create_batch": lambda: client.create_batch(
            input_file_id="file-x", endpoint="/v1/chat/completions"
        ),
        "get_batch": lambda: client.get_batch("fr_batch-x"),
    }
    with pytest.raises(cls) as caught:
        calls[route]()
    exc = caught.value
    assert "(received Authorization: Bearer **********)" in exc.message  # the fault fired
    shown = [str(exc), exc.message, repr(exc), repr(exc.body), repr(exc.args)]
    assert _key_windows(" ".join(shown)) == [], shown


def test_an_unreadable_error_body_is_cut_after_the_key_is_taken_out() -> None:
    import httpx  # (this module's imports are shared; only appended to here)

    # A proxy's HTML page quoting the header across the 300 characters an error message keeps.
    page = "<html><body>" + "." * 245 + f"Authorization: Bearer {API_KEY}</body></html>"
    assert _key_windows(page[:300])  # cut first, scrubbed after, 13 characters of it would stay

    def proxy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text=page, headers={"content-type": "text/html"})

    target = make_target(
        "fastrouter", "fastrouter", base_url="http://proxy/v1", api_key=Secret(API_KEY)
    )
    with (
        make_http_client(target, transport=httpx.MockTransport(proxy)) as http,
        pytest.raises(e.ApiServerError) as caught,
    ):
        BatchApiClient(http).get_batch("fr_batch-x")
    assert caught.value.message.startswith("<html><body>...")
    assert _key_windows(str(caught.value) + repr(caught.value)) == [], caught.value.message


@pytest.mark.parametrize("route", ["get_batch", "create_batch", "upload_file"])
def test_a_body_that_cannot_be_decoded_is_a_passing_error_that_quotes_nothing(  # type: ignore[no-untyped-def]
    env, route
) -> None:
    from orchestrator.emulator.faults import Garbage  # (appended test; the imports are shared)

    emulator, client, _, path = env
    # a proxy labels a plain-text page quoting the Authorization header "gzip": httpx fails
    # while decoding it (httpx.DecodingError), with the body in hand
    rule = emulator.faults.add(route, Garbage(gzip=True))
    calls = {
        "upload_file": lambda: client.upload_file(path, filename="in.jsonl"),
        "create_batch": lambda: client.create_batch(
            input_file_id="file-x", endpoint="/v1/chat/completions"
        ),
        "get_batch": lambda: client.get_batch("fr_batch-x"),
    }
    with pytest.raises(e.ApiDecodeError) as caught:
        calls[route]()
    assert rule.fired == 1
    exc = caught.value
    assert exc.kind is ErrorKind.TRANSIENT and exc.retryable
    assert "could not be decoded" in exc.message
    assert _key_windows(" ".join([str(exc), repr(exc), repr(exc.args)])) == []


@pytest.mark.parametrize("route", ["get_batch", "create_batch", "file_content"])
def test_a_redirect_loop_is_an_error_that_pauses_the_target_and_names_the_base_url(  # type: ignore[no-untyped-def]
    env, route
) -> None:
    from orchestrator.emulator.faults import Redirect

    emulator, client, clock, path = env
    uploaded = client.upload_file(path, filename="in.jsonl")
    batch = client.create_batch(input_file_id=uploaded.id, endpoint="/v1/chat/completions")
    clock.advance(3600)
    output = client.get_batch(batch.id).output_file_id
    assert output is not None
    calls = {
        "create_batch": lambda: client.create_batch(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions"
        ),
        "get_batch": lambda: client.get_batch(batch.id),
        "file_content": lambda: client.download_file(output, io.BytesIO()),
    }
    before = len(emulator.ledger.batches)
    # Given a server that sends every call back to where it came from
    rule = emulator.faults.add(route, Redirect(), times=None)
    # When the client calls it
    with pytest.raises(e.ApiRedirectLoop) as caught:
        calls[route]()
    # Then it gives up after httpx's 20 redirects, with an error that pauses the target (as a bad
    # key does) and says where to look
    assert rule.fired == 21
    exc = caught.value
    assert exc.kind is ErrorKind.ACCOUNT and not exc.retryable
    assert "redirected more than 20 times" in exc.message and "base_url" in exc.message
    assert len(emulator.ledger.batches) == before  # a create sent round in a loop created nothing
    # and one redirect on its own is simply followed
    emulator.faults.clear()
    emulator.faults.add(route, Redirect(), times=1)
    calls[route]()
    assert emulator.faults.rules() == []


def _every_route(client: BatchApiClient, path: Path) -> list[str]:
    """One call of each route the client has (what the provider answers does not matter here:
    fastrouter mode refuses the openai-only routes). Returns the routes that raised."""
    raised = []

    def lines() -> list[bytes]:
        with client.open_lines("file-x") as it:
            return list(it)

    calls = [
        ("upload", lambda: client.upload_file(path, filename="in.jsonl")),
        ("create", lambda: client.create_batch(input_file_id="file-x", endpoint="/v1/x")),
        ("get", lambda: client.get_batch("fr_batch-x")),
        ("list", lambda: client.list_batches(limit=1)),
        ("cancel", lambda: client.cancel_batch("fr_batch-x")),
        ("content", lambda: client.download_file("file-x", io.BytesIO())),
        ("lines", lines),
        ("delete", lambda: client.delete_file("file-x")),
    ]
    for name, call in calls:
        try:
            call()
        except e.ApiError:
            raised.append(name)
    return raised


def test_the_hook_runs_once_before_every_call_of_every_route(env) -> None:  # type: ignore[no-untyped-def]
    emulator, client, _, path = env
    seen: list[int] = []  # the calls the emulator had answered when the hook ran

    hooked = BatchApiClient(
        client._http, before_request=lambda: seen.append(len(emulator.ledger.calls))
    )
    _every_route(hooked, path)
    assert seen == list(range(8))  # before each call, never after one, once per call
    assert len(emulator.ledger.calls) == 8


def test_a_capped_call_is_sent_on_no_route(env) -> None:  # type: ignore[no-untyped-def]
    emulator, client, _, path = env

    def capped() -> None:
        raise e.CallCapReached(429, "used up", retry_after=12.5)

    refused = _every_route(BatchApiClient(client._http, before_request=capped), path)
    assert refused == ["upload", "create", "get", "list", "cancel", "content", "lines", "delete"]
    assert emulator.ledger.calls == []
    cap = e.CallCapReached(429, "used up", retry_after=12.5)
    assert (cap.kind, cap.retryable, cap.retry_after) == (ErrorKind.RATE_LIMITED, True, 12.5)
    assert isinstance(cap, e.TargetBlocked)  # the runner's path for a call not sent
