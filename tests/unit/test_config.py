"""Where each setting comes from: the environment over the TOML file over the preset, for every
field; and ``orchestrator config`` shows the result with its secrets masked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.config import Settings


def _settings(tmp_path: Path, toml: str, **env: str) -> Settings:
    path = tmp_path / "orchestrator.toml"
    path.write_text(toml)
    return Settings.from_env({"ORCHESTRATOR_CONFIG": str(path), **env})


def test_a_file_table_for_a_built_in_target_keeps_the_environments_api_root_and_key(
    tmp_path: Path,
) -> None:
    # Given OPENAI_BASE_URL points at a gateway, and the file tunes the openai target
    settings = _settings(
        tmp_path,
        "[targets.openai]\ntimeout_seconds = 5\n",
        OPENAI_BASE_URL="http://gateway.internal/v1",
        OPENAI_API_KEY="sk-gateway-key-1234",
    )
    openai = settings.target("openai")
    # Then the environment wins for what it sets, the file for the rest, the preset below both
    assert openai.base_url == "http://gateway.internal/v1"
    assert openai.api_key is not None and openai.api_key.reveal() == "sk-gateway-key-1234"
    assert openai.timeout_seconds == 5
    assert openai.flavor == "openai" and openai.can_list


def test_the_file_wins_over_the_preset_and_the_environment_over_the_file(tmp_path: Path) -> None:
    toml = '[targets.fastrouter]\nbase_url = "http://file.example/v1"\nmax_custom_id_length = 40\n'
    from_file = _settings(tmp_path, toml).target("fastrouter")
    assert from_file.base_url == "http://file.example/v1"  # file over preset
    assert from_file.flavor == "fastrouter"  # a built-in target keeps its own preset
    assert from_file.max_custom_id_length == 40
    from_env = _settings(tmp_path, toml, FASTROUTER_BASE_URL="http://env.example/v1")
    assert from_env.target("fastrouter").base_url == "http://env.example/v1"  # env over file


def test_the_database_password_is_a_secret_for_the_redactor(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, "", ORCHESTRATOR_DATABASE_URL="postgresql://app:pw-9f8e7d6c@db:5432/batches"
    )
    assert "pw-9f8e7d6c" in settings.secrets()


def test_a_database_password_is_a_secret_as_it_is_and_as_the_url_spells_it(
    tmp_path: Path,
) -> None:
    # A URL percent-encodes what it cannot hold; whatever prints the URL prints that form
    url = "postgresql://app:pw%3A9f8e%2F7d6c%40@db:5432/batches"
    secrets = _settings(tmp_path, "", ORCHESTRATOR_DATABASE_URL=url).secrets()
    assert secrets == ["pw:9f8e/7d6c@", "pw%3A9f8e%2F7d6c%40"]
    lowered = url.replace("%2F", "%2f")  # as written, when it differs from the usual spelling
    secrets = _settings(tmp_path, "", ORCHESTRATOR_DATABASE_URL=lowered).secrets()
    assert secrets == ["pw:9f8e/7d6c@", "pw%3A9f8e%2f7d6c%40", "pw%3A9f8e%2F7d6c%40"]


def test_config_prints_the_effective_settings_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", "postgresql://app:pw-9f8e7d6c@db:5432/b")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-live-0123456789abcdef")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.internal/v1")
    try:
        assert main(["config"]) == 0
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    out = capsys.readouterr().out
    assert "postgresql://app:***@db:5432/b" in out
    assert "target openai: openai at http://gateway.internal/v1, key set" in out
    assert "target fastrouter: fastrouter at https://api.fastrouter.ai/v1, key NOT SET" in out
    assert "pw-9f8e7d6c" not in out and "0123456789abcdef" not in out
