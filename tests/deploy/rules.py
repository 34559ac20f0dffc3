"""The alert rules of deploy/prometheus/alerts.yml, read without a YAML library.

The file keeps to a simple shape (a list of ``- alert:`` items whose ``expr`` is on one line or a
folded ``>-`` block); ``test_monitoring.py`` checks that this reader finds as many rules as
``promtool check rules`` does, so a rule it could not read fails a test rather than being skipped.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


@dataclasses.dataclass(frozen=True)
class Rule:
    alert: str
    expr: str
    text: str  # the rule's lines, as written


def rules(path: Path = ALERTS) -> list[Rule]:
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"\s*- alert:", line)]
    found = []
    for n, start in enumerate(starts):
        block = lines[start : starts[n + 1] if n + 1 < len(starts) else len(lines)]
        alert = block[0].split("alert:", 1)[1].strip()
        found.append(Rule(alert, _expr(block), "\n".join(block)))
    return found


def _expr(block: list[str]) -> str:
    for i, line in enumerate(block):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest not in (">-", ">", "|", "|-"):
            return rest
        folded = []
        for following in block[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            folded.append(following.strip())
        return " ".join(part for part in folded if part)
    raise AssertionError(f"no expr in {block[0].strip()}")
