"""Which API operation a method and path name, with the ids in the path.

Route names are the vocabulary shared by the ledger and fault rules.
"""

from __future__ import annotations

import dataclasses

UPLOAD_FILE = "upload_file"
CREATE_BATCH = "create_batch"
GET_BATCH = "get_batch"
LIST_BATCHES = "list_batches"
CANCEL_BATCH = "cancel_batch"
FILE_CONTENT = "file_content"
GET_FILE = "get_file"
DELETE_FILE = "delete_file"
# anthropic and gemini modes only (orchestrator.emulator.modes).
DELETE_BATCH = "delete_batch"
UNKNOWN = "unknown"

ROUTE_NAMES: frozenset[str] = frozenset(
    {
        UPLOAD_FILE,
        CREATE_BATCH,
        GET_BATCH,
        LIST_BATCHES,
        CANCEL_BATCH,
        FILE_CONTENT,
        GET_FILE,
        DELETE_FILE,
        DELETE_BATCH,
    }
)
# FastRouter documents only these four; the rest exist in openai mode.
FASTROUTER_ROUTES: frozenset[str] = frozenset({UPLOAD_FILE, CREATE_BATCH, GET_BATCH, FILE_CONTENT})

# (method, path segments) -> route name; "{}" matches one id segment.
_TABLE: dict[tuple[str, tuple[str, ...]], str] = {
    ("POST", ("files",)): UPLOAD_FILE,
    ("GET", ("files", "{}")): GET_FILE,
    ("DELETE", ("files", "{}")): DELETE_FILE,
    ("GET", ("files", "{}", "content")): FILE_CONTENT,
    ("POST", ("batches",)): CREATE_BATCH,
    ("GET", ("batches",)): LIST_BATCHES,
    ("GET", ("batches", "{}")): GET_BATCH,
    ("POST", ("batches", "{}", "cancel")): CANCEL_BATCH,
}


@dataclasses.dataclass(frozen=True)
class Match:
    route: str
    # The id in the path (file id or batch id), if the route has one.
    target: str | None = None


def match(method: str, path: str, prefix: str) -> Match:
    """The route for this request; ``UNKNOWN`` when none fits (including a wrong prefix)."""
    if prefix and not (path == prefix or path.startswith(prefix + "/")):
        return Match(UNKNOWN)
    segments = tuple(part for part in path[len(prefix) :].split("/") if part)
    target = None
    if len(segments) >= 2:
        target = segments[1]
        segments = (segments[0], "{}", *segments[2:])
    route = _TABLE.get((method.upper(), segments), UNKNOWN)
    return Match(route, target if route != UNKNOWN else None)
