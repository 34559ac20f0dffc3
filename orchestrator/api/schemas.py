"""What the Batch API returns, read defensively at the edge.

Unknown fields are kept in ``raw`` and otherwise ignored; ``null`` and ``""`` file ids both mean "no
file" (spec section 2.3); FastRouter's ``batch_id``/``file_id`` stand in for a missing ``id``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from orchestrator.api.errors import ApiDecodeError


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return None


def _require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ApiDecodeError(f"expected a JSON object for {what}, got {type(data).__name__}")
    return data


@dataclasses.dataclass(frozen=True)
class FileObject:
    id: str
    bytes: int | None
    num_rows: int | None
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Any) -> FileObject:
        obj = _require_mapping(data, "a file")
        file_id = _str(obj.get("id")) or _str(obj.get("file_id"))
        if file_id is None:
            raise ApiDecodeError("the file object has no id")
        return cls(
            id=file_id, bytes=_int(obj.get("bytes")), num_rows=_int(obj.get("num_rows")), raw=obj
        )


@dataclasses.dataclass(frozen=True)
class BatchError:
    code: str | None
    message: str | None
    line: int | None
    param: str | None


@dataclasses.dataclass(frozen=True)
class BatchObject:
    id: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    errors: tuple[BatchError, ...]
    request_counts: Mapping[str, Any] | None
    usage: Mapping[str, Any] | None
    metadata: Mapping[str, Any]
    created_at: int | None
    expires_at: int | None
    in_progress_at: int | None
    finalizing_at: int | None
    finished_at: int | None  # completed_at, failed_at, expired_at or cancelled_at
    raw: Mapping[str, Any]

    @classmethod
    def from_json(cls, data: Any) -> BatchObject:
        obj = _require_mapping(data, "a batch")
        batch_id = _str(obj.get("id")) or _str(obj.get("batch_id"))
        status = _str(obj.get("status"))
        if batch_id is None or status is None:
            raise ApiDecodeError("the batch object has no id or no status")
        usage = obj.get("usage")
        counts = obj.get("request_counts")
        metadata = obj.get("metadata")
        finished = [
            _int(obj.get(k)) for k in ("completed_at", "failed_at", "expired_at", "cancelled_at")
        ]
        return cls(
            id=batch_id,
            status=status,
            input_file_id=_str(obj.get("input_file_id")),
            output_file_id=_str(obj.get("output_file_id")),
            error_file_id=_str(obj.get("error_file_id")),
            errors=_errors(obj.get("errors")),
            request_counts=counts if isinstance(counts, Mapping) else None,
            usage=usage if isinstance(usage, Mapping) else None,
            metadata=metadata if isinstance(metadata, Mapping) else {},
            created_at=_int(obj.get("created_at")),
            expires_at=_int(obj.get("expires_at")),
            in_progress_at=_int(obj.get("in_progress_at")),
            finalizing_at=_int(obj.get("finalizing_at")),
            finished_at=next((f for f in finished if f is not None), None),
            raw=obj,
        )

    def error_summary(self) -> str:
        """The provider's validation errors as one readable line."""
        parts = []
        for err in self.errors[:5]:
            where = f" (line {err.line})" if err.line is not None else ""
            parts.append(f"{err.code or 'error'}: {err.message or ''}{where}".strip())
        more = len(self.errors) - 5
        if more > 0:
            parts.append(f"and {more} more")
        return "; ".join(parts) or f"the batch ended {self.status} without an error message"


def _errors(raw: Any) -> tuple[BatchError, ...]:
    data = raw.get("data") if isinstance(raw, Mapping) else raw
    if not isinstance(data, list):
        return ()
    return tuple(
        BatchError(
            code=_str(e.get("code")),
            message=_str(e.get("message")),
            line=_int(e.get("line")),
            param=_str(e.get("param")),
        )
        for e in data
        if isinstance(e, Mapping)
    )


@dataclasses.dataclass(frozen=True)
class BatchPage:
    data: tuple[BatchObject, ...]
    has_more: bool
    last_id: str | None

    @classmethod
    def from_json(cls, data: Any) -> BatchPage:
        obj = _require_mapping(data, "a list of batches")
        items = obj.get("data")
        if not isinstance(items, list):
            raise ApiDecodeError("the list of batches has no data array")
        batches = tuple(BatchObject.from_json(item) for item in items)
        last = _str(obj.get("last_id")) or (batches[-1].id if batches else None)
        return cls(data=batches, has_more=bool(obj.get("has_more")), last_id=last)
