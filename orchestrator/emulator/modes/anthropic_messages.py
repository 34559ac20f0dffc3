"""What a ``/v1/messages`` request of a Message Batch answers: a Messages API ``Message``.

Registered with :func:`orchestrator.emulator.lines.register_endpoint`, so the core writes these
bodies into a batch's output file like any other endpoint's, and fails the lines whose ``params``
Anthropic refuses (it validates them only once the batch runs: they come back ``errored``).

Usage is realistic enough for cost tests (reference §7): ``input_tokens`` is the uncached part of
the prompt; a prompt with ``cache_control`` breakpoints whose prefix reaches
:data:`CACHE_MIN_TOKENS` caches that prefix. Caching in batches is best effort: here the first
request of a batch writes the cache (``cache_creation_input_tokens``, split into 5-minute or
1-hour writes by the breakpoint's ``ttl``) and the others read it (``cache_read_input_tokens``),
except one in :data:`CACHE_MISS_SHARE` that misses and writes again; all of it fixed by the seed.
"""

from __future__ import annotations

from typing import Any

from orchestrator.emulator.ids import hex_id, unit_float
from orchestrator.emulator.lines import (
    Endpoint,
    LineContext,
    LineFailure,
    LineUsage,
    completion_text,
    estimate_tokens,
    register_endpoint,
    text_tokens,
)

MESSAGES = "/v1/messages"
# The smallest prefix Anthropic caches (Sonnet and Opus; Haiku needs 2,048).
CACHE_MIN_TOKENS = 1024
CACHE_MISS_SHARE = 0.1

Json = dict[str, Any]


def check_params(params: Json) -> LineFailure | None:
    """Why Anthropic would refuse these ``params`` in a batch (the model is checked before)."""
    max_tokens = params.get("max_tokens")
    if max_tokens is None:
        return LineFailure("max_tokens: Field required", "max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return LineFailure("max_tokens: Input should be greater than or equal to 1", "max_tokens")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return LineFailure("messages: Field required (at least one message)", "messages")
    if params.get("stream"):
        return LineFailure("stream: Streaming is not supported in the Message Batches API.")
    return None


def message_body(ctx: LineContext, custom_id: object, params: Json) -> tuple[Json, LineUsage]:
    """The ``Message`` for one request, and its tokens for the core's totals."""
    model = params.get("model")
    prompt = estimate_tokens([params.get("tools"), params.get("system"), params.get("messages")])
    text = completion_text(ctx.config, custom_id, params)
    limit = params.get("max_tokens")
    stop_reason = "end_turn"
    if isinstance(limit, int) and text_tokens(text) > limit:
        text, stop_reason = text[: limit * 4], "max_tokens"
    output = text_tokens(text)
    prefix, ttl = cached_prefix(params)
    prefix = min(prefix, prompt) if prefix >= CACHE_MIN_TOKENS else 0
    writes = _writes_cache(ctx, custom_id)
    written = prefix if writes else 0
    read = 0 if writes else prefix
    usage = {
        "input_tokens": prompt - prefix,
        "output_tokens": output,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": written if ttl != "1h" else 0,
            "ephemeral_1h_input_tokens": written if ttl == "1h" else 0,
        },
        "server_tool_use": None,
        "service_tier": "batch",
    }
    message = {
        "id": "msg_" + hex_id(ctx.config.seed, ctx.batch_id, ctx.index, "message"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    name = model if isinstance(model, str) else None
    return message, LineUsage(name, prompt, read, output)


def cached_prefix(params: Json) -> tuple[int, str]:
    """Estimated tokens up to the last ``cache_control`` breakpoint (tools, then system, then
    messages, Anthropic's order), and that breakpoint's ``ttl`` ("5m" unless it says "1h")."""
    tokens = 0
    prefix, ttl = 0, "5m"
    for block in _blocks(params):
        tokens += estimate_tokens(block)
        control = block.get("cache_control")
        if isinstance(control, dict):
            prefix = tokens
            ttl = "1h" if control.get("ttl") == "1h" else "5m"
    return prefix, ttl


def _blocks(params: Json) -> list[Json]:
    blocks: list[Any] = []
    for key in ("tools", "system"):
        value = params.get(key)
        if isinstance(value, list):
            blocks.extend(value)
    messages = params.get("messages")
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            blocks.extend(content)
    return [block for block in blocks if isinstance(block, dict)]


def _writes_cache(ctx: LineContext, custom_id: object) -> bool:
    if ctx.index == 0:
        return True
    return unit_float(ctx.config.seed, "cache-miss", ctx.batch_id, custom_id) < CACHE_MISS_SHARE


register_endpoint(MESSAGES, Endpoint(message_body, check_params))
