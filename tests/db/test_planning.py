"""Planning a job from its groups of like requests (``plan._pack_groups``) gives the very plan that
packing it request by request gives, or declines; and the bytes it plans are the input file's."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg import connect as psycopg_connect

from orchestrator import plan, steps
from orchestrator.config import TargetConfig
from orchestrator.db import queries
from orchestrator.db.models import Job
from orchestrator.db.session import make_engine, make_sessionmaker, unit_of_work
from orchestrator.domain import requests as rq
from tests.support import chat_body, enqueue, make_settings, query

MODEL_A, MODEL_B = "openai/gpt-4.1-nano", "anthropic/claude-haiku"


def _requests(n: int, **overrides: Any) -> list[dict[str, Any]]:
    return [{"custom_id": f"req-{i:04d}", "body": chat_body(i), **overrides} for i in range(n)]


def _two_models(n: int) -> list[dict[str, Any]]:
    """Models interleaved in runs, with a different provider, and one with an explicit url."""
    out = []
    for i in range(n):
        model = MODEL_B if (i // 3) % 2 else MODEL_A
        out.append(
            {
                "custom_id": f"m{i}",
                "provider": "anthropic" if model == MODEL_B else "openai",
                "url": "/v1/chat/completions" if i % 5 == 0 else None,
                "body": chat_body("x" * (i % 17), model=model),
            }
        )
    return out


def _with(requests: list[dict[str, Any]], at: int, **changes: Any) -> list[dict[str, Any]]:
    return [dict(r, **changes) if i == at else r for i, r in enumerate(requests)]


# (name, requests, target overrides, whether the groups decide the plan)
CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], bool]] = [
    ("one model", _requests(120), {}, True),
    ("two models interleaved", _two_models(60), {}, True),
    ("a custom_id with a space", _with(_requests(30), 7, custom_id="req 7"), {}, False),
    ("a custom_id with a quote", _with(_requests(30), 3, custom_id='req"3'), {}, False),
    ("a custom_id not in ASCII", _with(_requests(30), 9, custom_id="réq-9"), {}, False),
    ("a custom_id too long", _with(_requests(30), 4, custom_id="r" * 65), {}, False),
    ("a body without messages", _with(_requests(30), 5, body={"model": MODEL_A}), {}, False),
    ("a wrong url", _with(_requests(30), 6, url="/v1/embeddings"), {}, False),
    ("no provider", _with(_requests(30), 8, provider=None), {}, False),
    ("more requests than a file takes", _requests(45), {"max_requests_per_file": 20}, False),
    ("more bytes than a file takes", _requests(45), {"max_file_bytes": 4000}, False),
    ("a line over the file limit", _requests(3), {"max_file_bytes": 100}, False),
    ("over the token budget", _requests(40), {"enqueued_token_budgets": {"*": 300}}, False),
    ("within the token budget", _requests(40), {"enqueued_token_budgets": {"*": 10**6}}, True),
]


@pytest.fixture
def sessions(db_url: str) -> Iterator[Any]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _target(db_url: str, overrides: dict[str, Any]) -> TargetConfig:
    target = make_settings(db_url, "http://emulator/v1").target("fastrouter")
    return dataclasses.replace(target, **overrides)


@pytest.mark.parametrize(("name", "requests", "overrides", "by_groups"), CASES)
def test_the_plan_from_groups_is_the_plan_request_by_request(
    db_url: str,
    sessions: Any,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    requests: list[dict[str, Any]],
    overrides: dict[str, Any],
    by_groups: bool,
) -> None:
    job_id = enqueue(db_url, requests)
    target = _target(db_url, overrides)
    with unit_of_work(sessions) as s:
        job = s.get_one(Job, job_id)
        rules, heads = (
            plan.rules_for(job, target),
            rq.LineHeads(endpoint=job.endpoint, include_provider=target.requires_provider),
        )
        groups = queries.job_request_groups(s, job_id, embeddings=False)
        grouped, totals = plan._pack_groups(groups, rules, heads, _packers(target))
        planned = plan.validate_and_pack(s, job, target)
        monkeypatch.setattr(plan, "_pack_groups", lambda *_: (None, None))
        by_request = plan.validate_and_pack(s, job, target)
    assert (grouped is not None) is by_groups, name
    assert by_request.totals is None  # request by request, the estimate reads them again
    assert dataclasses.replace(planned, totals=None) == by_request, name
    # a job cut into several files, its groups all fine, still has its estimate from them
    assert planned.totals == totals
    assert (totals is not None) is (by_groups or "takes" in name or "token budget" in name), name
    if grouped is not None:
        assert grouped == planned
        assert dataclasses.replace(grouped, totals=None) == by_request
        assert sum(g.count for g in groups) == len(requests)
        assert len(groups) < len(requests) / 5  # a few rows stand for all


def _packers(target: TargetConfig) -> Any:
    from orchestrator.domain import capacity
    from orchestrator.domain.packing import Packer

    def packer_for(model: str) -> Packer:
        budget = capacity.budget_in_force(target.configured_budget(model), None)
        return Packer(
            max_requests=target.max_requests_per_file,
            max_bytes=target.file_byte_budget,
            max_tokens=budget.tokens if budget else None,
            model=model,
        )

    return packer_for


def test_the_bytes_planned_from_groups_are_the_input_files_bytes(
    db_url: str, sessions: Any
) -> None:
    """Each batch's planned size is exactly what its upload measures and sends, line for line."""
    job_id = enqueue(db_url, _two_models(90))
    target = _target(db_url, {})
    with unit_of_work(sessions) as s:
        job = s.get_one(Job, job_id)
        assert plan.plan_job(s, job, target, dt.datetime.now(dt.UTC)) == "running"
    batches = query(db_url, "SELECT id, bytes, request_count FROM orchestrator.batches ORDER BY id")
    assert len(batches) == 2
    heads = rq.LineHeads(endpoint="/v1/chat/completions", include_provider=True)
    deps = type("Deps", (), {"sessions": sessions})
    for batch_id, planned, count in batches:
        with unit_of_work(sessions) as s:
            reader = queries.BatchReader(s, batch_id)
        sent = b"".join(steps._lines(deps, reader, heads))  # type: ignore[arg-type]
        assert steps._measure(reader, heads) == planned == len(sent)
        assert sent.count(b"\n") == count == 45


def test_the_estimate_from_groups_is_the_estimate_from_the_requests(
    db_url: str, sessions: Any
) -> None:
    """Two models, one priced; output bounds of every kind (max_tokens, max_completion_tokens,
    max_output_tokens, a fraction, a string that is no bound, none at all)."""
    bounds: list[dict[str, Any]] = [
        {"max_tokens": 100}, {"max_completion_tokens": 250, "max_tokens": 9}, {},
        {"max_output_tokens": 70}, {"max_tokens": 12.5}, {"max_tokens": "300"}, {"max_tokens": 1},
    ]  # fmt: skip
    requests = [
        {"custom_id": f"e{i}", "body": {**chat_body("y" * i, model=model), **bounds[i % 7]}}
        for i in range(70)
        for model in [MODEL_A if i % 3 else MODEL_B]
    ]
    job_id = enqueue(db_url, requests)
    with psycopg_connect(db_url) as conn:
        conn.execute(
            "INSERT INTO orchestrator.prices (target, model, valid_from, input_per_mtok, "
            "output_per_mtok) VALUES ('fastrouter', %s, now() - interval '1 day', 0.1, 0.4)",
            (MODEL_A,),
        )
    target = _target(db_url, {})
    at = dt.datetime.now(dt.UTC)
    with unit_of_work(sessions) as s:
        job = s.get_one(Job, job_id)
        totals = plan.validate_and_pack(s, job, target).totals
        assert totals is not None and [t.model for t in totals] == sorted([MODEL_A, MODEL_B])
        estimate = dict(job_id=job_id, target="fastrouter", endpoint=job.endpoint, at=at)
        from_groups = queries.job_estimate(s, **estimate, totals=totals)  # type: ignore[arg-type]
        from_requests = queries.job_estimate(s, **estimate)  # type: ignore[arg-type]
    assert from_groups == from_requests
    a = next(e for e in from_groups if e.model == MODEL_A)
    assert a.priced and a.max_cost is not None and a.unbounded > 0 and a.max_output_tokens > 0


def test_a_large_job_is_grouped_by_parallel_workers_with_the_same_groups(
    db_url: str, sessions: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = enqueue(db_url, _two_models(300))
    plans, settings = [], []
    for threshold in (10**9, 1):  # never parallel, then always
        monkeypatch.setattr(queries, "PARALLEL_FROM", threshold)
        with unit_of_work(sessions) as s:
            groups = queries.job_request_groups(s, job_id, embeddings=False)
            # the planner's own judgement is back for what the transaction does next
            settings.append(s.execute(sa.text("SHOW parallel_setup_cost")).scalar_one())
            plans.append(sorted(groups, key=lambda g: (g.first_seq, g.provider or "")))
    assert plans[0] == plans[1] and len(plans[0]) == 4
    assert settings == ["1000", "1000"]
