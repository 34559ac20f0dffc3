"""The roles script ships twice: in the package (``orchestrator roles`` reads it from there, in a
wheel too) and in ``deploy/`` (for ``psql``); both must be the same file."""

from __future__ import annotations

from pathlib import Path

from orchestrator import roles

REPO = Path(__file__).resolve().parents[2]


def test_deploy_roles_sql_is_the_packaged_script() -> None:
    packaged = REPO / "orchestrator" / "db" / "roles.sql"
    assert (REPO / "deploy" / "roles.sql").read_bytes() == packaged.read_bytes()
    assert roles.script() == packaged.read_text(encoding="utf-8")


def test_the_script_creates_the_roles_the_command_describes() -> None:
    text = roles.script()
    for name in roles.ROLES:
        assert f"'{name}'" in text
