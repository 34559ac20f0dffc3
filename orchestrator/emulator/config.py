"""The emulator's settings: one frozen value, fixed for the life of an :class:`Emulator`.

Every behaviour that a test or a benchmark may want to vary for a whole run (mode, timings,
failure share, sizes, token budget) is a field here; faults aimed at some calls or some batches
are rules of :class:`~orchestrator.emulator.faults.FaultInjector`. Two emulators built from equal
configs, given equal rules and driven by the same calls produce byte-identical answers.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

Mode = Literal["fastrouter", "openai", "anthropic", "gemini"]
OutputOrder = Literal["input", "shuffled"]

# fastrouter and openai are the core's own wire; the others are adapters in emulator.modes.
MODES: tuple[Mode, ...] = ("fastrouter", "openai", "anthropic", "gemini")
# Fields that a value of 0 leaves to the mode: the mode's own value below, else the core's. An
# explicit value always wins, so a test can hit a limit cheaply in any mode.
_CORE_DEFAULTS: dict[str, int] = {
    "completion_window_seconds": 86_400,  # OpenAI's 24 h
    "max_requests_per_file": 50_000,
    "max_file_bytes": 200 * 1024 * 1024,
}
MODE_DEFAULTS: dict[str, dict[str, int]] = {
    # 100,000 requests and 256 MB per create body.
    "anthropic": {"max_requests_per_file": 100_000, "max_file_bytes": 256 * 1024 * 1024},
    # A Gemini batch expires 48 h after its creation.
    "gemini": {"completion_window_seconds": 172_800},
}
# Gemini's paths are Google's, fixed: `/v1beta/...`, `/upload/v1beta/...`, `/download/v1beta/...`.
GEMINI_ROOT = "/v1beta"


@dataclasses.dataclass(frozen=True)
class EmulatorConfig:
    """How the emulated Batch API looks and behaves.

    Times are virtual seconds on the emulator's injected clock.
    """

    # Which provider to imitate: ids, response shapes, error envelopes and the set of routes.
    mode: Mode = "fastrouter"
    # Prefix of every API path ("/v1", or "" for none). Admin routes live outside it. Gemini mode
    # ignores it: its paths are Google's (see ``api_root``).
    path_prefix: str = "/v1"
    # Seeds ids, fake completions, the failing-line choice and probabilistic faults.
    seed: int = 0
    # Mixed into the ids of files and batches. Empty (in-process tests): the same seed gives the
    # same ids. The command line picks a fresh one per run unless told otherwise, so that a
    # restarted emulator never hands out an id it already gave (a real provider never does).
    instance: str = ""
    # If set, `Authorization: Bearer <api_key>` must match; if None any non-empty token passes.
    api_key: str | None = None
    # A batch stays `validating` this long after creation.
    validation_seconds: float = 5.0
    # Virtual processing rate while `in_progress`.
    rows_per_second: float = 50.0
    # A batch stays `finalizing` this long once every row has been processed.
    finalizing_seconds: float = 5.0
    # `expires_at = created_at + completion_window_seconds`; unfinished work expires then.
    # 0: the mode's own window (24 h; 48 h in gemini mode).
    completion_window_seconds: int = 0
    # `cancelling` lasts this long before `cancelled` (openai mode only has cancel).
    cancel_seconds: float = 5.0
    # Share of lines that fail, chosen deterministically by hash(seed, custom_id).
    line_failure_rate: float = 0.0
    # These custom_ids always fail.
    fail_custom_ids: frozenset[str] = frozenset()
    # Length of the fake assistant message, so benchmarks can make ~1 KB result lines.
    completion_chars: int = 60
    # Length of the fake embedding vectors (a request's `dimensions` overrides it).
    embedding_dimensions: int = 8
    # A batch whose file holds more lines fails validation. 0: the mode's own (50,000; 100,000
    # in anthropic mode).
    max_requests_per_file: int = 0
    # Larger uploads are refused (413 in fastrouter mode, 400 in openai mode). 0: the mode's own
    # (200 MB; 256 MB in anthropic mode, for a create's body).
    max_file_bytes: int = 0
    # Order of lines in result files. Real providers promise no order; "shuffled" proves it.
    output_order: OutputOrder = "input"
    # Enqueued-token budget per model (spec §5.4): a batch whose estimated prompt tokens for a
    # model, added to those of the model's active batches, pass it fails `token_limit_exceeded`.
    # The same limit applies to every model; None means no limit.
    enqueued_token_limit: int | None = None
    # Whether its token_limit_exceeded message states the limit (OpenAI's does; False: a message
    # that names no number, as other providers word it).
    token_limit_states_limit: bool = True
    # Write a batch's result files in the background as soon as it is created, for the course it
    # takes if nothing interrupts it, as a provider has its output ready when it says
    # "completed" (``orchestrator emulator`` does; in-process tests write them when first asked).
    prepare_results: bool = False
    # Where file contents live; None means a private temporary directory removed on close().
    storage_dir: Path | None = None
    # anthropic mode: a batch's `results_url` as a path on the API's own host instead of
    # Anthropic's absolute URL (clients must accept either).
    relative_results_url: bool = False

    def __post_init__(self) -> None:
        _check(self.mode in MODES, f"mode must be one of {MODES}")
        _check(
            self.path_prefix == "" or _is_clean_prefix(self.path_prefix),
            "path_prefix must be empty or start with '/' and not end with '/'",
        )
        _check(self.validation_seconds >= 0, "validation_seconds must be >= 0")
        _check(self.rows_per_second > 0, "rows_per_second must be > 0")
        _check(self.finalizing_seconds >= 0, "finalizing_seconds must be >= 0")
        _check(self.cancel_seconds >= 0, "cancel_seconds must be >= 0")
        own = MODE_DEFAULTS.get(self.mode, {})
        for name, default in _CORE_DEFAULTS.items():
            if getattr(self, name) == 0:
                object.__setattr__(self, name, own.get(name, default))
        _check(self.completion_window_seconds > 0, "completion_window_seconds must be > 0")
        _check(0.0 <= self.line_failure_rate <= 1.0, "line_failure_rate must be in [0, 1]")
        _check(self.completion_chars >= 1, "completion_chars must be >= 1")
        _check(1 <= self.embedding_dimensions <= 4096, "embedding_dimensions must be 1..4096")
        _check(self.max_requests_per_file >= 1, "max_requests_per_file must be >= 1")
        _check(self.max_file_bytes >= 1, "max_file_bytes must be >= 1")
        _check(self.output_order in ("input", "shuffled"), "output_order: 'input'|'shuffled'")
        _check(
            self.enqueued_token_limit is None or self.enqueued_token_limit >= 1,
            "enqueued_token_limit must be >= 1 or None",
        )
        # Accept any collection of ids (a set, a list) but keep the config hashable and immutable.
        object.__setattr__(self, "fail_custom_ids", frozenset(self.fail_custom_ids))
        if self.storage_dir is not None:
            object.__setattr__(self, "storage_dir", Path(self.storage_dir))

    @property
    def is_openai(self) -> bool:
        return self.mode == "openai"

    @property
    def api_root(self) -> str:
        """Where the API's paths start: ``path_prefix``, or ``/v1beta`` in gemini mode."""
        return GEMINI_ROOT if self.mode == "gemini" else self.path_prefix


def _is_clean_prefix(prefix: str) -> bool:
    return prefix.startswith("/") and not prefix.endswith("/")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
