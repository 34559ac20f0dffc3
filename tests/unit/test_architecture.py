"""Where code may live: every write and every SQL statement under ``orchestrator/db/``; steps without
SQLAlchemy; an emulator that shares nothing with the product but the clock and the ASGI helper."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
SQL_CALLS = re.compile(r"sa\.text\(|session\.execute|\.execute\(")


def _modules(*, skip: tuple[str, ...]) -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not any(part in skip for part in p.relative_to(PACKAGE).parts)
    ]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_sql_is_executed_outside_the_db_package() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}"
        for path in _modules(skip=("db", "migrations", "emulator"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SQL_CALLS.search(line)
    ]
    assert offenders == []


def test_the_db_package_is_where_sql_is() -> None:
    # the check above is not vacuous: the same pattern finds the ledger's statements
    ledger = (PACKAGE / "db" / "ledger.py").read_text()
    assert len(SQL_CALLS.findall(ledger)) > 20


def test_steps_hold_no_sqlalchemy() -> None:
    for name in ("steps.py", "runner.py", "plan.py"):
        imported = _imports(PACKAGE / name)
        assert not {m for m in imported if m.split(".")[0] == "sqlalchemy"}, name


def test_the_emulator_imports_only_the_clock_and_the_asgi_helper_from_the_product() -> None:
    shared = {
        module
        for path in (PACKAGE / "emulator").rglob("*.py")
        for module in _imports(path)
        if module.startswith("orchestrator") and not module.startswith("orchestrator.emulator")
    }
    assert shared == {"orchestrator.clock", "orchestrator.asgi"}
