"""Scan an uploaded JSONL file once, while it streams to disk, into a compact :class:`FileIndex`.

The index keeps what the batch lifecycle needs later without re-reading the file: the number of
lines, where each starts, a key per custom_id (for per-batch line faults), which lines will fail,
the estimated prompt tokens per model (for the enqueued-token budget), and the validation problems
that make a batch `failed` (spec §9.2). It costs a few bytes per line, never the file itself.
"""

from __future__ import annotations

import dataclasses
from array import array
from typing import Any

import orjson

from orchestrator.emulator.config import EmulatorConfig
from orchestrator.emulator.ids import id_key
from orchestrator.emulator.lines import estimate_tokens, failure_of

KNOWN_PROVIDERS = frozenset({"openai", "anthropic", "google", "gemini"})
MAX_PROBLEMS = 10
_MAX_URLS = 8
_MAX_MODELS = 2


@dataclasses.dataclass(frozen=True)
class Problem:
    """One entry of a failed batch's ``errors.data`` (OpenAI's BatchError)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclasses.dataclass
class FileIndex:
    num_rows: int = 0
    # Byte offset of each line, so results can be produced in any order by seeking.
    offsets: array[int] = dataclasses.field(default_factory=lambda: array("Q"))
    # ids.id_key(custom_id) of each line.
    id_keys: array[int] = dataclasses.field(default_factory=lambda: array("Q"))
    # Sorted indices of the lines that will fail, for request_counts while in progress.
    fail_lines: array[int] = dataclasses.field(default_factory=lambda: array("Q"))
    problems: list[Problem] = dataclasses.field(default_factory=list)
    # First line (1-based) of each distinct `url`, to check it against the batch endpoint.
    urls: dict[str, int] = dataclasses.field(default_factory=dict)
    models: list[str] = dataclasses.field(default_factory=list)
    # Estimated prompt tokens per model (same estimate as the usage in the results).
    prompt_tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    # First line (1-based) that is not a JSON object: the upload itself is refused.
    bad_line: int | None = None

    @property
    def model(self) -> str | None:
        """The model, when every line names the same one."""
        return self.models[0] if len(self.models) == 1 else None


class JsonlScanner:
    """Feed it the file's bytes in chunks of any size; ``finish()`` returns the index."""

    def __init__(self, config: EmulatorConfig) -> None:
        self._config = config
        self._index = FileIndex()
        self._pending = bytearray()
        self._pending_offset = 0
        self._seen_ids: set[str] = set()

    def feed(self, chunk: bytes) -> None:
        lines = chunk.split(b"\n")
        if len(lines) == 1:
            self._pending += chunk
            return
        if self._pending:  # the line the last chunk began
            self._pending += lines[0]
            lines[0] = bytes(self._pending)
            self._pending.clear()
        offset, take = self._pending_offset, self._take_line
        for line in lines[:-1]:
            take(line, offset)
            offset += len(line) + 1
        self._pending_offset = offset
        self._pending += lines[-1]

    def finish(self) -> FileIndex:
        if self._pending:
            self._take_line(bytes(self._pending), self._pending_offset)
            self._pending.clear()
        self._seen_ids.clear()
        return self._index

    def _take_line(self, raw: bytes, offset: int) -> None:
        index = self._index
        if index.bad_line is not None:
            return  # the upload is refused anyway; do not spend time on the rest
        number = index.num_rows + 1
        try:
            line = orjson.loads(raw.rstrip(b"\r"))
        except orjson.JSONDecodeError:
            line = None
        if not isinstance(line, dict):
            index.bad_line = number
            return
        index.num_rows = number
        index.offsets.append(offset)
        index.id_keys.append(id_key(line.get("custom_id")))
        self._validate(line, number)
        failure = failure_of(self._config, line.get("custom_id"), line.get("body"), line.get("url"))
        if failure is not None:
            index.fail_lines.append(number - 1)

    def _validate(self, line: dict[str, Any], number: int) -> None:
        # Each check's usual outcome is tested inline first (a line of a 50,000-line file that
        # passes them all costs no call); anything else takes the check itself.
        custom_id = line.get("custom_id")
        if type(custom_id) is str and custom_id and custom_id not in self._seen_ids:
            self._seen_ids.add(custom_id)
        else:
            self._check_custom_id(custom_id, number)
        method = line.get("method")
        if method is None:
            self._problem(_missing("method", number))
        elif method != "POST":
            self._problem(Problem("invalid_method", "Only POST is supported.", number, "method"))
        url = line.get("url")
        if type(url) is not str or url not in self._index.urls:
            self._note_url(url, number)
        body = line.get("body")
        if not isinstance(body, dict):
            self._problem(_missing("body", number))
        elif isinstance(body.get("model"), str):
            self._note_model(body["model"], body)
        if self._config.mode == "fastrouter":
            provider = line.get("provider")
            if type(provider) is not str or provider not in KNOWN_PROVIDERS:
                self._check_provider(provider, number)

    def _check_custom_id(self, custom_id: object, number: int) -> None:
        if not isinstance(custom_id, str) or not custom_id:
            self._problem(_missing("custom_id", number))
        elif custom_id in self._seen_ids:
            message = (
                "The custom_id for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch."
            )
            self._problem(Problem("duplicate_custom_id", message, number, "custom_id"))
        else:
            self._seen_ids.add(custom_id)

    def _check_provider(self, provider: object, number: int) -> None:
        if provider is None:
            self._problem(_missing("provider", number))
        elif provider not in KNOWN_PROVIDERS:
            message = f"Unknown provider {provider!r}; expected one of {sorted(KNOWN_PROVIDERS)}."
            self._problem(Problem("invalid_provider", message, number, "provider"))

    def _note_url(self, url: object, number: int) -> None:
        if not isinstance(url, str):
            self._problem(_missing("url", number))
        elif url not in self._index.urls and len(self._index.urls) < _MAX_URLS:
            self._index.urls[url] = number

    def _note_model(self, model: str, body: dict[str, Any]) -> None:
        models = self._index.models
        if model not in models and len(models) < _MAX_MODELS:
            models.append(model)
        prompt = body["messages"] if "messages" in body else body.get("input", body.get("contents"))
        tokens = self._index.prompt_tokens
        tokens[model] = tokens.get(model, 0) + estimate_tokens(prompt)

    def _problem(self, problem: Problem) -> None:
        if len(self._index.problems) < MAX_PROBLEMS:
            self._index.problems.append(problem)


def _missing(param: str, number: int) -> Problem:
    return Problem(
        "missing_required_parameter", f"Missing required parameter: '{param}'.", number, param
    )


def batch_problems(index: FileIndex, endpoint: str, config: EmulatorConfig) -> list[Problem]:
    """Everything that makes a batch on this file fail validation (empty when it passes)."""
    problems = list(index.problems)
    for url, number in index.urls.items():
        if url != endpoint:
            message = (
                f"The URL provided for this request ({url}) does not match the batch endpoint."
            )
            problems.append(Problem("invalid_url", message, number, "url"))
    if index.num_rows == 0:
        problems.append(Problem("empty_file", "The batch input file is empty."))
    limit = config.max_requests_per_file
    if index.num_rows > limit:
        message = f"The batch input file is larger than the {limit} maximum number of requests."
        # The line is the first one past the limit, so a client knows where to split.
        problems.append(Problem("too_many_requests", message, limit + 1))
    # In file order, as a reader of errors.data expects; file-wide problems (no line) last.
    problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return problems[:MAX_PROBLEMS]
