"""``LISTEN`` for the notifications the enqueue trigger sends, on a connection of its own."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import structlog

log = structlog.get_logger(__name__)


def listen(url: str, channel: str, *, on_notify: Callable[[], None], stop: threading.Event) -> None:
    """Call ``on_notify`` for each notification on ``channel`` until ``stop`` is set; reconnect
    (after 5 s) whenever the connection fails."""
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"LISTEN {channel}")
                while not stop.is_set():
                    for _ in conn.notifies(timeout=1.0, stop_after=1):
                        on_notify()
        except psycopg.Error as exc:
            if stop.is_set():  # stopping: the server may go first (an embedded one stops with us)
                return
            log.warning("listen_failed", error=type(exc).__name__)
            stop.wait(5)
