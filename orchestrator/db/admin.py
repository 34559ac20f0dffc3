"""What an administrator runs against the database: SQL scripts shipped with the package (the
roles of ``orchestrator roles``), sent as they are."""

from __future__ import annotations

import psycopg

from orchestrator.db.session import libpq_url


def run_script(url: str, script: str) -> list[str]:
    """Run ``script`` (any number of statements, no parameters) in one transaction on the database
    ``url`` names, committed only if every statement succeeds; returns the messages its ``RAISE
    NOTICE`` statements (and the server's own notices) sent, in order. Errors are psycopg's."""
    notices: list[str] = []
    with psycopg.connect(
        libpq_url(url), connect_timeout=10, application_name="batch-orchestrator"
    ) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute(script.encode())
    return notices
