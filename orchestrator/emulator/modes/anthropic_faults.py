"""Faults seen on Anthropic's Message Batches API that the core's kinds do not cover (§9, §10).

The others need nothing new: 529 ``overloaded_error`` and 504 ``timeout_error`` are statuses of
the ``status`` kind on any route; a 429 spend cap is ``status=429`` with
``code="enforced_spend_limit_reached"`` and no ``retry_after``; a lost create answer is
``applied``; a results stream cut short is ``truncate`` on ``file_content`` (the results route).

- :class:`MessageBatchFault` (kind ``message_batch``, marks what ``create_batch`` creates): the
  fresh batch id answers 404 for ``not_found_seconds`` virtual seconds after its creation
  (anthropic-sdk-python #1432), and/or its results lines end in ``\\r\\n`` (``crlf``, the line
  ending that broke chunked JSONL decoders: anthropic-sdk-python PR #1778).
- :class:`NoContentType` (kind ``no_content_type``, a response fault): the answer carries no
  ``Content-Type``, as the results endpoint did before a fix (anthropic-sdk-php #30).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from orchestrator.emulator.faults import register_fault_kind
from orchestrator.emulator.messages import EmuResponse
from orchestrator.emulator.routes import CREATE_BATCH


@dataclasses.dataclass(frozen=True)
class MessageBatchFault:
    """How a marked message batch misbehaves (anthropic mode; other modes ignore it)."""

    kind: ClassVar[str] = "message_batch"
    marks_route: ClassVar[str] = CREATE_BATCH

    # Virtual seconds after creation during which every call naming the batch gets 404 and the
    # list leaves it out, as if the create had not reached the replica that answers.
    not_found_seconds: float = 0.0
    # Results lines end in "\r\n" instead of "\n".
    crlf: bool = False

    def __post_init__(self) -> None:
        if not self.not_found_seconds >= 0:
            raise ValueError("not_found_seconds must be >= 0")
        if self.not_found_seconds == 0 and not self.crlf:
            raise ValueError("a message_batch fault needs not_found_seconds or crlf")

    def apply(self, _ctx: object, proceed: Callable[[], EmuResponse]) -> EmuResponse:
        return proceed()  # marks act when the batch is created

    def merge(self, other: MessageBatchFault) -> MessageBatchFault:
        return MessageBatchFault(
            max(self.not_found_seconds, other.not_found_seconds), self.crlf or other.crlf
        )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.not_found_seconds:
            data["not_found_seconds"] = self.not_found_seconds
        if self.crlf:
            data["crlf"] = True
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MessageBatchFault:
        crlf = data.get("crlf", False)
        if isinstance(crlf, str):
            crlf = crlf.lower() in ("true", "1", "yes")
        return cls(float(data.get("not_found_seconds", 0.0)), bool(crlf))


@dataclasses.dataclass(frozen=True)
class NoContentType:
    """Answer normally, without a ``Content-Type`` header (error answers keep theirs)."""

    kind: ClassVar[str] = "no_content_type"

    def apply(self, _ctx: object, proceed: Callable[[], EmuResponse]) -> EmuResponse:
        response = proceed()
        if response.status < 300:
            response.headers.pop("content-type", None)
        return response

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, _data: Mapping[str, Any]) -> NoContentType:
        return cls()


register_fault_kind(MessageBatchFault.kind, MessageBatchFault.from_json)
register_fault_kind(NoContentType.kind, NoContentType.from_json)
