"""The one-line errors a person reads when a setting is wrong: each names the file, the table and
the key (or the environment variable), says what the value should be, and what to do. Asserted
whole: the message is the promise."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from orchestrator.config import DaemonSettings, Settings, TargetConfig, field_types
from orchestrator.errors import ConfigError


def _error(tmp_path: Path, toml: str, **env: str) -> str:
    path = tmp_path / "orchestrator.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ORCHESTRATOR_CONFIG": str(path), **env})
    return str(caught.value)


def _known(cls: type, *skip: str) -> str:
    """The settings a table accepts, as the message lists them: every field, alphabetically."""
    return ", ".join(sorted(set(field_types(cls)) - set(skip)))


TARGET_KNOWN = _known(TargetConfig, "name", "api_key")  # a target's name and key never in files
DAEMON_KNOWN = _known(DaemonSettings)


@pytest.mark.parametrize(
    ("toml", "says"),
    [
        # top-level settings and tables
        ("database_url = 5\n", "database_url must be a string, not 5; fix it in that file"),
        ("log_format = 5\n", "log_format must be a string, not 5; fix it in that file"),
        ("log_level = true\n", "log_level must be a string, not true; fix it in that file"),
        ('log_format = "xml"\n', "log_format must be auto, json or console, not 'xml'"),
        ('log_level = "verbose"\n',
         "log_level must be one of debug, info, warning, error, critical, not 'verbose'"),
        ("targets = 5\n",
         "targets must be a table ([targets] and its settings below it), not 5; fix it in that file"),
        ("[targets]\nx = 1\n",
         "targets.x must be a table ([targets.x] and its settings below it), not 1; "
         "fix it in that file"),
        ('daemon = "fast"\n',
         "daemon must be a table ([daemon] and its settings below it), not the string 'fast'; "
         "fix it in that file"),
        # a target's table
        ('[targets.x]\napi_key = "sk-in-the-file"\n',
         "[targets.x] holds api_key: put the key in an environment variable and name it with "
         "api_key_env; keys do not belong in files"),
        ("[targets.x]\npreset = 5\n",
         "[targets.x] preset must be a string, not 5; fix it in that file"),
        ('[targets.x]\npreset = "azure"\n',
         "[targets.x] preset must be one of fastrouter, openai, not 'azure'; fix it in that file"),
        ("[targets.x]\napi_key_env = 5\n",
         "[targets.x] api_key_env must be a string, not 5; fix it in that file"),
        ('[targets.x]\nname = "y"\n',
         f"[targets.x] has unknown setting(s) name; known: {TARGET_KNOWN}"),
        ("[targets.x]\ncolour = 1\nflavour = 2\n",
         f"[targets.x] has unknown setting(s) colour, flavour; known: {TARGET_KNOWN}"),
        ('[targets.x]\nflavor = "azure"\n',
         "[targets.x] flavor must be one of 'fastrouter', 'openai', not the string 'azure'; "
         "fix it in that file"),
        ("[targets.x]\nendpoints = [1, 2]\n",
         "[targets.x] endpoints must be a list of strings, not a list; fix it in that file"),
        ('[targets.openai]\nenqueued_token_budgets = { "gpt-4o" = 0 }\n',
         "[targets.openai] enqueued_token_budgets must be a table of names and whole numbers of "
         "at least 1, not a table; fix it in that file"),
        ("[targets.openai]\nmax_calls_per_minute = 0\n",
         "[targets.openai] max_calls_per_minute must be at least 1, not 0; fix it in that file"),
        ("[targets.x]\ntimeout_seconds = -1.5\n",
         "[targets.x] timeout_seconds must be at least 0, not -1.5; fix it in that file"),
        # the [daemon] table
        ("[daemon]\nbogus = 1\n", f"[daemon] has unknown setting(s) bogus; known: {DAEMON_KNOWN}"),
        ('[daemon]\nhttp_addr = "9464"\n',
         "[daemon] http_addr must be host:port (for example 127.0.0.1:9464) or off, not '9464'; "
         "fix it"),
        ("[daemon]\nworkers = 1.5\n",
         "[daemon] workers must be a whole number, not 1.5; fix it in that file"),
        ("[daemon]\nworkers = 0\n", "[daemon] workers must be at least 1, not 0; fix it in that file"),
        # (a cleanup that may delete no row per statement would fail at every run of its timer)
        ("[daemon]\ncleanup_batch_size = 0\n",
         "[daemon] cleanup_batch_size must be at least 1, not 0; fix it in that file"),
    ],
)  # fmt: skip
def test_config_file_error_names_the_file_the_table_and_the_key(
    tmp_path: Path, toml: str, says: str
) -> None:
    assert _error(tmp_path, toml) == f"{tmp_path / 'orchestrator.toml'}: {says}"


@pytest.mark.parametrize(
    ("toml", "advice"),
    [
        # a number in quotes: say how to write it, for whole numbers and for numbers
        ('[daemon]\nworkers = "50000"\n',
         "workers must be a whole number, not the string '50000'; "
         "write workers = 50000 (without quotes)"),
        ('[daemon]\ntick_seconds = " 1.5"\n',
         "tick_seconds must be a number, not the string ' 1.5'; "
         "write tick_seconds = 1.5 (without quotes)"),
        # a string that is no number of that kind: no such advice
        ('[daemon]\nworkers = "1.5"\n',
         "workers must be a whole number, not the string '1.5'; fix it in that file"),
        ('[daemon]\nworkers = "four"\n',
         "workers must be a whole number, not the string 'four'; fix it in that file"),
        ('[daemon]\ntick_seconds = "soon"\n',
         "tick_seconds must be a number, not the string 'soon'; fix it in that file"),
    ],
)  # fmt: skip
def test_config_file_number_in_quotes_is_refused_saying_how_to_write_it(
    tmp_path: Path, toml: str, advice: str
) -> None:
    assert _error(tmp_path, toml) == f"{tmp_path / 'orchestrator.toml'}: [daemon] {advice}"


def test_config_file_that_is_missing_unreadable_or_not_toml_says_what_to_do(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ORCHESTRATOR_CONFIG": str(missing)})
    assert str(caught.value) == (
        f"ORCHESTRATOR_CONFIG points at {str(missing)!r}, which does not exist; "
        "fix the path or unset ORCHESTRATOR_CONFIG"
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ORCHESTRATOR_CONFIG": str(tmp_path)})  # a directory
    assert str(caught.value) == (
        f"ORCHESTRATOR_CONFIG points at {str(tmp_path)!r}, which cannot be read "
        "(Is a directory); make it a readable TOML file"
    )
    broken = "workers = [\n"
    with pytest.raises(tomllib.TOMLDecodeError) as parser:
        tomllib.loads(broken)
    assert _error(tmp_path, broken) == (
        f"{tmp_path / 'orchestrator.toml'}: not valid TOML ({parser.value}); fix it in that file"
    )


def test_settings_target_unknown_name_lists_the_configured_ones(tmp_path: Path) -> None:
    path = tmp_path / "orchestrator.toml"
    path.write_text('[targets.groq]\nbase_url = "https://api.groq.com/openai/v1"\n')
    settings = Settings.from_env({"ORCHESTRATOR_CONFIG": str(path)})
    with pytest.raises(ConfigError) as caught:
        settings.target("azure")
    assert str(caught.value) == (
        "unknown target 'azure' (configured: fastrouter, groq, openai); use one of those, "
        "or add a [targets.NAME] table to the ORCHESTRATOR_CONFIG file"
    )


def test_settings_require_database_url_says_which_variable_to_set() -> None:
    url = "postgresql://batch@db:5432/batches"
    assert Settings.from_env({"DATABASE_URL": url}).require_database_url() == url
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}).require_database_url()
    assert str(caught.value) == (
        "no database configured: set ORCHESTRATOR_DATABASE_URL "
        "(for example postgresql://user@127.0.0.1:5432/batches)"
    )
