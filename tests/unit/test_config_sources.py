"""Where each setting comes from (the environment over the TOML file over the default), what a
value may be, and that a key never shows itself: the promises of README "Configuration"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.config import (
    FASTROUTER_ENDPOINTS,
    Secret,
    Settings,
    check_type,
    make_target,
)
from orchestrator.errors import ConfigError

URL_ENV = "postgresql://env@db:5432/batches"
URL_FALLBACK = "postgresql://fallback@db:5432/batches"
URL_FILE = "postgresql://file@db:5432/batches"


def _settings(tmp_path: Path, toml: str | None, **env: str) -> Settings:
    if toml is None:
        return Settings.from_env(env)
    path = tmp_path / "orchestrator.toml"
    path.write_text(toml)
    return Settings.from_env({"ORCHESTRATOR_CONFIG": str(path), **env})


@pytest.mark.parametrize(
    ("env", "toml", "expected"),
    [
        ({"ORCHESTRATOR_DATABASE_URL": URL_ENV, "DATABASE_URL": URL_FALLBACK},
         f'database_url = "{URL_FILE}"\n', URL_ENV),
        ({"DATABASE_URL": URL_FALLBACK}, f'database_url = "{URL_FILE}"\n', URL_FALLBACK),
        ({"DATABASE_URL": URL_FALLBACK}, None, URL_FALLBACK),
        ({}, f'database_url = "{URL_FILE}"\n', URL_FILE),
        ({}, None, None),
    ],
)  # fmt: skip
def test_settings_database_url_environment_then_fallback_variable_then_file(
    tmp_path: Path, env: dict[str, str], toml: str | None, expected: str | None
) -> None:
    assert _settings(tmp_path, toml, **env).database_url == expected


@pytest.mark.parametrize(
    ("env", "toml", "log_format", "log_level"),
    [
        ({}, None, "auto", "info"),
        ({}, 'log_format = "json"\nlog_level = "WARNING"\n', "json", "warning"),
        ({"ORCHESTRATOR_LOG_FORMAT": "console", "ORCHESTRATOR_LOG_LEVEL": "Error"},
         'log_format = "json"\nlog_level = "debug"\n', "console", "error"),
        ({"ORCHESTRATOR_LOG_FORMAT": "json", "ORCHESTRATOR_LOG_LEVEL": "critical"}, None,
         "json", "critical"),
    ],
)  # fmt: skip
def test_settings_logging_environment_over_file_over_default(
    tmp_path: Path, env: dict[str, str], toml: str | None, log_format: str, log_level: str
) -> None:
    settings = _settings(tmp_path, toml, **env)
    assert (settings.log_format, settings.log_level) == (log_format, log_level)


DAEMON_FILE = (
    "[daemon]\nworkers = 2\ntick_seconds = 9\nlease_seconds = 99\npoll_initial_seconds = 19\n"
    'poll_max_seconds = 999\nhttp_addr = "10.0.0.1:9000"\n'
)


@pytest.mark.parametrize(
    ("var", "raw", "field", "value"),
    [
        ("ORCHESTRATOR_WORKERS", "16", "workers", 16),
        ("ORCHESTRATOR_WORKERS", "1", "workers", 1),
        ("ORCHESTRATOR_TICK_SECONDS", "0.5", "tick_seconds", 0.5),
        ("ORCHESTRATOR_LEASE_SECONDS", "45", "lease_seconds", 45.0),
        ("ORCHESTRATOR_LEASE_SECONDS", "0", "lease_seconds", 0.0),
        ("ORCHESTRATOR_POLL_INITIAL_SECONDS", "3", "poll_initial_seconds", 3.0),
        ("ORCHESTRATOR_POLL_MAX_SECONDS", "120", "poll_max_seconds", 120.0),
        ("ORCHESTRATOR_HTTP_ADDR", "0.0.0.0:9100", "http_addr", "0.0.0.0:9100"),
        ("ORCHESTRATOR_HTTP_ADDR", "off", "http_addr", None),
    ],
)
def test_daemon_setting_from_the_environment_wins_over_the_file(
    tmp_path: Path, var: str, raw: str, field: str, value: Any
) -> None:
    from_file = _settings(tmp_path, DAEMON_FILE).daemon
    daemon = _settings(tmp_path, DAEMON_FILE, **{var: raw}).daemon
    assert getattr(daemon, field) == value
    assert getattr(from_file, field) != value  # the file said something else
    # and only that setting moves
    others = {k: v for k, v in vars(from_file).items() if k != field}
    assert {k: v for k, v in vars(daemon).items() if k != field} == others


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:9464", "127.0.0.1:9464"),
        ("  0.0.0.0:9100 ", "0.0.0.0:9100"),
        (":9464", ":9464"),  # no host: the daemon binds 127.0.0.1
        ("metrics.internal:0", "metrics.internal:0"),  # port 0: any free port
        ("h:65535", "h:65535"),
        ("off", None),
        ("OFF", None),
        ("none", None),
        ("None", None),
        ("", None),
        ("   ", None),
    ],
)
def test_http_addr_is_host_port_or_off(tmp_path: Path, raw: str, expected: str | None) -> None:
    # the same rule for the environment variable and for the file's [daemon] http_addr
    assert Settings.from_env({"ORCHESTRATOR_HTTP_ADDR": raw}).daemon.http_addr == expected
    from_file = _settings(tmp_path, f'[daemon]\nhttp_addr = "{raw}"\nworkers = 3\n').daemon
    assert (from_file.http_addr, from_file.workers) == (expected, 3)


@pytest.mark.parametrize("raw", ["9464", "h:65536", "h:99999", "h:abc", "h:", "h:-1"])
def test_http_addr_that_is_not_host_port_is_refused(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ORCHESTRATOR_HTTP_ADDR": raw})
    assert str(caught.value) == (
        "ORCHESTRATOR_HTTP_ADDR must be host:port (for example 127.0.0.1:9464) or off, "
        f"not {raw!r}; fix it"
    )


@pytest.mark.parametrize("raw", ["[::1]:9464", "::1:9464", "[::]:0"])
def test_http_addr_in_ipv6_is_refused_as_the_listener_cannot_serve_it(raw: str) -> None:
    # (found testing config's mutants: it passed the check, then could never be served)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ORCHESTRATOR_HTTP_ADDR": raw})
    assert str(caught.value) == (
        f"ORCHESTRATOR_HTTP_ADDR is an IPv6 address ({raw!r}), which is not served; give an "
        "IPv4 one (127.0.0.1:9464, or 0.0.0.0:9464 for every interface)"
    )


@pytest.mark.parametrize(
    ("toml", "table", "expected"),
    [
        # 0 turns the cleanup timer off and keeps every event (README "Retention")
        ("[daemon]\nworkers = 1\ncleanup_seconds = 0\nevents_retention_days = 0\n", "daemon",
         {"workers": 1, "cleanup_seconds": 0.0, "events_retention_days": 0.0}),
        ("[targets.openai]\nmax_calls_per_minute = 1\nmax_batches_in_flight = 1\n"
         'enqueued_token_budgets = { "gpt-4o" = 1 }\ntimeout_seconds = 0\n', "openai",
         {"max_calls_per_minute": 1, "max_batches_in_flight": 1,
          "enqueued_token_budgets": {"gpt-4o": 1}, "timeout_seconds": 0.0}),
    ],
)  # fmt: skip
def test_config_file_values_at_their_lowest_are_taken(
    tmp_path: Path, toml: str, table: str, expected: dict[str, Any]
) -> None:
    settings = _settings(tmp_path, toml)
    taken = settings.daemon if table == "daemon" else settings.target(table)
    assert {key: getattr(taken, key) for key in expected} == expected


def test_config_file_target_from_the_readme_takes_its_preset_and_the_key_it_names(
    tmp_path: Path,
) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Configuration") :]
    example = section.split("```toml\n")[1].split("```")[0]
    assert "[targets.groq]" in example
    settings = _settings(tmp_path, example, GROQ_API_KEY="gsk-0123456789")
    groq = settings.target("groq")
    assert groq.name == "groq"
    assert groq.base_url == "https://api.groq.com/openai/v1"
    assert groq.api_key == Secret("gsk-0123456789")
    assert (groq.flavor, groq.can_list, groq.requires_provider) == ("openai", True, False)
    assert settings.key_env == {
        "fastrouter": "FASTROUTER_API_KEY",
        "openai": "OPENAI_API_KEY",
        "groq": "GROQ_API_KEY",
    }
    assert settings.declared_targets == {"groq"}
    # without the variable: no key, and the variable is still the one named in messages
    unset = _settings(tmp_path, example)
    assert unset.target("groq").api_key is None
    assert unset.key_env["groq"] == "GROQ_API_KEY"


def test_config_file_target_preset_and_key_variable_override_a_built_in_ones(
    tmp_path: Path,
) -> None:
    toml = (
        '[targets.openai]\napi_key_env = "AZURE_OPENAI_KEY"\n'
        '[targets.local]\npreset = "fastrouter"\nbase_url = "http://local/v1"\n'
    )
    settings = _settings(
        tmp_path, toml, OPENAI_API_KEY="sk-openai-unused", AZURE_OPENAI_KEY="az-0123456789"
    )
    openai, local = settings.target("openai"), settings.target("local")
    assert openai.api_key == Secret("az-0123456789")
    assert (local.name, local.flavor, local.endpoints) == (
        "local",
        "fastrouter",
        FASTROUTER_ENDPOINTS,
    )
    assert local.api_key is None
    # a target with no key variable of its own and none named has none in key_env
    assert settings.key_env == {"fastrouter": "FASTROUTER_API_KEY", "openai": "AZURE_OPENAI_KEY"}


def test_settings_built_in_targets_are_named_and_keyed_from_the_environment() -> None:
    settings = Settings.from_env({"FASTROUTER_API_KEY": "fr-0123456789"})
    assert [(t.name, t.flavor) for t in settings.targets.values()] == [
        ("fastrouter", "fastrouter"),
        ("openai", "openai"),
    ]
    assert settings.target("fastrouter").api_key == Secret("fr-0123456789")
    assert settings.target("openai").api_key is None
    assert settings.key_env == {"fastrouter": "FASTROUTER_API_KEY", "openai": "OPENAI_API_KEY"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app@db:5432/b", ["sk-key-0123456789"]),  # no password
        ("postgresql://app:pw@[db:5432/b", ["sk-key-0123456789"]),  # a URL that cannot be split
        ("postgresql://app:pw-9f8e7d6c@db:5432/b", ["sk-key-0123456789", "pw-9f8e7d6c"]),
    ],
)
def test_settings_secrets_are_the_keys_and_the_database_password(
    url: str, expected: list[str]
) -> None:
    settings = Settings.from_env(
        {"ORCHESTRATOR_DATABASE_URL": url, "OPENAI_API_KEY": "sk-key-0123456789"}
    )
    assert settings.secrets() == expected


def test_secret_never_shows_its_value_and_compares_by_it() -> None:
    key = Secret("sk-live-0123456789")
    assert repr(key) == str(key) == f"{key}" == "Secret('**********')"
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-live-0123456789"})
    assert "0123456789" not in repr(settings)
    assert "api_key=Secret('**********')" in repr(settings.target("openai"))
    assert key.reveal() == "sk-live-0123456789"
    assert key == Secret("sk-live-0123456789")
    assert key != Secret("sk-live-other")
    assert key != "sk-live-0123456789"  # never equal to its plain value
    assert {key, Secret("sk-live-0123456789")} == {key}  # equal secrets are one key


def test_make_target_takes_lists_as_tuples_and_refuses_unknown_presets_and_settings() -> None:
    target = make_target(
        "extra",
        "openai",
        base_url="https://extra.example/v1",
        endpoints=["/v1/embeddings"],
        providers=["openai"],
        completion_windows=["24h"],
    )
    assert target.name == "extra"
    assert target.endpoints == ("/v1/embeddings",)
    assert target.providers == ("openai",)
    assert target.completion_windows == ("24h",)
    hash(target)  # a target is a key of the daemon's maps
    with pytest.raises(ConfigError) as caught:
        make_target("extra", "azure")
    assert str(caught.value) == (
        "target 'extra': unknown preset 'azure' (use one of ['fastrouter', 'openai'])"
    )
    with pytest.raises(ConfigError) as caught:
        make_target("extra", "openai", colour="red", flavour="sweet")
    assert str(caught.value) == "target 'extra': unknown setting(s) ['colour', 'flavour']"


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (None, int | str),
        (1, int | str),
        ("x", bytes),
        ({"a": "b"}, dict[str, str]),
        ([1], tuple[int, ...]),
        (["a"], list[str]),
    ],
)
def test_check_type_refuses_an_annotation_it_has_no_check_for(value: Any, hint: Any) -> None:
    # A field added with such a type fails loudly, naming it, instead of passing unchecked
    with pytest.raises(TypeError) as caught:
        check_type(value, hint)
    assert str(caught.value) == f"no check for {hint!r}"
