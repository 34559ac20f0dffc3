"""Settings: from the environment and an optional TOML file. The only reader of ``os.environ``.

Environment variables (all optional but the database URL when running the daemon):

=============================== =============================================================
``ORCHESTRATOR_DATABASE_URL``   PostgreSQL URL (``DATABASE_URL`` is read as a fallback)
``ORCHESTRATOR_CONFIG``         path of a TOML file with more settings and more targets
``FASTROUTER_API_KEY``          the key of the built-in ``fastrouter`` target
``FASTROUTER_BASE_URL``         its API root (default ``https://api.fastrouter.ai/v1``)
``OPENAI_API_KEY``              the key of the built-in ``openai`` target
``OPENAI_BASE_URL``             its API root (default ``https://api.openai.com/v1``)
``ORCHESTRATOR_WORKERS``        size of the worker pool (default 4)
``ORCHESTRATOR_HTTP_ADDR``      ``host:port`` of ``/healthz`` and ``/metrics`` (``off`` disables)
``ORCHESTRATOR_LOG_FORMAT``     ``json``, ``console`` or ``auto`` (console on a TTY)
``ORCHESTRATOR_LOG_LEVEL``      ``info`` by default
=============================== =============================================================

API keys are held in :class:`Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from orchestrator.errors import ConfigError

CreatePolicy = Literal["recreate", "pause", "fail"]

FASTROUTER_ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
OPENAI_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
MB = 1024 * 1024


class Secret:
    """A string that does not show itself in logs, reprs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """One Batch API the daemon talks to, with what it can do and its limits."""

    name: str
    base_url: str
    api_key: Secret | None = None
    flavor: Literal["fastrouter", "openai"] = "fastrouter"
    can_list: bool = False
    can_cancel: bool = False
    can_delete_files: bool = False
    requires_provider: bool = True
    endpoints: tuple[str, ...] = FASTROUTER_ENDPOINTS
    max_requests_per_file: int = 50_000
    max_file_bytes: int = 200 * MB
    # Files are packed to at most (1 - margin) of max_file_bytes: headers, our own estimate of
    # the multipart framing and a provider that counts differently never push a file over.
    size_margin: float = 0.02
    max_custom_id_length: int = 64
    # What to do with a create whose outcome is unknown (timeout, 5xx, crash after sending) on
    # a target that cannot list batches to find out: see README "Guarantees".
    ambiguous_create_policy: CreatePolicy = "recreate"
    timeout_seconds: float = 60.0
    connect_timeout_seconds: float = 10.0
    # A create whose answer was lost may still be carried out by the provider after the client
    # gave up (a gateway that queued it). Before concluding "not created" from the batch list,
    # reconcile waits until timeout_seconds + this margin have passed since the create was sent.
    create_settle_seconds: float = 120.0
    completion_window: str = "24h"
    # A batch the provider failed with token_limit_exceeded (its enqueued-token limit for the
    # model) is created again from the same file after this long (spec 5.4: "later", not "failed").
    token_limit_retry_seconds: float = 900.0
    # What the provider accepts, checked before anything is sent: the per-line ``provider``
    # values (None: any) and the jobs' completion windows (spec 1.1 and 1.2: "24h" only).
    providers: tuple[str, ...] | None = ("openai", "anthropic")
    completion_windows: tuple[str, ...] = ("24h",)
    # Delete the batch's input, output and error files at the provider once its results are
    # committed (retention.delete_provider_files). Only where the target can delete files (the
    # openai preset); elsewhere ignored, with one info line at start-up.
    delete_files_after_ingest: bool = False
    # Capacity (README "Capacity"). The enqueued-token budget per model (prompt tokens of the
    # batches in flight, by our estimate), as a table of model = tokens; "*" applies to every
    # model not named. A limit learned from a token_limit_exceeded error lowers it (never raises
    # it). Empty: no budget until one is learned.
    enqueued_token_budgets: dict[str, int] = dataclasses.field(default_factory=dict)
    # At most this many batches created and not yet finished at the provider, and at most this
    # many API calls in each minute, by all daemons together (None: no cap).
    max_batches_in_flight: int | None = None
    max_calls_per_minute: int | None = None
    # A batch held back for capacity asks again this often.
    capacity_recheck_seconds: float = 30.0

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def file_byte_budget(self) -> int:
        return int(self.max_file_bytes * (1 - self.size_margin))

    def configured_budget(self, model: str | None) -> int | None:
        """The enqueued-token budget the configuration sets for ``model`` (None: none)."""
        budgets = self.enqueued_token_budgets
        return budgets.get(model or "", budgets.get("*"))


PRESETS: dict[str, dict[str, Any]] = {
    "fastrouter": {
        "flavor": "fastrouter",
        "can_list": False,
        "can_cancel": False,
        "can_delete_files": False,
        "requires_provider": True,
        "endpoints": FASTROUTER_ENDPOINTS,
        "ambiguous_create_policy": "recreate",
    },
    "openai": {
        "flavor": "openai",
        "can_list": True,
        "can_cancel": True,
        "can_delete_files": True,
        "requires_provider": False,
        "providers": None,
        "endpoints": OPENAI_ENDPOINTS,
        "ambiguous_create_policy": "recreate",
    },
}


# Where a built-in target's API is unless told otherwise. By the target's name, not its preset: a
# preset is a dialect (what the API can do, the shape of its lines), and a target of your own that
# speaks OpenAI's must never send its key and data to OpenAI's host for want of a base_url.
DEFAULT_BASE_URLS = {
    "fastrouter": "https://api.fastrouter.ai/v1",
    "openai": "https://api.openai.com/v1",
}
NO_BASE_URL = 'a target of your own must say where its API is (base_url = "https://…/v1")'


def make_target(name: str, preset: str, **overrides: Any) -> TargetConfig:
    """A target from a preset (``fastrouter`` or ``openai``) with some fields overridden. Only a
    built-in target may leave out ``base_url`` (it then has its default)."""
    if preset not in PRESETS:
        raise ConfigError(
            f"target {name!r}: unknown preset {preset!r} (use one of {list(PRESETS)})"
        )
    fields = {f.name for f in dataclasses.fields(TargetConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"target {name!r}: unknown setting(s) {sorted(unknown)}")
    base_url = overrides.pop("base_url", None) or DEFAULT_BASE_URLS.get(name)
    if not base_url:
        raise ConfigError(f"target {name!r} has no base_url: {NO_BASE_URL}")
    values = {**PRESETS[preset], **overrides, "base_url": base_url}
    for key in ("endpoints", "providers", "completion_windows"):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return TargetConfig(name=name, **values)


@dataclasses.dataclass(frozen=True)
class DaemonSettings:
    """How the daemon paces itself. Tests and the demo shrink these."""

    workers: int = 4
    tick_seconds: float = 2.0  # fallback poll of the database when no NOTIFY arrives
    lease_seconds: float = 300.0
    poll_initial_seconds: float = 15.0
    poll_factor: float = 1.5
    poll_max_seconds: float = 600.0
    # A new batch is polled sooner: its n-th poll comes at most poll_first_seconds ×
    # poll_first_factor^n after the one before (domain/backoff.py PollSchedule)
    poll_first_seconds: float = 1.0
    poll_first_factor: float = 1.25
    poll_jitter: float = 0.1
    retry_base_seconds: float = 2.0  # 5xx / timeouts: capped exponential backoff with jitter
    retry_max_seconds: float = 300.0
    auth_probe_seconds: float = 60.0  # a paused target is tried again this often
    shutdown_grace_seconds: float = 30.0
    http_addr: str | None = "127.0.0.1:9464"
    max_plan_jobs_per_tick: int = 4
    tmp_dir: str | None = None
    # A batch whose steps keep failing for a passing reason (5xx, timeouts, a file that is "not
    # found" or shorter than the provider's counts, a batch stuck past its expires_at) is shown as
    # stuck after stuck_after_seconds, and given up after patience_seconds (the job gets an error
    # that names the last one; `orchestrator reingest BATCH` collects its results later).
    stuck_after_seconds: float = 3600.0
    patience_seconds: float = 72 * 3600.0
    # How often each target that can list batches is swept for orphans (see README).
    orphan_sweep_seconds: float = 900.0
    # Retention (orchestrator/retention.py, `orchestrator cleanup`): events older than this many
    # days, and worker rows not heard from for this many days (stopped or dead daemons), are
    # deleted every cleanup_seconds, at most cleanup_batch_size rows per statement. 0 or None
    # keeps them all; cleanup_seconds = 0 turns the daemon's timer off. Jobs, requests, batches
    # and results are never deleted by the timer (only by `cleanup --jobs-older-than DAYS`).
    events_retention_days: float | None = 90.0
    workers_retention_days: float | None = 7.0
    cleanup_seconds: float = 3600.0
    cleanup_batch_size: int = 5000


# A daemon paced for a provider whose clock runs fast (the built-in emulator at a time scale): the
# demo and the tests' daemons use these, each changing only what its own clock needs.
FAST_DAEMON = DaemonSettings(
    workers=4,
    tick_seconds=0.2,
    lease_seconds=30.0,
    poll_initial_seconds=0.2,
    poll_factor=1.5,
    poll_max_seconds=1.0,
    poll_first_seconds=0.1,
    poll_jitter=0.1,
    retry_base_seconds=0.1,
    retry_max_seconds=1.0,
    auth_probe_seconds=1.0,
    shutdown_grace_seconds=10.0,
    http_addr=None,
)


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str | None
    targets: Mapping[str, TargetConfig]
    daemon: DaemonSettings = DaemonSettings()
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "info"
    # The targets the TOML file names (``orchestrator check`` fails one of them without a key; a
    # built-in target nobody configured is only "not configured"), and the environment variable
    # each target's key is read from (named in messages, never its value).
    declared_targets: frozenset[str] = frozenset()
    key_env: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def served(self) -> frozenset[str]:
        """The targets this daemon takes work for: every target the file declares (one with no
        key is paused "no key set", its jobs waiting where status shows them) and each built-in
        target whose key is set. A built-in target with neither is not this daemon's: its jobs
        and batches are left to a daemon that has its key (a fleet where only some machines
        hold a provider's key), never sent without one."""
        return frozenset(
            name
            for name, t in self.targets.items()
            if name in self.declared_targets or (t.api_key is not None and t.api_key.reveal())
        )

    def not_served_hint(self, name: str) -> str:
        """What makes a daemon take the jobs of a target it does not serve."""
        if name in self.targets:
            return f"set {self.key_env.get(name, 'its key variable')} for a daemon to run them"
        return f"they wait for a daemon whose configuration has [targets.{name}]"

    def target(self, name: str) -> TargetConfig:
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"unknown target {name!r} (configured: {', '.join(sorted(self.targets))}); "
                "use one of those, or add a [targets.NAME] table to the ORCHESTRATOR_CONFIG file"
            ) from None

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "no database configured: set ORCHESTRATOR_DATABASE_URL "
                "(for example postgresql://user@127.0.0.1:5432/batches)"
            )
        return self.database_url

    def secrets(self) -> list[str]:
        """Every secret value, for the log redactor: the API keys and the database password,
        as it is and as a URL spells it (percent-encoded, as written and as rendered)."""
        found = [t.api_key.reveal() for t in self.targets.values() if t.api_key]
        if self.database_url:
            try:
                written = urllib.parse.urlsplit(self.database_url).password or ""
            except ValueError:
                written = ""
            if written:
                password = urllib.parse.unquote(written)
                forms = (password, written, urllib.parse.quote(password, safe=""))
                found += [form for form in dict.fromkeys(forms) if form]
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        path = env.get("ORCHESTRATOR_CONFIG")
        file_cfg = _read_toml(path)
        where = path or ""
        database_url = (
            env.get("ORCHESTRATOR_DATABASE_URL")
            or env.get("DATABASE_URL")
            or _top(file_cfg, "database_url", str, where)
        )
        from_file = _table(file_cfg, "targets", where)
        for name in from_file:
            _table(from_file, name, where, f"targets.{name}")
        targets, key_env = _targets(env, from_file, where)
        daemon = _daemon(env, _table(file_cfg, "daemon", where), where)
        log_format = env.get("ORCHESTRATOR_LOG_FORMAT") or _top(
            file_cfg, "log_format", str, where, "auto"
        )
        if log_format not in ("auto", "json", "console"):
            raise ConfigError(
                f"{_source('ORCHESTRATOR_LOG_FORMAT', 'log_format', env, where)} must be auto, "
                f"json or console, not {log_format!r}"
            )
        log_level = env.get("ORCHESTRATOR_LOG_LEVEL") or _top(
            file_cfg, "log_level", str, where, "info"
        )
        if log_level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"{_source('ORCHESTRATOR_LOG_LEVEL', 'log_level', env, where)} must be one of "
                f"{', '.join(LOG_LEVELS)}, not {log_level!r}"
            )
        return cls(
            database_url=database_url,
            targets=targets,
            daemon=daemon,
            log_format=typing.cast(Literal["auto", "json", "console"], log_format),
            log_level=log_level.lower(),
            declared_targets=frozenset(from_file),
            key_env=key_env,
        )


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _source(var: str, key: str, env: Mapping[str, str], path: str) -> str:
    """Where a top-level setting came from, for a message: its variable, or the file's key."""
    return var if env.get(var) else f"{path}: {key}"


def _top(cfg: Mapping[str, Any], key: str, kind: type, path: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(
            f"{path}: {key} must be {_EXPECTED[kind]}, not {_said(value)}; fix it in that file"
        )
    return value


def _table(cfg: Mapping[str, Any], key: str, path: str, shown: str | None = None) -> dict[str, Any]:
    value = cfg.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(
            f"{path}: {shown or key} must be a table ([{shown or key}] and its settings below "
            f"it), not {_said(value)}; fix it in that file"
        )
    return value


def _read_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"ORCHESTRATOR_CONFIG points at {path!r}, which does not exist; "
            "fix the path or unset ORCHESTRATOR_CONFIG"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"ORCHESTRATOR_CONFIG points at {path!r}, which cannot be read "
            f"({exc.strerror or exc}); make it a readable TOML file"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix it in that file") from None


# The built-in targets: their preset and the environment variables of their key and API root.
BUILTIN_TARGETS = {
    "fastrouter": ("fastrouter", "FASTROUTER_API_KEY", "FASTROUTER_BASE_URL"),
    "openai": ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
}


def _targets(
    env: Mapping[str, str], from_file: Mapping[str, Any], path: str
) -> tuple[dict[str, TargetConfig], dict[str, str]]:
    """Each field of a target comes from, in order: the environment (a built-in target's
    ``*_BASE_URL`` and ``*_API_KEY``, or the variable named by ``api_key_env``), then the TOML
    file's table for it, then its preset (a built-in target's own, else ``openai``); the
    ``base_url`` of a target of your own comes from its table only, and without one the file is
    refused. Every value from the file is checked against ``TargetConfig``'s annotation. Also
    returns the variable each target's key comes from."""
    builtin = BUILTIN_TARGETS
    targets: dict[str, TargetConfig] = {}
    key_env: dict[str, str] = {}
    for name, (preset, key_var, url_var) in builtin.items():
        overrides: dict[str, Any] = {}
        if env.get(url_var):
            overrides["base_url"] = env[url_var]
        if env.get(key_var):
            overrides["api_key"] = Secret(env[key_var])
        targets[name] = make_target(name, preset, **overrides)
        key_env[name] = key_var
    for name, raw in from_file.items():
        where = f"{path}: [targets.{name}]"
        spec = dict(raw)
        if "api_key" in spec:
            raise ConfigError(
                f"{where} holds api_key: put the key in an environment variable and name it "
                "with api_key_env; keys do not belong in files"
            )
        own: tuple[str, str | None, str | None] = builtin.get(name, ("openai", None, None))
        own_preset, own_key_var, own_url_var = own
        preset = _checked_str(spec.pop("preset", own_preset), where, "preset")
        if preset not in PRESETS:
            raise ConfigError(
                f"{where} preset must be one of {', '.join(PRESETS)}, not {preset!r}; "
                "fix it in that file"
            )
        key_env_name = spec.pop("api_key_env", None)
        key_name: str | None = (
            _checked_str(key_env_name, where, "api_key_env") if key_env_name else own_key_var
        )
        spec = _checked(TargetConfig, spec, where, skip=("name", "api_key"))
        if name not in builtin and not spec.get("base_url"):
            raise ConfigError(f"{where} has no base_url: {NO_BASE_URL}")
        if key_name and env.get(key_name):
            spec["api_key"] = Secret(env[key_name])
        if own_url_var and env.get(own_url_var):
            spec["base_url"] = env[own_url_var]  # the environment wins over the file
        targets[name] = make_target(name, preset, **spec)
        if key_name:
            key_env[name] = key_name
    return targets, key_env


def _daemon(env: Mapping[str, str], from_file: Mapping[str, Any], path: str) -> DaemonSettings:
    values = _checked(DaemonSettings, from_file, f"{path}: [daemon]")
    if env.get("ORCHESTRATOR_WORKERS"):
        values["workers"] = _int(env, "ORCHESTRATOR_WORKERS")
        _in_range(values["workers"], "ORCHESTRATOR_WORKERS", "workers", "the environment variable")
    if "ORCHESTRATOR_HTTP_ADDR" in env:
        values["http_addr"] = _http_addr(env["ORCHESTRATOR_HTTP_ADDR"], "ORCHESTRATOR_HTTP_ADDR")
    for name in ("tick_seconds", "lease_seconds", "poll_initial_seconds", "poll_max_seconds"):
        var = f"ORCHESTRATOR_{name.upper()}"
        if env.get(var):
            values[name] = _float(env, var)
            _in_range(values[name], var, name, "the environment variable")
    return DaemonSettings(**values)


def _int(env: Mapping[str, str], var: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise ConfigError(
            f"{var} must be a whole number, not {env[var]!r}; fix the environment variable"
        ) from None


def _float(env: Mapping[str, str], var: str) -> float:
    try:
        value = float(env[var])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(
            f"{var} must be a number, not {env[var]!r}; fix the environment variable"
        ) from None
    return value


def _http_addr(raw: str, where: str) -> str | None:
    """``host:port`` (port 0 to 65535; no host: 127.0.0.1), or None for ``off``, ``none`` or empty."""
    addr = raw.strip()
    if addr.lower() in ("", "off", "none"):
        return None
    host, colon, port = addr.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{where} must be host:port (for example 127.0.0.1:9464) or off, not {raw!r}; fix it"
        )
    if ":" in host:  # IPv6 ("[::1]:9464"), which the listener does not serve (asgi.listen)
        raise ConfigError(
            f"{where} is an IPv6 address ({raw!r}), which is not served; give an IPv4 one "
            "(127.0.0.1:9464, or 0.0.0.0:9464 for every interface)"
        )
    return addr


# -- checking the values of a file against the dataclasses' annotations ----------------------

_EXPECTED: dict[object, str] = {
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    str: "a string",
    Secret: "a secret, read from an environment variable",
}


class _Mismatch(Exception):
    """A value is not of its field's type; ``expected`` says what it should be."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _checked(
    cls: type, values: Mapping[str, Any], where: str, *, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``values`` (from a TOML table) checked against ``cls``'s annotations: an unknown key, a
    value of another type (a string for a number, a bool for a number, a number for a string...)
    or a negative number is a ConfigError naming the file, the table and the key."""
    hints = {k: v for k, v in field_types(cls).items() if k not in skip}
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(
            f"{where} has unknown setting(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(hints))}"
        )
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key == "http_addr" and isinstance(value, str):
            checked[key] = _http_addr(value, f"{where} http_addr")
            continue
        try:
            checked[key] = check_type(value, hints[key])
        except _Mismatch as exc:
            raise ConfigError(f"{where} {key} must be {exc.expected}, not {_said(value)}; " + (
                f"write {key} = {value.strip()} (without quotes)"
                if isinstance(value, str) and exc.expected in ("a whole number", "a number")
                and _is_number(value, exc.expected)
                else "fix it in that file"
            )) from None  # fmt: skip
        _in_range(checked[key], where, key, "it in that file")
    return checked


_ACCEPTS: dict[object, typing.Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
    str: lambda v: isinstance(v, str),
    Secret: lambda v: isinstance(v, Secret),
}


def check_type(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` describes (an int for a float field becomes a float, a list
    a tuple); raises _Mismatch. Every annotation the settings dataclasses use is handled (a test
    checks it), so a new field is checked the day it is added."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        if value is None and len(options) < len(args):
            return None
        if len(options) != 1:
            raise TypeError(f"no check for {hint!r}")
        return check_type(value, options[0])
    if origin is Literal:
        if value not in args:
            raise _Mismatch("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin is dict and args == (str, int):
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and _ACCEPTS[int](v) and v >= 1 for k, v in value.items()
        ):
            raise _Mismatch("a table of names and whole numbers of at least 1")
        return dict(value)
    if origin is tuple and args == (str, Ellipsis):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise _Mismatch("a list of strings")
        return tuple(value)
    accepts = _ACCEPTS.get(hint)
    if accepts is None:
        raise TypeError(f"no check for {hint!r}")
    if not accepts(value):
        raise _Mismatch(_EXPECTED[hint])
    return float(value) if hint is float else value


# Settings where 0 makes no sense (no worker; a cap that lets nothing through: leave it unset).
AT_LEAST_ONE = ("workers", "max_batches_in_flight", "max_calls_per_minute", "cleanup_batch_size")


def _in_range(value: Any, where: str, key: str, fix: str) -> None:
    """No setting is a negative number; those of AT_LEAST_ONE are at least 1."""
    least = 1 if key in AT_LEAST_ONE else 0
    if isinstance(value, int | float) and not isinstance(value, bool) and value < least:
        name = "" if where.startswith("ORCHESTRATOR_") else f" {key}"
        raise ConfigError(f"{where}{name} must be at least {least}, not {value}; fix {fix}")


def _said(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _is_number(text: str, expected: str) -> bool:
    try:
        (int if expected == "a whole number" else float)(text.strip())
    except ValueError:
        return False
    return True


def _checked_str(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(
            f"{where} {key} must be a string, not {_said(value)}; fix it in that file"
        )
    return value
