"""``orchestrator roles``: the database roles, created and granted by the SQL script shipped in the
package (``orchestrator/db/roles.sql``; ``deploy/roles.sql`` is the same file, for ``psql``).

The roles are NOLOGIN groups; people and programs log in as members of them. What each may do is
the script's business; this module reads the script, runs it, and says what happened in lines a
person can act on (a refusal is one line, not a traceback).
"""

from __future__ import annotations

from importlib import resources

import psycopg

from orchestrator.db import admin
from orchestrator.errors import ConfigError, OrchestratorError

SCRIPT = "roles.sql"

ROLES = {
    "orchestrator_migrator": "owns schema orchestrator: runs `orchestrator migrate`",
    "orchestrator_daemon": "reads and writes the tables, no DDL: runs `orchestrator run`",
    "orchestrator_enqueue": "inserts jobs and requests, reads them and the results, cancels jobs",
    "orchestrator_reporting": "reads every table and view, writes nothing (psql, Metabase)",
}


class RolesRefused(ConfigError):
    """The configured database user may not create roles or grant on the schema (exit code 2:
    run the command as another user)."""


class RolesFailed(OrchestratorError):
    """The script failed for another reason (the server went away, the database is missing)."""


def script() -> str:
    """The SQL, from the installed package (a wheel holds it too)."""
    return resources.files("orchestrator.db").joinpath(SCRIPT).read_text(encoding="utf-8")


def _first_line(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary
    if primary:
        return primary
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def apply(url: str) -> list[str]:
    """Run the script on the database ``url`` names, as the user it names; returns the notices
    (roles created, objects handed over to the migrator, ...)."""
    try:
        return admin.run_script(url, script())
    except psycopg.errors.InsufficientPrivilege as exc:
        raise RolesRefused(
            f"the database refused ({_first_line(exc)}): run `orchestrator roles` as a superuser "
            "(or as a user with CREATEROLE that owns the database and schema orchestrator)"
        ) from None
    except psycopg.OperationalError as exc:
        raise RolesFailed(f"cannot run the roles script: {_first_line(exc)}") from None
    except psycopg.Error as exc:
        raise RolesFailed(f"the roles script failed: {_first_line(exc)}") from None


def summary() -> list[str]:
    """What the roles are for and how to give someone a login in one."""
    width = max(map(len, ROLES))
    return [
        "database roles:",
        *(f"  {name.ljust(width)}  {what}" for name, what in ROLES.items()),
        "log in as a member of one, e.g.:",
        "  CREATE ROLE metabase LOGIN PASSWORD '...' IN ROLE orchestrator_reporting;",
        "  CREATE ROLE batchd LOGIN PASSWORD '...' IN ROLE orchestrator_daemon;",
        "  CREATE ROLE deploy LOGIN PASSWORD '...' IN ROLE orchestrator_migrator;",
        "  ALTER ROLE deploy SET role = 'orchestrator_migrator';  -- its tables belong to the group",
        "then use that user in ORCHESTRATOR_DATABASE_URL (postgresql://batchd:...@host/db).",
    ]
