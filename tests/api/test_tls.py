"""HTTPS: the clients verify the server's certificate, with one set of TLS settings for the whole
process (``tls_context``: built once, not once per client), which honours ``SSL_CERT_FILE``.

The emulator serves HTTPS with a self-signed certificate made by ``openssl`` (Debian's package,
on every machine this project runs its tests on)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from orchestrator.api import errors as e
from orchestrator.api.client import BatchApiClient, make_http_client, tls_context
from orchestrator.clock import ManualClock
from orchestrator.config import Secret, make_target
from orchestrator.emulator import Emulator, EmulatorConfig, EmulatorServer
from tests.support import API_KEY


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


@pytest.fixture
def server(certificate: tuple[str, str]) -> Iterator[EmulatorServer]:
    emulator = Emulator(EmulatorConfig(api_key=API_KEY), ManualClock())
    with emulator, EmulatorServer(emulator, tls=certificate) as running:
        yield running


@pytest.fixture
def fresh_tls() -> Iterator[None]:
    """The process's TLS settings built again for this test (its environment), and again after
    it, so that no other test sees them."""
    tls_context.cache_clear()
    yield
    tls_context.cache_clear()


def _client(server: EmulatorServer) -> BatchApiClient:
    target = make_target(
        "fastrouter", "fastrouter", base_url=server.base_url, api_key=Secret(API_KEY)
    )
    return BatchApiClient(make_http_client(target), target="fastrouter")


@pytest.mark.usefixtures("fresh_tls")
def test_a_certificate_nobody_trusts_is_refused(server: EmulatorServer) -> None:
    assert server.base_url.startswith("https://")
    with pytest.raises(e.ApiTransportError) as refused:
        _client(server).get_batch("fr_batch-none")
    assert str(refused.value) == (
        "GET batches/fr_batch-none: the server's TLS certificate was not accepted "
        "(self-signed certificate); if the server is the right one, trust its certificate "
        "authority with SSL_CERT_FILE"
    )
    assert server.emulator.ledger.calls == []  # refused at the handshake: no request was sent


@pytest.mark.usefixtures("fresh_tls")
def test_a_certificate_trusted_through_ssl_cert_file_is_accepted(
    server: EmulatorServer, certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", certificate[0])
    with pytest.raises(e.ApiNotFound):  # through TLS to the emulator, which knows no such batch
        _client(server).get_batch("fr_batch-none")
    assert [call.status for call in server.emulator.ledger.calls] == [404]


def test_every_client_shares_the_process_tls_settings() -> None:
    a = make_http_client(make_target("a", "fastrouter", base_url="https://a.example/v1"))
    b = make_http_client(make_target("b", "openai", base_url="https://b.example/v1"))
    try:
        # httpx keeps the context of its connection pool there (httpx 0.28)
        contexts = {id(client._transport._pool._ssl_context) for client in (a, b)}  # type: ignore[attr-defined]
        assert contexts == {id(tls_context())}
    finally:
        a.close()
        b.close()
