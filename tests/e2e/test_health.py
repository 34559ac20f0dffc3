"""``/healthz`` and the scrape when the database goes away: 503 naming the database (no password),
200 again once it is back; a late tick is named too; a scrape never fails, it shows the last values
and ``orchestrator_database_up 0``.

The database is made unreachable without touching the shared server: the daemon reaches it through
a TCP proxy of the test's own (:class:`TcpProxy`), which the test cuts (every connection closed,
new ones refused), holds (connections accepted or kept, nothing forwarded: a server that hangs) and
restores. The daemon runs in this process on a manual clock, its ``/healthz`` and ``/metrics``
served over real HTTP as ``orchestrator run`` serves them.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.asgi import ServerThread
from orchestrator.clock import ManualClock, SystemClock
from orchestrator.daemon import PROBE_SECONDS, Daemon
from orchestrator.deps import make_deps
from orchestrator.observability import health_app
from tests.support import enqueue, make_settings, simple_requests

pytestmark = pytest.mark.e2e

PASSWORD = "pw-9f8e7d6c5b4a3921"  # in the URL; trust authentication on the test server ignores it


class TcpProxy:
    """127.0.0.1:<port> → ``upstream``, that a test can cut, hold and restore."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener: socket.socket | None = None
        self.port = 0
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and close the open ones: a database that is down."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        self._close_all()

    def hold(self) -> None:
        """Accept, keep, forward nothing: a database (or a pooler) that hangs."""
        self._flowing.clear()

    def restore(self) -> None:
        self._close_all()  # the held connections are of no use to anyone
        self._flowing.set()
        if self._listener is None:
            self.start()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: cut
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            try:
                while True:
                    for key, _ in sel.select(timeout=0.2):
                        self._flowing.wait()
                        src: socket.socket = key.fileobj  # type: ignore[assignment]
                        data = src.recv(65536)
                        if not data:
                            return
                        key.data.sendall(data)
            except (OSError, ValueError):
                return
            finally:
                for sock in (a, b):
                    with contextlib.suppress(OSError):
                        sock.close()


@contextlib.contextmanager
def served_daemon(db_url: str) -> Iterator[tuple[Daemon, TcpProxy, str, ManualClock]]:
    """A daemon whose every database connection goes through a proxy, its /healthz and /metrics
    on a free port."""
    host, _, rest = db_url.removeprefix("postgresql://postgres@").partition(":")
    port, _, database = rest.partition("/")
    proxy = TcpProxy((host, int(port))).start()
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{proxy.port}/{database}"
    clock = ManualClock(SystemClock().now())
    deps = make_deps(make_settings(url, "http://127.0.0.1:9/v1"), clock=clock)
    daemon = Daemon(deps)
    try:
        with ServerThread(health_app(daemon.health, deps.metrics)) as server:
            yield daemon, proxy, server.url, clock
    finally:
        proxy.restore()
        daemon.close()
        deps.close()
        proxy.cut()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_healthz_names_an_unreachable_database_then_answers_200_again(db_url: str) -> None:
    enqueue(db_url, simple_requests(2))  # pending: this daemon does not tick until the end
    with served_daemon(db_url) as (daemon, proxy, url, clock):
        daemon.metrics_fresh_seconds = 0.0  # every scrape reads the database (no 2 s reuse)
        # Given a daemon that has just started and reaches its database
        ok = httpx.get(f"{url}/healthz", timeout=10)
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["status"] == "ok" and body["version"] and body["worker_id"]
        assert body["in_flight"] == 0 and body["last_tick_age_seconds"] is None
        assert body["paused_targets"] == [] and body["stuck_batches"] == []
        up = scrape(url)
        assert up[("orchestrator_database_up", ())] == 1
        assert up[("orchestrator_jobs", (("status", "pending"),))] == 1

        # When the database goes away
        proxy.cut()
        started = time.monotonic()
        down = httpx.get(f"{url}/healthz", timeout=10)
        # Then /healthz answers 503 at once, naming the database and not its password
        assert down.status_code == 503, down.text
        assert down.json()["error"].startswith("database unreachable: ")
        assert "Connection refused" in down.json()["error"]
        assert PASSWORD not in down.text and PASSWORD[3:11] not in down.text
        assert time.monotonic() - started < PROBE_SECONDS
        # and a scrape still works: the last values, and database_up 0
        stale = scrape(url)
        assert stale[("orchestrator_database_up", ())] == 0
        assert stale[("orchestrator_jobs", (("status", "pending"),))] == 1

        # When it comes back, both are well again
        proxy.restore()
        again = httpx.get(f"{url}/healthz", timeout=10)
        assert again.status_code == 200, again.text
        assert scrape(url)[("orchestrator_database_up", ())] == 1

        # When the database hangs (a connection open, no answer), /healthz does not hang with it
        proxy.hold()
        started = time.monotonic()
        hung = httpx.get(f"{url}/healthz", timeout=30)
        waited = time.monotonic() - started
        assert hung.status_code == 503 and "database unreachable" in hung.json()["error"]
        assert waited < PROBE_SECONDS + 1, waited
        proxy.restore()
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200

        # When no tick has succeeded for longer than max(30 s, 10 ticks), that is named
        clock.advance(31)
        late = httpx.get(f"{url}/healthz", timeout=10)
        assert late.status_code == 503 and late.json()["error"].startswith("tick late: ")
        daemon.tick()
        ticked = httpx.get(f"{url}/healthz", timeout=10)
        assert ticked.status_code == 200 and ticked.json()["last_tick_age_seconds"] == 0
