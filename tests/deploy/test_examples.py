"""The example settings in deploy/ are what the units and the code read."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.config import Settings
from orchestrator.db.session import sqlalchemy_url

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONFIG_SOURCE = (REPO / "orchestrator" / "config.py").read_text()


def assignments(path: Path, *, commented: bool = False) -> dict[str, str]:
    """``VAR=value`` lines as systemd's EnvironmentFile= reads them (with ``commented``, also the
    ``# VAR=value`` lines an operator may uncomment)."""
    pattern = r"^#?\s*([A-Z][A-Z0-9_]*)=(\S*)$" if commented else r"^([A-Z][A-Z0-9_]*)=(\S*)$"
    return dict(re.findall(pattern, path.read_text(), re.M))


def test_each_environment_file_is_the_one_its_units_read() -> None:
    for example, units in {
        "orchestrator.env.example": ["orchestrator.service"],
        "migrate.env.example": ["orchestrator-migrate.service", "orchestrator-downgrade@.service"],
    }.items():
        installed = re.search(r"^# (/etc/orchestrator/\S+):", (DEPLOY / example).read_text())
        assert installed, example
        for unit in units:
            assert f"EnvironmentFile={installed.group(1)}\n" in (DEPLOY / unit).read_text()


def test_the_daemon_environment_example_is_read_by_the_settings(tmp_path: Path) -> None:
    example = DEPLOY / "orchestrator.env.example"
    every = assignments(example, commented=True)
    for var in every:
        assert var.endswith("_API_KEY") or f'"{var}"' in CONFIG_SOURCE, f"{var}: not a setting"
    # as written, and with every commented line uncommented
    settings = Settings.from_env(assignments(example))
    assert settings.target("fastrouter").api_key is not None
    assert sqlalchemy_url(settings.require_database_url()).username == "batchd"
    every["ORCHESTRATOR_CONFIG"] = str(DEPLOY / "orchestrator.toml.example")
    settings = Settings.from_env(every)
    assert settings.daemon.http_addr == every["ORCHESTRATOR_HTTP_ADDR"]
    assert settings.daemon.workers == int(every["ORCHESTRATOR_WORKERS"])
    assert "groq" in settings.targets  # the TOML example's extra target


def test_the_migration_environment_holds_the_migrator_login_only() -> None:
    env = assignments(DEPLOY / "migrate.env.example", commented=True)
    assert list(env) == ["ORCHESTRATOR_DATABASE_URL"]  # no API key where none is needed
    assert sqlalchemy_url(env["ORCHESTRATOR_DATABASE_URL"]).username == "deploy"
