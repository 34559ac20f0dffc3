"""What ``orchestrator status`` and ``orchestrator capacity`` show of capacity: the capacity report
(``domain/capacity_report.py``, the one the gauges show too) read from the settings and the
database, as lines, table rows and JSON, and ``capacity --forget``. The reads are ``queries``', the
one write ``ledger.forget_capacity``; the commands in ``cli.py`` frame the transaction and print.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from orchestrator.cli import shown
from orchestrator.config import Settings
from orchestrator.db import ledger, queries
from orchestrator.db.models import Capacity
from orchestrator.domain.capacity import Budget, budget_in_force
from orchestrator.domain.capacity_report import ModelCapacity, TargetCapacity, report, why_waiting
from orchestrator.domain.decide import duration
from orchestrator.errors import UsageError

HEADERS = [
    "target", "model", "budget", "from", "configured", "learned", "learned at", "in flight",
    "batches", "waiting", "waiting since",
]  # fmt: skip


def read(session: Session, settings: Settings, *, in_status: bool) -> list[TargetCapacity]:
    """The capacity report; ``in_status``: only what ``status`` shows (the models with a budget
    or a batch waiting, and the targets with such a model or a max_batches_in_flight)."""
    targets = report(
        settings.targets, queries.capacity_usage(session), queries.learned_capacity(session)
    )
    if not in_status:
        return targets
    shown_models = [
        dataclasses.replace(t, models=tuple(m for m in t.models if m.shown_in_status))
        for t in targets
    ]
    return [t for t in shown_models if t.models or t.max_batches_in_flight is not None]


# -- status ---------------------------------------------------------------------------------------


def status_lines(targets: list[TargetCapacity], now: dt.datetime) -> list[str]:
    """A line per target with a max_batches_in_flight, and one per model with a budget or a batch
    waiting: the budget in force and where it comes from, what is in flight, what waits."""
    lines = []
    for t in targets:
        if t.max_batches_in_flight is not None:
            lines.append(
                f"target {shown(t.target)}: {batches(t.batches_in_flight)} in flight of at most "
                f"{t.max_batches_in_flight:,}"
            )
        for m in t.models:
            flying = "nothing in flight"
            if m.in_flight_batches:
                flying = (
                    f"{m.in_flight_tokens:,} tokens in flight in {batches(m.in_flight_batches)}"
                )
            waiting = "none waiting"
            if m.waiting_batches and m.oldest_waiting_since is not None:
                waiting = (
                    f"{batches(m.waiting_batches)} waiting_for_capacity, "
                    f"{_oldest(m.oldest_waiting_since, now)}: {shown(why_waiting(m.waiting_reason))}"
                )
            lines.append(
                f"target {shown(t.target)}, model {_model(m)}: {_budget_text(m)}, {flying}, "
                f"{waiting}"
            )
    return lines


def job_line(waiting: queries.JobWaiting, now: dt.datetime) -> str:
    """A job's batches held back by admission: how many, the oldest one's wait, one reason."""
    return (
        f"waiting_for_capacity: {batches(waiting.batches)}, {_oldest(waiting.since, now)}: "
        f"{shown(why_waiting(waiting.reason))}"
    )


def as_json(targets: list[TargetCapacity]) -> list[dict[str, Any]]:
    return [
        {
            "target": t.target,
            "batches_in_flight": t.batches_in_flight,
            "max_batches_in_flight": t.max_batches_in_flight,
            "configured_default": t.configured_default,
            "models": [_model_json(m) for m in t.models],
        }
        for t in targets
    ]


def _model_json(m: ModelCapacity) -> dict[str, Any]:
    learned = None
    if m.learned is not None:
        learned = {"tokens": m.learned, "at": m.learned_at, "message": m.learned_message}
    return {
        "model": m.model,
        "budget": _budget_json(m.budget),
        "configured_tokens": m.configured,
        "learned": learned,
        "in_flight_tokens": m.in_flight_tokens,
        "in_flight_batches": m.in_flight_batches,
        "waiting_batches": m.waiting_batches,
        "oldest_waiting_since": m.oldest_waiting_since,
        "waiting_reason": m.waiting_reason,
    }


def _budget_json(budget: Budget | None) -> dict[str, Any] | None:
    return None if budget is None else {"tokens": budget.tokens, "source": budget.source}


# -- orchestrator capacity ------------------------------------------------------------------------


def of_target(targets: list[TargetCapacity], name: str, settings: Settings) -> list[TargetCapacity]:
    """The report of target ``name``: one configured, or one the database names (a learned limit
    or a batch of a target since removed from the configuration); else the usage error of an
    unknown target."""
    found = [t for t in targets if t.target == name]
    if not found:
        settings.target(name)  # raises ConfigError, naming the configured targets
    return found


def rows(targets: list[TargetCapacity], now: dt.datetime) -> list[list[str]]:
    """The table's rows (:data:`HEADERS`): each model, then each target's ``*`` budget."""
    found = [
        [
            t.target,
            _model(m),
            "-" if m.budget is None else f"{m.budget.tokens:,}",
            "-" if m.budget is None else m.budget.source,
            _count(m.configured),
            _count(m.learned),
            "-" if m.learned_at is None else f"{m.learned_at:%Y-%m-%d %H:%M:%S}",
            f"{m.in_flight_tokens:,}",
            f"{m.in_flight_batches:,}",
            f"{m.waiting_batches:,}",
            "-" if m.oldest_waiting_since is None else _since(m.oldest_waiting_since, now),
        ]
        for t in targets
        for m in t.models
    ]
    return found + [
        [t.target, "*", f"{d:,}", "configured", f"{d:,}", *["-"] * 6]
        for t in targets
        if (d := t.configured_default) is not None
    ]


def notes(targets: list[TargetCapacity]) -> list[str]:
    """The lines under the table: each target's batches in flight against its maximum, the
    provider's words for each learned limit, and why batches wait."""
    lines = []
    for t in targets:
        if t.max_batches_in_flight is not None or t.batches_in_flight:
            most = t.max_batches_in_flight
            cap = "no maximum" if most is None else f"at most {most:,}"
            lines.append(
                f"target {shown(t.target)}: {batches(t.batches_in_flight)} in flight ({cap})"
            )
        for m in t.models:
            what = f"target {shown(t.target)}, model {_model(m)}"
            if m.learned is not None:
                lines.append(f"{what}: learned from {shown(m.learned_message or '(no message)')}")
            if m.waiting_batches:
                lines.append(
                    f"{what}: {batches(m.waiting_batches)} waiting_for_capacity: "
                    f"{shown(why_waiting(m.waiting_reason))}"
                )
    return lines


class Forgotten(NamedTuple):
    """A learned limit deleted by ``--forget``, and the budget in force without it."""

    limit: Capacity
    budget: Budget | None


def forget(session: Session, settings: Settings, model: str, target: str | None) -> Forgotten:
    """Delete the limit learned for ``model`` on ``target``, or on the one target that has one;
    a usage error (exit 2) when there is none, or several and no ``target``."""
    learned = queries.learned_capacity(session, target=target)
    if target is not None and target not in settings.targets and not learned:
        settings.target(target)  # unknown, and nothing learned there either: ConfigError
    on = sorted(x.target for x in learned if x.model == model)
    if len(on) > 1:
        raise UsageError(
            f"model '{shown(model)}' has a limit learned on targets {', '.join(map(shown, on))}; "
            "say which with --target"
        )
    limit = ledger.forget_capacity(session, target=on[0], model=model) if on else None
    if limit is None:
        where = "" if target is None else f" on target {shown(target)}"
        raise UsageError(
            f"nothing learned for model '{shown(model)}'{where}; orchestrator capacity lists the "
            "limits learned"
        )
    limits = settings.targets.get(limit.target)
    configured = None if limits is None else limits.configured_budget(model)
    return Forgotten(limit, budget_in_force(configured, None))


def forgotten_text(f: Forgotten) -> str:
    now = "no token budget" if f.budget is None else f"{f.budget.tokens:,} tokens (configured)"
    return (
        f"target {shown(f.limit.target)}, model {shown(f.limit.model)}: forgot the learned limit "
        f"of {f.limit.learned_tokens:,} tokens (learned {f.limit.learned_at:%Y-%m-%d %H:%M:%S}); "
        f"the budget in force is now {now}"
    )


def forgotten_json(f: Forgotten) -> dict[str, Any]:
    return {
        "target": f.limit.target,
        "model": f.limit.model,
        "forgotten": {
            "tokens": f.limit.learned_tokens,
            "at": f.limit.learned_at,
            "message": f.limit.message,
        },
        "budget": _budget_json(f.budget),
    }


# -- words ----------------------------------------------------------------------------------------


def batches(n: int) -> str:
    return f"{n:,} batch" if n == 1 else f"{n:,} batches"


def _budget_text(m: ModelCapacity) -> str:
    if m.budget is None:
        return "no token budget"
    if m.budget.source == "learned":
        at = "-" if m.learned_at is None else f"{m.learned_at:%Y-%m-%d %H:%M:%S}"
        return f"budget {m.budget.tokens:,} tokens (learned {m.learned or 0:,} at {at})"
    return f"budget {m.budget.tokens:,} tokens (configured)"


def _model(m: ModelCapacity) -> str:
    return "(no model)" if m.model is None else shown(m.model)


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _age(since: dt.datetime, now: dt.datetime) -> str:
    return duration(max((now - since).total_seconds(), 0.0))


def _since(since: dt.datetime, now: dt.datetime) -> str:
    return f"{since:%H:%M:%S} ({_age(since, now)})"


def _oldest(since: dt.datetime, now: dt.datetime) -> str:
    return f"the oldest for {_age(since, now)} (since {since:%H:%M:%S})"
