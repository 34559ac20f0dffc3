"""Planning: a pending job becomes validated, packed batches, in one transaction.

The requests are read once, in enqueue order, through a server-side cursor, without their bodies:
each is checked (``domain/requests.py``, on the shape of its body that the database builds) and
its JSONL line measured (from the body's size), and one packer per model cuts contiguous runs of
that model's requests into chunks (a provider takes one model per file: spec 3.1), within the
model's enqueued-token budget when one is configured or learned (``domain/capacity.py``). If
any request is sure to fail, the job fails at once, naming the requests and what is wrong with
them, and nothing is planned or sent. Otherwise one ``batches`` row per chunk and one narrow
``batch_items`` row per request are written, and the job moves to ``running``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from orchestrator.config import TargetConfig
from orchestrator.db import ledger, queries
from orchestrator.db.models import Job
from orchestrator.db.session import Session
from orchestrator.domain import budget, capacity
from orchestrator.domain import requests as rq
from orchestrator.domain.packing import Chunk, Packer
from orchestrator.domain.states import JobStatus

MAX_LISTED_PROBLEMS = 5


@dataclasses.dataclass
class Validation:
    chunks: list[Chunk] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    invalid: int = 0
    total: int = 0
    bytes: int = 0
    # What the job's estimate adds up per model, when planning had it at hand (from its groups)
    totals: list[queries.EstimateTotals] | None = None

    def message(self) -> str:
        listed = "; ".join(self.problems)
        more = self.invalid - len(self.problems)
        tail = f"; and {more} more" if more > 0 else ""
        noun = "request is" if self.invalid == 1 else "requests are"
        return f"{self.invalid} of {self.total} {noun} invalid, nothing was sent: {listed}{tail}"


def rules_for(job: Job, target: TargetConfig) -> rq.Rules:
    return rq.Rules(
        endpoint=job.endpoint,
        supported_endpoints=target.endpoints,
        requires_provider=target.requires_provider,
        max_custom_id_length=target.max_custom_id_length,
        max_line_bytes=target.file_byte_budget,
        providers=target.providers,
        completion_window=job.completion_window,
        completion_windows=target.completion_windows,
    )


def validate_and_pack(session: Session, job: Job, target: TargetConfig) -> Validation:
    rules = rules_for(job, target)
    result = Validation()
    endpoint_problem = rq.endpoint_problem(rules)
    if endpoint_problem:
        result.problems.append(endpoint_problem)
        result.invalid = 1
        return result
    heads = rq.LineHeads(endpoint=job.endpoint, include_provider=target.requires_provider)
    learned = queries.learned_limits(session, target.name)
    packers: dict[str, Packer] = {}

    def packer_for(model: str) -> Packer:
        packer = packers.get(model)
        if packer is None:
            budget = capacity.budget_in_force(target.configured_budget(model), learned.get(model))
            packer = packers[model] = Packer(
                max_requests=target.max_requests_per_file,
                max_bytes=target.file_byte_budget,
                max_tokens=budget.tokens if budget else None,
                model=model,
            )
        return packer

    groups = queries.job_request_groups(
        session, job.id, embeddings=job.endpoint.endswith("/embeddings")
    )
    grouped, totals = _pack_groups(groups, rules, heads, packer_for)
    if grouped is not None:
        return grouped
    # Request by request: to name what is wrong, or to cut a model's requests into several files
    # (then the groups, all fine, still give the estimate: the bodies are not read a third time).
    result.totals = totals
    for r in queries.job_requests(session, job.id):
        row = rq.RequestRow(r.custom_id, r.provider, r.method, r.url)
        head = heads(row)
        size = rq.line_size(head, r.body_bytes)
        result.total += 1
        problem = rq.request_problem(row, r.body_shape, size, rules)
        if problem:
            result.invalid += 1
            if len(result.problems) < MAX_LISTED_PROBLEMS:
                result.problems.append(f"request {r.custom_id!r}: {problem}")
            continue
        result.bytes += size
        if not result.invalid:
            model = r.body_shape.get("model") if isinstance(r.body_shape, dict) else None
            closed = packer_for(model if isinstance(model, str) else "").add(
                r.seq, size, capacity.estimated_tokens(r.body_bytes)
            )
            if closed:
                result.chunks.append(closed)
    for packer in packers.values():
        last = packer.finish()
        if last:
            result.chunks.append(last)
    return result


def _pack_groups(
    groups: list[queries.RequestGroup],
    rules: rq.Rules,
    heads: rq.LineHeads,
    packer_for: Callable[[str], Packer],
) -> tuple[Validation | None, list[queries.EstimateTotals] | None]:
    """The plan of a job whose requests all pass and whose models each fit one chunk, from its
    groups alone (:func:`queries.job_request_groups`): the same chunks as packing it request by
    request, which would close none; and what its estimate adds up per model. No plan when that
    cannot be told from the groups (a custom_id that is not plain, a group with a problem, a model
    over a file's limits): then it is planned request by request, which names what is wrong or
    cuts the model's requests into files. No totals when a group is not fine either.

    Each group's checks run once, on the group's worst case: its longest custom_id and its
    longest line (every other check reads only what the whole group shares)."""
    result = Validation()
    models: dict[str, list[int]] = {}  # model → [count, bytes, tokens, first seq, last seq]
    estimate: dict[str, list[Any]] = {}  # model → [unbounded, max output]
    for g in groups:
        if not g.plain_ids:
            return None, None
        # a plain custom_id is its own length in bytes plus two quotes: the head of an empty one,
        # and the line end, are what every line of the group adds to its custom_id and body
        fixed = len(heads(rq.RequestRow("", g.provider, g.method, g.url))) + len(rq.LINE_END)
        worst = rq.RequestRow("x" * g.longest_id, g.provider, g.method, g.url)
        if rq.request_problem(worst, g.body_shape, fixed + g.longest, rules):
            return None, None
        model = g.body_shape["model"]  # a string: the checks passed
        size = fixed * g.count + g.id_bytes + g.body_bytes
        totals = models.setdefault(model, [0, 0, 0, g.first_seq, g.last_seq])
        totals[0] += g.count
        totals[1] += size
        totals[2] += g.tokens
        totals[3] = min(totals[3], g.first_seq)
        totals[4] = max(totals[4], g.last_seq)
        outputs = estimate.setdefault(model, [0, Decimal(0)])
        outputs[0] += g.unbounded
        outputs[1] += g.max_output
    # The estimate's model is the body's, whole: the packers' (MODEL_TEXT) is cut at 1,024
    # characters; a model that long is estimated from the requests, read again.
    if all(len(model) < queries.MODEL_TEXT_CHARACTERS for model in models):
        result.totals = [
            queries.EstimateTotals(model, count, tokens, *estimate[model])
            for model, (count, _, tokens, _, _) in sorted(models.items())
        ]
    # in the order their models first come, as the packers close them
    for model, (count, size, tokens, first, last) in sorted(models.items(), key=lambda m: m[1][3]):
        packer = packer_for(model)
        if (
            count > packer.max_requests
            or size > packer.max_bytes
            or (packer.max_tokens is not None and tokens > packer.max_tokens)
        ):
            return None, result.totals
        result.chunks.append(Chunk(first, last, count, size, tokens, model))
        result.total += count
        result.bytes += size
    return result, result.totals


def plan_job(
    session: Session,
    job: Job,
    target: TargetConfig | None,
    now: dt.datetime,
    *,
    planned: Callable[[list[Chunk]], None] | None = None,
) -> str | None:
    """Validate and plan a locked pending job. Returns the job's new status, or None for a job
    left pending: its ``target`` is not one this daemon knows (None), and it waits for a daemon
    that knows it (``queries.pending_job_ids`` does not take such a job but to cancel it).
    ``planned`` hears the chunks of a job sure to run, each a whole run of seq, before they are
    written (the transaction is still open: the batches are not there yet)."""
    if job.cancel_requested_at is not None:
        ledger.end_pending_job(session, job.id, JobStatus.CANCELLED, now, stage="pending")
        return JobStatus.CANCELLED
    if target is None:
        return None
    validation = validate_and_pack(session, job, target)
    if validation.invalid:
        return fail_job(session, job, now, validation.message())
    if validation.total == 0:
        return fail_job(
            session,
            job,
            now,
            "the job has no requests; insert them in the same transaction as the job",
        )
    over_budget = _estimate(session, job, target, now, validation.totals)
    if over_budget:
        return fail_job(session, job, now, over_budget)
    # A chunk is a run of seq of one model: the other models' requests in that run are left
    # out by model, which only a job of several models needs (it reads the bodies again).
    several_models = len({chunk.model for chunk in validation.chunks}) > 1
    if planned is not None and not several_models:
        planned(validation.chunks)
    for chunk in sorted(validation.chunks, key=lambda c: c.first_seq):
        ledger.insert_planned_batch(
            session,
            job,
            first_seq=chunk.first_seq,
            last_seq=chunk.last_seq,
            count=chunk.count,
            size=chunk.bytes,
            model=chunk.model,
            tokens=chunk.tokens,
            only_model=several_models,
            now=now,
        )
    ledger.start_job(
        session,
        job.id,
        requests=validation.total,
        batches=len(validation.chunks),
        size=validation.bytes,
        now=now,
    )
    return JobStatus.RUNNING


def _estimate(
    session: Session,
    job: Job,
    target: TargetConfig,
    now: dt.datetime,
    totals: list[queries.EstimateTotals] | None,
) -> str | None:
    """Store the job's estimate; with a ``max_cost``, say why the job cannot be run within it
    (its upper bound is over it, or cannot be known), or None if it can."""
    models = queries.job_estimate(
        session, job_id=job.id, target=target.name, endpoint=job.endpoint, at=now, totals=totals
    )
    verdict = budget.judge(models, job.max_cost)
    ledger.estimate_job(
        session,
        job.id,
        prompt_tokens=verdict.prompt_tokens,
        max_output_tokens=verdict.max_output_tokens,
        max_cost=verdict.max_cost,
    )
    return verdict.problem


def fail_job(session: Session, job: Job, now: dt.datetime, message: str) -> str:
    ledger.end_pending_job(
        session, job.id, JobStatus.FAILED, now, error=message, stage="validation"
    )
    return JobStatus.FAILED
