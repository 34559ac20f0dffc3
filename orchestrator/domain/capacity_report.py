"""What a person and a dashboard see of each target's capacity: per model, the enqueued-token
budget in force and where it comes from, the tokens in flight against it and the batches waiting
for it (``orchestrator status``, ``orchestrator capacity`` and the capacity gauges all show this
one report, so they never disagree).

The budget in force is the lower of the configured one (``enqueued_token_budgets``: the model's
own entry, else ``"*"``) and the one learned from a provider's ``token_limit_exceeded`` message: a
learned limit lowers a configured budget, never raises it. Pure: the rows come in as values.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Protocol

from orchestrator.domain.capacity import WAITING, Budget, budget_in_force

# What the configuration's table of budgets calls "any model not named".
ANY_MODEL = "*"
# How a waiting batch's reason begins (``batches.waiting_reason``).
WAITING_PREFIX = f"{WAITING}: "


class TargetLimits(Protocol):
    """What the report reads of a target's settings (``config.TargetConfig``)."""

    @property
    def enqueued_token_budgets(self) -> Mapping[str, int]: ...
    @property
    def max_batches_in_flight(self) -> int | None: ...
    def configured_budget(self, model: str | None) -> int | None: ...


class Usage(Protocol):
    """One target and model's batches in flight and waiting (``queries.CapacityUsage``)."""

    @property
    def target(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def in_flight_tokens(self) -> int: ...
    @property
    def in_flight_batches(self) -> int: ...
    @property
    def waiting_batches(self) -> int: ...
    @property
    def oldest_waiting_since(self) -> dt.datetime | None: ...
    @property
    def waiting_reason(self) -> str | None: ...


class Learned(Protocol):
    """A limit learned from a provider (a row of ``orchestrator.capacity``)."""

    @property
    def target(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def learned_tokens(self) -> int: ...
    @property
    def learned_at(self) -> dt.datetime: ...
    @property
    def message(self) -> str | None: ...


@dataclasses.dataclass(frozen=True)
class ModelCapacity:
    """One target and model: its budgets, what is in flight and what waits. ``model`` is None
    for batches planned with no model stated."""

    target: str
    model: str | None
    configured: int | None
    learned: int | None
    learned_at: dt.datetime | None
    learned_message: str | None
    budget: Budget | None
    in_flight_tokens: int = 0
    in_flight_batches: int = 0
    waiting_batches: int = 0
    oldest_waiting_since: dt.datetime | None = None
    waiting_reason: str | None = None

    @property
    def shown_in_status(self) -> bool:
        """``orchestrator status`` shows a model that has a budget or a batch waiting."""
        return self.budget is not None or self.waiting_batches > 0


@dataclasses.dataclass(frozen=True)
class TargetCapacity:
    """One target: its models (by name, the model-less last), the batches in flight over all of
    them against ``max_batches_in_flight``, and the budget configured for any model not named."""

    target: str
    max_batches_in_flight: int | None
    configured_default: int | None
    models: tuple[ModelCapacity, ...]

    @property
    def batches_in_flight(self) -> int:
        return sum(m.in_flight_batches for m in self.models)


def report(
    targets: Mapping[str, TargetLimits], usage: Iterable[Usage], learned: Iterable[Learned]
) -> list[TargetCapacity]:
    """Every configured target (by name), then any other target the database names, each with
    every model that has a budget of its own in the configuration, a learned limit, or batches in
    flight or waiting (a model under the ``"*"`` budget shows once it has batches)."""
    used: dict[tuple[str, str | None], Usage] = {(u.target, u.model): u for u in usage}
    known: dict[tuple[str, str | None], Learned] = {(x.target, x.model): x for x in learned}
    keys = {*used, *known}
    for name, limits in targets.items():
        keys.update((name, model) for model in limits.enqueued_token_budgets if model != ANY_MODEL)
    names = [*targets, *sorted({t for t, _ in keys} - set(targets))]
    result = []
    for name in names:
        config = targets.get(name)
        models = sorted((m for t, m in keys if t == name), key=lambda m: (m is None, m or ""))
        result.append(
            TargetCapacity(
                target=name,
                max_batches_in_flight=None if config is None else config.max_batches_in_flight,
                configured_default=(
                    None if config is None else config.enqueued_token_budgets.get(ANY_MODEL)
                ),
                models=tuple(
                    _model(name, m, config, used.get((name, m)), known.get((name, m)))
                    for m in models
                ),
            )
        )
    return result


def _model(
    target: str,
    model: str | None,
    limits: TargetLimits | None,
    usage: Usage | None,
    learned: Learned | None,
) -> ModelCapacity:
    configured = None if limits is None else limits.configured_budget(model)
    capacity = ModelCapacity(
        target=target,
        model=model,
        configured=configured,
        learned=None,
        learned_at=None,
        learned_message=None,
        budget=budget_in_force(configured, None),
    )
    if learned is not None:
        capacity = dataclasses.replace(
            capacity,
            learned=learned.learned_tokens,
            learned_at=learned.learned_at,
            learned_message=learned.message,
            budget=budget_in_force(configured, learned.learned_tokens),
        )
    if usage is not None:
        capacity = dataclasses.replace(
            capacity,
            in_flight_tokens=usage.in_flight_tokens,
            in_flight_batches=usage.in_flight_batches,
            waiting_batches=usage.waiting_batches,
            oldest_waiting_since=usage.oldest_waiting_since,
            waiting_reason=usage.waiting_reason,
        )
    return capacity


def why_waiting(reason: str | None) -> str:
    """A waiting reason without its ``waiting_for_capacity:`` head (the line says that)."""
    return (reason or "").removeprefix(WAITING_PREFIX)
