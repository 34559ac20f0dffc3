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

import contextlib
import dataclasses
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

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
    # What the provider accepts, checked before anything is sent: the per-line ``provider``
    # values (None: any) and the jobs' completion windows (spec 1.1 and 1.2: "24h" only).
    providers: tuple[str, ...] | None = ("openai", "anthropic")
    completion_windows: tuple[str, ...] = ("24h",)
    # Delete the batch's input, output and error files at the provider once its results are
    # committed (retention.delete_provider_files). Only where the target can delete files (the
    # openai preset); elsewhere ignored, with one info line at start-up.
    delete_files_after_ingest: bool = False

    @property
    def file_byte_budget(self) -> int:
        return int(self.max_file_bytes * (1 - self.size_margin))


PRESETS: dict[str, dict[str, Any]] = {
    "fastrouter": {
        "flavor": "fastrouter",
        "base_url": "https://api.fastrouter.ai/v1",
        "can_list": False,
        "can_cancel": False,
        "can_delete_files": False,
        "requires_provider": True,
        "endpoints": FASTROUTER_ENDPOINTS,
        "ambiguous_create_policy": "recreate",
    },
    "openai": {
        "flavor": "openai",
        "base_url": "https://api.openai.com/v1",
        "can_list": True,
        "can_cancel": True,
        "can_delete_files": True,
        "requires_provider": False,
        "providers": None,
        "endpoints": OPENAI_ENDPOINTS,
        "ambiguous_create_policy": "recreate",
    },
}


def make_target(name: str, preset: str, **overrides: Any) -> TargetConfig:
    """A target from a preset (``fastrouter`` or ``openai``) with some fields overridden."""
    if preset not in PRESETS:
        raise ConfigError(
            f"target {name!r}: unknown preset {preset!r} (use one of {list(PRESETS)})"
        )
    fields = {f.name for f in dataclasses.fields(TargetConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ConfigError(f"target {name!r}: unknown setting(s) {sorted(unknown)}")
    values = {**PRESETS[preset], **overrides}
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

    def target(self, name: str) -> TargetConfig:
        try:
            return self.targets[name]
        except KeyError:
            raise ConfigError(
                f"unknown target {name!r}; configured: {sorted(self.targets)}"
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
            with contextlib.suppress(ValueError, sa.exc.ArgumentError):
                password = sa.make_url(self.database_url).password
                if password:
                    written = urllib.parse.urlsplit(self.database_url).password or ""
                    forms = (str(password), written, urllib.parse.quote(str(password), safe=""))
                    found += [form for form in dict.fromkeys(forms) if form]
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        file_cfg = _read_toml(env.get("ORCHESTRATOR_CONFIG"))
        database_url = (
            env.get("ORCHESTRATOR_DATABASE_URL")
            or env.get("DATABASE_URL")
            or file_cfg.get("database_url")
        )
        targets = _targets(env, file_cfg.get("targets", {}))
        daemon = _daemon(env, file_cfg.get("daemon", {}))
        log_format = env.get("ORCHESTRATOR_LOG_FORMAT", file_cfg.get("log_format", "auto"))
        if log_format not in ("auto", "json", "console"):
            raise ConfigError(
                f"ORCHESTRATOR_LOG_FORMAT must be auto, json or console, not {log_format!r}"
            )
        return cls(
            database_url=database_url,
            targets=targets,
            daemon=daemon,
            log_format=log_format,
            log_level=env.get("ORCHESTRATOR_LOG_LEVEL", file_cfg.get("log_level", "info")),
        )


def _read_toml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"ORCHESTRATOR_CONFIG points at {path!r}, which does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# The built-in targets: their preset and the environment variables of their key and API root.
BUILTIN_TARGETS = {
    "fastrouter": ("fastrouter", "FASTROUTER_API_KEY", "FASTROUTER_BASE_URL"),
    "openai": ("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"),
}


def _targets(env: Mapping[str, str], from_file: Mapping[str, Any]) -> dict[str, TargetConfig]:
    """Each field of a target comes from, in order: the environment (a built-in target's
    ``*_BASE_URL`` and ``*_API_KEY``, or the variable named by ``api_key_env``), then the TOML
    file's table for it, then its preset (a built-in target's own, else ``openai``)."""
    builtin = BUILTIN_TARGETS
    targets: dict[str, TargetConfig] = {}
    for name, (preset, key_var, url_var) in builtin.items():
        overrides: dict[str, Any] = {}
        if env.get(url_var):
            overrides["base_url"] = env[url_var]
        if env.get(key_var):
            overrides["api_key"] = Secret(env[key_var])
        targets[name] = make_target(name, preset, **overrides)
    for name, raw in from_file.items():
        spec = dict(raw)
        if "api_key" in spec:
            raise ConfigError(
                f"target {name!r}: put the key in an environment variable and name it with "
                "api_key_env; keys do not belong in files"
            )
        own: tuple[str, str | None, str | None] = builtin.get(name, ("openai", None, None))
        own_preset, own_key_var, own_url_var = own
        preset = spec.pop("preset", own_preset)
        key_env: str | None = spec.pop("api_key_env", None) or own_key_var
        if key_env and env.get(key_env):
            spec["api_key"] = Secret(env[key_env])
        if own_url_var and env.get(own_url_var):
            spec["base_url"] = env[own_url_var]  # the environment wins over the file
        targets[name] = make_target(name, preset, **spec)
    return targets


def _daemon(env: Mapping[str, str], from_file: Mapping[str, Any]) -> DaemonSettings:
    fields = {f.name: f for f in dataclasses.fields(DaemonSettings)}
    unknown = set(from_file) - set(fields)
    if unknown:
        raise ConfigError(f"[daemon]: unknown setting(s) {sorted(unknown)}")
    values: dict[str, Any] = dict(from_file)
    if env.get("ORCHESTRATOR_WORKERS"):
        values["workers"] = _int(env, "ORCHESTRATOR_WORKERS")
    if "ORCHESTRATOR_HTTP_ADDR" in env:
        addr = env["ORCHESTRATOR_HTTP_ADDR"].strip()
        values["http_addr"] = None if addr in ("", "off", "none") else addr
    for name in ("tick_seconds", "lease_seconds", "poll_initial_seconds", "poll_max_seconds"):
        var = f"ORCHESTRATOR_{name.upper()}"
        if env.get(var):
            values[name] = _float(env, var)
    settings = DaemonSettings(**values)
    if settings.workers < 1:
        raise ConfigError("workers must be at least 1")
    return settings


def _int(env: Mapping[str, str], var: str) -> int:
    try:
        return int(env[var])
    except ValueError:
        raise ConfigError(f"{var} must be a whole number, not {env[var]!r}") from None


def _float(env: Mapping[str, str], var: str) -> float:
    try:
        return float(env[var])
    except ValueError:
        raise ConfigError(f"{var} must be a number, not {env[var]!r}") from None
