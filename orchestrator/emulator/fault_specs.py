"""The ``--fault`` flag's compact syntax, turned into the admin endpoint's JSON form.

``ROUTE:key=value,key=value,flag`` where ROUTE is a route name (``upload_file``,
``create_batch``, ``get_batch``, ``list_batches``, ``cancel_batch``, ``file_content``,
``get_file``, ``delete_file``, and ``delete_batch`` in anthropic and gemini modes), ``*`` for any
route, or ``batch`` for a batch fault (it marks the batches ``create_batch`` creates). Keys are the
JSON keys of ``POST /_emulator/faults``, with ``delay`` short for ``delay_seconds``; a bare key
means ``true``. Unlike in Python and JSON, where a rule fires once unless told otherwise,
``times`` defaults to unlimited here: a flag describes the server for the whole run (``times=3``
limits it)::

    create_batch:status=429,retry_after=30,times=3
    get_batch:delay=5,probability=0.1
    file_content:truncate=0.5
    upload_file:not_ready=10
    batch:stuck_finalizing=300
    batch:line_429=0.05,line_500=0.02,missing_lines=0.01,shuffle,times=1
    create_batch:kind=message_batch,not_found_seconds=60   (anthropic: a fresh id answers 404)
    create_batch:kind=gemini,expire                        (gemini: every batch expires)
"""

from __future__ import annotations

import math
from typing import Any

ROUTE_ALIASES = {"batch": "create_batch"}
KEY_ALIASES = {"delay": "delay_seconds"}
_UNLIMITED = frozenset({"inf", "always", "forever", "none", "unlimited"})


def parse_fault_spec(spec: str) -> dict[str, Any]:
    """The rule's JSON form; raises ValueError on a malformed spec (the kind's own checks run
    when the rule is added)."""
    route, sep, options = spec.partition(":")
    route = route.strip()
    if not sep or not route:
        raise ValueError(
            f"fault {spec!r}: expected ROUTE:key=value,... (e.g. get_batch:status=503)"
        )
    data: dict[str, Any] = {"route": ROUTE_ALIASES.get(route, route), "times": None}
    if route == "batch":
        data["kind"] = "batch"
    for item in (part.strip() for part in options.split(",")):
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"fault {spec!r}: empty option name in {item!r}")
        data[KEY_ALIASES.get(key, key)] = _value(raw.strip()) if eq else True
    data["times"] = _times(data["times"])
    return data


def _value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for parse in (int, float):
        try:
            return parse(raw)
        except ValueError:
            pass
    return raw


def _times(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return None
    if isinstance(value, str) and value.lower() in _UNLIMITED:
        return None
    return value
