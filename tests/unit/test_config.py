"""Where each setting comes from: the environment over the TOML file over the preset, for every
field; and ``orchestrator config`` shows the result with its secrets masked."""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.config import (
    DaemonSettings,
    Secret,
    Settings,
    TargetConfig,
    check_type,
    field_types,
    make_target,
)
from orchestrator.errors import ConfigError


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


NO_BASE_URL = (
    'has no base_url: a target of your own must say where its API is (base_url = "https://…/v1")'
)


@pytest.mark.parametrize(
    "table",
    [
        '[targets.groq]\npreset = "openai"\napi_key_env = "GROQ_API_KEY"\n',
        '[targets.groq]\napi_key_env = "GROQ_API_KEY"\n',  # no preset: openai's, and no host
        '[targets.groq]\npreset = "fastrouter"\nbase_url = ""\n',
    ],
    ids=["openai-preset", "no-preset", "empty-base-url"],
)
def test_a_target_of_your_own_without_base_url_is_refused_naming_it(
    tmp_path: Path, table: str
) -> None:
    # Given a table for a target of your own that does not say where its API is
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, table, GROQ_API_KEY="gsk-0123456789")
    # Then start-up is refused, in one line naming the file, the target and what to write
    assert str(caught.value) == f"{tmp_path / 'orchestrator.toml'}: [targets.groq] {NO_BASE_URL}"
    # and nothing is built without it in code either: a preset gives no host
    with pytest.raises(ConfigError) as made:
        make_target("groq", "openai", api_key=Secret("gsk-0123456789"))
    assert str(made.value) == f"target 'groq' {NO_BASE_URL}"


def test_built_in_targets_keep_their_host_and_a_target_of_your_own_its_base_url(
    tmp_path: Path,
) -> None:
    settings = _settings(
        tmp_path,
        '[targets.openai]\ntimeout_seconds = 5\n[targets.fastrouter]\npreset = "fastrouter"\n'
        '[targets.groq]\npreset = "openai"\nbase_url = "https://api.groq.com/openai/v1"\n',
    )
    assert settings.target("openai").base_url == "https://api.openai.com/v1"
    assert settings.target("fastrouter").base_url == "https://api.fastrouter.ai/v1"
    groq = settings.target("groq")
    assert (groq.base_url, groq.flavor, groq.can_list) == (
        "https://api.groq.com/openai/v1",
        "openai",
        True,
    )
    # a built-in target's host is its own, whatever preset its table names
    switched = _settings(tmp_path, '[targets.openai]\npreset = "fastrouter"\n')
    assert switched.target("openai").base_url == "https://api.openai.com/v1"
    assert Settings.from_env({}).target("fastrouter").base_url == "https://api.fastrouter.ai/v1"


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


# -- every setting's type is checked, from the dataclasses' annotations ----------------------


def _wrong_literals(hint: Any) -> list[str]:
    """TOML literals of the wrong type for a field annotated ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        (inner,) = [a for a in args if a is not type(None)]
        return _wrong_literals(inner)
    if origin is Literal:
        return ['"no-such-choice"', "1"]
    if origin is tuple:
        return ['"/v1/chat/completions"', "[1, 2]"]
    if origin is dict:
        return ["5", '{ "gpt-4o" = "2000000" }', '{ "gpt-4o" = 0 }', '{ "gpt-4o" = 1.5 }']
    return {
        int: ['"50000"', '"four"', "true", "1.5"],
        float: ['"1.5"', "true", '"soon"'],
        bool: ['"yes"', "1"],
        str: ["5", "true", "[1]"],
    }[hint]


def _typed_fields(cls: type) -> list[tuple[str, Any]]:
    return [(k, h) for k, h in field_types(cls).items() if k not in ("name", "api_key")]


@pytest.mark.parametrize(
    ("table", "cls"), [("daemon", DaemonSettings), ("targets.extra", TargetConfig)]
)
def test_a_value_of_the_wrong_type_in_the_file_names_the_file_the_table_and_the_key(
    tmp_path: Path, table: str, cls: type
) -> None:
    path = tmp_path / "orchestrator.toml"
    tried = 0
    for key, hint in _typed_fields(cls):
        for literal in _wrong_literals(hint):
            path.write_text(f"[{table}]\n{key} = {literal}\n")
            with pytest.raises(ConfigError) as caught:
                Settings.from_env({"ORCHESTRATOR_CONFIG": str(path)})
            message = str(caught.value)
            assert message.startswith(f"{path}: [{table}] {key} must be "), (key, literal, message)
            assert "\n" not in message
            tried += 1
    assert tried > 2 * len(_typed_fields(cls))


def test_every_setting_has_an_annotation_the_check_knows() -> None:
    # A field added with a type check_type cannot check would fail every file that sets it.
    for cls in (DaemonSettings, TargetConfig):
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                hint = field_types(cls)[field.name]
                assert check_type(field.default, hint) == field.default, field.name


def test_a_number_written_as_a_string_is_refused_saying_how_to_write_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[daemon\] workers must be a whole number, not the "
                       r"string '50000'; write workers = 50000 \(without quotes\)"):  # fmt: skip
        _settings(tmp_path, '[daemon]\nworkers = "50000"\n')
    with pytest.raises(ConfigError, match=r"\[targets.fastrouter\] timeout_seconds must be a "
                       r"number, not true; fix it in that file"):  # fmt: skip
        _settings(tmp_path, "[targets.fastrouter]\ntimeout_seconds = true\n")


def test_values_of_the_right_type_are_taken_as_the_fields_types(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        '[daemon]\nworkers = 8\ntick_seconds = 1\nhttp_addr = "off"\n'
        '[targets.extra]\nbase_url = "http://x/v1"\nendpoints = ["/v1/embeddings"]\n'
        "can_list = false\n",
    )
    assert settings.daemon.workers == 8
    assert settings.daemon.tick_seconds == 1.0 and isinstance(settings.daemon.tick_seconds, float)
    assert settings.daemon.http_addr is None
    extra = settings.target("extra")
    assert extra.endpoints == ("/v1/embeddings",) and extra.can_list is False
    assert settings.declared_targets == {"extra"}


FIX_VAR = "; fix the environment variable"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"ORCHESTRATOR_WORKERS": "four"},
         "ORCHESTRATOR_WORKERS must be a whole number, not 'four'" + FIX_VAR),
        ({"ORCHESTRATOR_WORKERS": "0"}, "ORCHESTRATOR_WORKERS must be at least 1, not 0" + FIX_VAR),
        ({"ORCHESTRATOR_TICK_SECONDS": "nan"},
         "ORCHESTRATOR_TICK_SECONDS must be a number, not 'nan'" + FIX_VAR),
        ({"ORCHESTRATOR_TICK_SECONDS": "soon"},
         "ORCHESTRATOR_TICK_SECONDS must be a number, not 'soon'" + FIX_VAR),
        ({"ORCHESTRATOR_POLL_MAX_SECONDS": "inf"},
         "ORCHESTRATOR_POLL_MAX_SECONDS must be a number, not 'inf'" + FIX_VAR),
        ({"ORCHESTRATOR_LEASE_SECONDS": "-5"},
         "ORCHESTRATOR_LEASE_SECONDS must be at least 0, not -5.0" + FIX_VAR),
        ({"ORCHESTRATOR_POLL_INITIAL_SECONDS": "-0.5"},
         "ORCHESTRATOR_POLL_INITIAL_SECONDS must be at least 0, not -0.5" + FIX_VAR),
        ({"ORCHESTRATOR_LOG_LEVEL": "loud"}, "ORCHESTRATOR_LOG_LEVEL must be one of debug, info, "
                                             "warning, error, critical, not 'loud'"),
        ({"ORCHESTRATOR_LOG_FORMAT": "xml"}, "ORCHESTRATOR_LOG_FORMAT must be auto, json or "
                                             "console, not 'xml'"),
        ({"ORCHESTRATOR_HTTP_ADDR": "9464"}, "ORCHESTRATOR_HTTP_ADDR must be host:port (for "
                                             "example 127.0.0.1:9464) or off, not '9464'; fix it"),
    ],
)  # fmt: skip
def test_a_bad_environment_variable_is_named_with_its_value(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == says


def test_the_log_level_is_checked_in_the_file_too_and_any_case_is_taken(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_level must be one of"):
        _settings(tmp_path, 'log_level = "verbose"\n')
    assert Settings.from_env({"ORCHESTRATOR_LOG_LEVEL": "DEBUG"}).log_level == "debug"


def test_a_table_that_is_not_a_table_and_an_unreadable_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"daemon must be a table \(\[daemon\]"):
        _settings(tmp_path, 'daemon = "fast"\n')
    with pytest.raises(ConfigError, match=r"targets.x must be a table"):
        _settings(tmp_path, "[targets]\nx = 1\n")
    with pytest.raises(ConfigError, match="which cannot be read"):
        Settings.from_env({"ORCHESTRATOR_CONFIG": str(tmp_path)})  # a directory


def test_the_readme_capacity_settings_load_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Capacity: budgets, admission and fairness") :]
    calls, budgets = [b.split("```")[0] for b in section.split("```toml\n")[1:3]]
    assert _settings(tmp_path, calls).targets["fastrouter"].max_calls_per_minute == 60
    target = _settings(tmp_path, budgets).targets["openai"]
    assert target.max_batches_in_flight == 20
    assert target.capacity_recheck_seconds == 30.0
    assert target.enqueued_token_budgets == {
        "gpt-4o-mini": 2_000_000,
        "gpt-4o": 900_000,
        "*": 500_000,
    }
    # a model not named gets "*"; a named one its own
    assert target.configured_budget("gpt-4.1") == 500_000
    assert target.configured_budget("gpt-4o") == 900_000


@pytest.mark.parametrize("key", ["max_calls_per_minute", "max_batches_in_flight"])
def test_a_cap_of_zero_is_refused_since_it_would_stop_the_target(tmp_path: Path, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, f"[targets.openai]\n{key} = 0\n")
    assert f"[targets.openai] {key} must be at least 1, not 0; fix it in that file" in str(
        caught.value
    )


def test_a_daemon_serves_the_targets_its_file_declares_and_the_built_in_ones_with_a_key(
    tmp_path: Path,
) -> None:
    config = tmp_path / "orchestrator.toml"
    config.write_text(
        '[targets.groq]\nbase_url = "https://groq.example/v1"\napi_key_env = "GROQ_API_KEY"\n'
    )
    settings = Settings.from_env({"ORCHESTRATOR_CONFIG": str(config), "FASTROUTER_API_KEY": "k"})
    assert settings.served == {"fastrouter", "groq"}  # openai: built in, but no key here
    assert settings.not_served_hint("openai") == "set OPENAI_API_KEY for a daemon to run them"
    assert settings.not_served_hint("nope") == (
        "they wait for a daemon whose configuration has [targets.nope]"
    )
