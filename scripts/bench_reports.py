"""Benchmark issue 11: the reporting views' typical queries on 90 days of history.

    .venv/bin/python scripts/bench_reports.py                   # make bench-reports: 5,000,000
    .venv/bin/python scripts/bench_reports.py --results 500000  # a quick look
    .venv/bin/python scripts/bench_reports.py --runs 9 --keep   # keep the database afterwards
    .venv/bin/python scripts/bench_reports.py \\
        --extra-ddl 'CREATE INDEX ON orchestrator.results (batch_id)'   # time again after it

A fresh database (on the PostgreSQL at 127.0.0.1:5432, or on the server of ``--db-url``, else an
embedded one) is migrated with ``orchestrator.db.migrate.upgrade`` and filled with set-based SQL
(``generate_series``, ``INSERT … SELECT``, into the real tables, logged, with their indexes,
constraints and triggers as the migrations made them): ``--results`` requests, each with its
result (default 5,000,000), in jobs created over 90 days (most of 460 to 1,380 requests, one in a
hundred of about 9,200), on two targets and several models, some jobs mixing models in one batch,
one job in ten split in two batches. Results are chat completions (a few hundred characters of
content, ``finish_reason``, ``usage`` with cached and reasoning tokens); about 1.5 % are failures
(a 400 and its error). The bodies are drawn from 1,024 per model, built and parsed once (parsing
5 million JSON texts would double the fill): every row has a body of the size and shape of a real
one, whose usage agrees with the row's token columns. Prices have a row per model, a target's own
row for one model, and a change halfway through the period; one model has no price.
``batch_model_costs`` is computed from the results with the same ``INSERT … SELECT … GROUP BY``
as ``ledger.record_model_costs`` (``price_in_force`` at the batch's end, ``token_cost``); batches
and jobs get their counters and costs from there (the provider's figure on one target, ours on the
other), and a few events each. Then ``ANALYZE``.

The fill runs in ``--workers`` connections (one chunk of jobs each at a time) with
``synchronous_commit = off``; nothing of the schema is dropped, altered or bypassed (jobs are
enqueued as pending, as the trigger insists, and completed at the end; every foreign key and
trigger runs).

Each query is then timed ``--runs`` times from a client connection (execute and fetch every row;
no prepared statements, as a reporting tool sends them; the first run counts), median and max,
each next to a baseline of the same shape on the raw tables without the view's extras (for the
Grafana-style query, itself on a raw table: the same figure from ``cost_by_day``); also the
daemon's per-batch query of ``record_model_costs``, on the same table. A query whose median is over
half a second is shown with its ``EXPLAIN (ANALYZE, BUFFERS)``. With ``--extra-ddl`` the statements
are applied after the first round (timed, with the size of what they create) and every query is
timed again. Figures only, no timed assertions; the report is also written to
``bench-results/reports.json``. The database is dropped at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from benchdb import Databases, pg_server

# Benchmark this checkout's package (imported lazily, below), not whichever checkout an editable
# install points at: `python scripts/...` puts scripts/, not the checkout, first on the path.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = 5_000_000
REQUESTS_PER_JOB = 1_000  # on average: most jobs hold 460 to 1,380, one in a hundred ~9,200
BIG_JOB = 10_000  # the size of the larger job timed
DAYS = 90
RUNS = 7
SLOW = 1.0  # seconds: the aim for every query
EXPLAIN_OVER = SLOW / 2  # a query whose median is over this gets its EXPLAIN (ANALYZE, BUFFERS)
CHUNK_REQUESTS = 100_000  # a fill task: the jobs holding about this many requests
RESULTS_DIR = Path("bench-results")
MB = 1024 * 1024

# Per target, the model of a job is drawn from this list (repeats weigh it); a mixing job's
# requests take turns over MIX[target]. meta-llama has no price: its tokens are "unpriced".
MODELS = {
    "fastrouter": [
        *["openai/gpt-4.1-nano"] * 6,
        *["openai/gpt-4.1-mini"] * 4,
        *["anthropic/claude-3-5-haiku"] * 3,
        *["google/gemini-2.0-flash"] * 4,
        *["openai/o4-mini"] * 2,
        "meta-llama/llama-3.3-70b-instruct",
    ],
    "openai": [*["gpt-4.1-nano"] * 3, *["gpt-4.1-mini"] * 2, "o4-mini"],
}
MIX = {
    "fastrouter": ["openai/gpt-4.1-nano", "anthropic/claude-3-5-haiku", "google/gemini-2.0-flash"],
    "openai": ["gpt-4.1-nano", "gpt-4.1-mini", "o4-mini"],
}
REASONING = ("openai/o4-mini", "o4-mini")
# (target, model, input, cached input, output per million tokens, batch discount); every row is
# valid from before the period, and CHANGES are new rows valid from its middle.
PRICES = [
    ("*", "openai/gpt-4.1-nano", "0.10", "0.025", "0.40", "0.5"),
    ("fastrouter", "openai/gpt-4.1-nano", "0.05", "0.0125", "0.20", "0"),  # the target's own row
    ("*", "openai/gpt-4.1-mini", "0.40", "0.10", "1.60", "0.5"),
    ("*", "openai/o4-mini", "1.10", "0.275", "4.40", "0.5"),
    ("*", "anthropic/claude-3-5-haiku", "0.80", "0.08", "4.00", "0.5"),
    ("*", "google/gemini-2.0-flash", "0.10", "0.025", "0.40", "0.5"),
    ("*", "gpt-4.1-nano", "0.10", "0.025", "0.40", "0.5"),
    ("*", "gpt-4.1-mini", "0.40", "0.10", "1.60", "0.5"),
    ("*", "o4-mini", "1.10", "0.275", "4.40", "0.5"),
]
CHANGES = [
    ("*", "openai/gpt-4.1-mini", "0.30", "0.075", "1.20", "0.5"),
    ("*", "gpt-4.1-mini", "0.30", "0.075", "1.20", "0.5"),
    ("*", "anthropic/claude-3-5-haiku", "1.00", "0.10", "5.00", "0.5"),
]
TEXT = (
    "Thanks for reaching out. The invoice you mention was issued on the first of the month and "
    "covers the annual plan; the duplicate charge was refunded the same day, so it should appear "
    "on your statement within five working days. In short: the customer reports that the export "
    "to CSV stops at ten thousand rows, which is the documented limit of the free tier. Sentiment: "
    "neutral, slightly frustrated. Category: billing. Priority: low. Suggested reply: apologise "
    "for the confusion, point to the pricing page and offer a trial of the team plan. Summary of "
    "the document: a lease for a two-bedroom flat, twelve months from March, rent due on the "
    "fifth, deposit of two months, pets allowed with written consent, the tenant pays utilities. "
    "Translation: la livraison est prevue pour mardi, merci de confirmer l'adresse. Keywords: "
    "shipping delay, refund, warehouse, address change, weekend delivery. The answer is 42. Key "
    "points: the update fixed the login loop on older tablets, battery drain is unchanged, and "
    "the new sync option is off by default. Extracted fields: name, date of birth, policy number, "
    "claim amount, date of incident, description of the damage and the garage's estimate."
)
assert not set(TEXT) & set('"\\')  # it goes into JSON strings as it is
FAILURE = {
    "message": "This model's maximum context length was exceeded.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}


# -- databases ---------------------------------------------------------------------------------


# -- the fill ----------------------------------------------------------------------------------


def sql_text_array(values: list[str]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


# The plan: one row per batch (a job in ten is split in two), with the requests it covers (k_from
# to k_to, the custom_id's number within the job), its model (or the models its requests take
# turns over) and its timeline; in job order. A scratch table of the fill, dropped at its end.
PLAN = f"""
CREATE TABLE public.bench_plan AS
WITH j AS (
    SELECT j, (hashint4(j) & 2147483647) AS h,
           CASE WHEN j %% 100 = 50 THEN 10  -- one job in a hundred is ten times the size
                ELSE 0.5 + (hashint4(j + 1000000) & 1023) / 1023.0 END AS w
      FROM generate_series(1, %(jobs)s) AS j
), sized AS (
    SELECT j, h,
           floor(%(results)s * sum(w) OVER (ORDER BY j) / sum(w) OVER ())::bigint AS upto
      FROM j
), jobs AS (
    SELECT j AS job_id, h, COALESCE(lag(upto) OVER (ORDER BY j), 0) AS seq_base,
           upto - COALESCE(lag(upto) OVER (ORDER BY j), 0) AS size,
           CASE WHEN h %% 10 < 7 THEN 'fastrouter' ELSE 'openai' END AS target,
           now() - make_interval(days => %(days)s)
               + (j - 1) * make_interval(days => %(days)s) / %(jobs)s * 0.99
               + (h %% 600) * interval '1 second' AS created_at
      FROM sized
), parts AS (
    SELECT job_id, 0 AS part, h, seq_base, size, target, created_at,
           1::bigint AS k_from, size AS k_to
      FROM jobs WHERE job_id %% 10 <> 0 OR size < 2
    UNION ALL
    SELECT job_id, part, h, seq_base, size, target, created_at,
           CASE part WHEN 1 THEN 1 ELSE size / 2 + 1 END,
           CASE part WHEN 1 THEN size / 2 ELSE size END
      FROM jobs, generate_series(1, 2) AS part WHERE job_id %% 10 = 0 AND size >= 2
)
SELECT parts.*, row_number() OVER (ORDER BY job_id, part) AS batch_id,
       CASE target
           WHEN 'fastrouter' THEN
               ({sql_text_array(MODELS["fastrouter"])})[1 + (h >> 4) %% {len(MODELS["fastrouter"])}]
           ELSE ({sql_text_array(MODELS["openai"])})[1 + (h >> 4) %% {len(MODELS["openai"])}]
       END AS model,
       CASE WHEN job_id %% 7 = 3 THEN
           CASE target WHEN 'fastrouter' THEN {sql_text_array(MIX["fastrouter"])}
                       ELSE {sql_text_array(MIX["openai"])} END END AS mix,
       created_at + interval '20 minutes'
           + ((h >> 8) %% 1200 + part * 37) * interval '1 minute' AS finished_at
  FROM parts
 ORDER BY job_id, part
"""

# The bodies: per model, VARIANTS requests and chat completions of the sizes and shapes a real one
# has (a few hundred characters of content, finish_reason, usage with cached and reasoning tokens:
# prompt 40–1,439, completion 10–609, half of it reasoning on the reasoning models, a fifth with
# half the prompt cached). Built and parsed once here; each request and result takes one by its
# hash, with its token columns, so a result's row and its body agree.
VARIANTS = 1024
BODIES = """
CREATE TABLE public.bench_bodies AS
SELECT m.model, v.variant, t.prompt, t.completion, t.cached, t.reasoning,
       ('{"model": "' || m.model || '", "messages": ['
        || '{"role": "system", "content": "You are a concise assistant. Answer in English."}, '
        || '{"role": "user", "content": "'
        || substr(%(text)s, 1 + x.h %% 400, 40 + (x.h >> 9) %% 160)
        || '"}], "max_tokens": 600, "temperature": 0.2}')::jsonb AS request,
       ('{"id": "chatcmpl-' || md5(m.model || v.variant)
        || '", "object": "chat.completion", "created": '
        || extract(epoch FROM now())::bigint - x.h %% 7776000
        || ', "model": "' || m.model
        || '", "choices": [{"index": 0, "message": {"role": "assistant", "content": "'
        || substr(%(text)s, 1 + (x.h >> 3) %% 300, 30 + (x.h >> 5) %% 420)
        || '", "refusal": null}, "logprobs": null, "finish_reason": "'
        || CASE WHEN x.h %% 41 = 0 THEN 'length' ELSE 'stop' END
        || '"}], "usage": {"prompt_tokens": ' || t.prompt
        || ', "completion_tokens": ' || t.completion
        || ', "total_tokens": ' || (t.prompt + t.completion)
        || ', "prompt_tokens_details": {"cached_tokens": ' || t.cached
        || '}, "completion_tokens_details": {"reasoning_tokens": ' || t.reasoning
        || '}}, "system_fingerprint": "fp_' || to_hex(x.h >> 4) || '"}')::jsonb AS response
  FROM unnest(%(models)s::text[]) AS m(model)
 CROSS JOIN generate_series(0, %(variants)s - 1) AS v(variant)
 CROSS JOIN LATERAL (
     SELECT hashint8(hashtext(m.model)::bigint * 100000 + v.variant) & 2147483647 AS h) x
 CROSS JOIN LATERAL (
     SELECT 40 + x.h %% 1400 AS prompt, 10 + (x.h >> 11) %% 600 AS completion,
            CASE WHEN (x.h >> 6) %% 5 = 0 THEN (40 + x.h %% 1400) / 2 ELSE 0 END AS cached,
            CASE WHEN m.model = ANY(%(reasoning)s) THEN (10 + (x.h >> 11) %% 600) / 2 ELSE 0 END
                AS reasoning) t
"""
SCRATCH_INDEXES = [
    "CREATE UNIQUE INDEX ON public.bench_bodies (model, variant)",
    "CREATE INDEX ON public.bench_plan (job_id)",
    "ANALYZE public.bench_bodies",
    "ANALYZE public.bench_plan",
]

PRICES_SQL = """
INSERT INTO orchestrator.prices
       (target, model, valid_from, input_per_mtok, cached_input_per_mtok, output_per_mtok,
        batch_discount)
VALUES (%s, %s, now() - %s * interval '1 day', %s, %s, %s, %s)
"""

JOBS = """
INSERT INTO orchestrator.jobs (id, name, target, endpoint, metadata, priority, created_at,
                               started_at, updated_at)
SELECT job_id, 'nightly-' || to_char(created_at, 'YYYY-MM-DD') || '-' || job_id, target,
       '/v1/chat/completions',
       jsonb_build_object('team', (ARRAY['support', 'search', 'legal', 'growth'])[1 + h % 4],
                          'source', 'bench_reports'),
       h % 3, created_at, created_at + interval '2 seconds', created_at
  FROM public.bench_plan WHERE part < 2
"""

BATCHES = """
INSERT INTO orchestrator.batches (
    id, job_id, target, endpoint, round, state, remote_status, remote_batch_id, input_file_id,
    output_file_id, request_count, bytes, next_run_at, lease_token, idempotency_key,
    create_attempted_at, create_attempts, remote_created_at, expires_at, in_progress_at,
    finalizing_at, remote_finished_at, poll_count, created_at, updated_at, finished_at)
SELECT batch_id, job_id, target, '/v1/chat/completions', 1, 'done', 'completed',
       'batch_' || md5(batch_id::text), 'file-in-' || batch_id, 'file-out-' || batch_id,
       k_to - k_from + 1, (k_to - k_from + 1) * 420, finished_at, 6, gen_random_uuid(),
       created_at + interval '3 seconds', 1, created_at + interval '4 seconds',
       created_at + interval '24 hours 4 seconds', created_at + interval '40 seconds',
       finished_at - interval '2 minutes', finished_at - interval '30 seconds',
       12 + (h % 30), created_at + interval '2 seconds', finished_at, finished_at
  FROM public.bench_plan
"""

# Request k of plan row p: its model (a mixing batch's requests take turns), its hash h, which
# picks its body and fails 1.5 % of the results (a 400). The OFFSET 0 computes each once per row.
EACH_REQUEST = f"""
  FROM (SELECT p.job_id, g.k, p.batch_id, p.seq_base + g.k AS seq, p.finished_at,
               COALESCE(p.mix[1 + (g.k %% array_length(p.mix, 1))], p.model) AS model,
               h.h %% {VARIANTS} AS variant, (h.h >> 10) %% 67 = 0 AS failed
          FROM public.bench_plan p
         CROSS JOIN LATERAL generate_series(p.k_from, p.k_to) AS g(k)
         CROSS JOIN LATERAL (
             SELECT hashint8(p.job_id::bigint * 1000000 + g.k) & 2147483647 AS h OFFSET 0) h
         WHERE p.job_id BETWEEN %(lo)s AND %(hi)s
        OFFSET 0) x
  JOIN public.bench_bodies v ON v.model = x.model AND v.variant = x.variant
"""  # no ORDER BY: rows come in job order anyway (bench_plan is), a sort would cost a third

REQUESTS = f"""
INSERT INTO orchestrator.requests (job_id, custom_id, seq, provider, body)
SELECT x.job_id, 'req-' || lpad(x.k::text, 6, '0'), x.seq, 'openai', v.request
{EACH_REQUEST}"""

RESULTS_SQL = f"""
INSERT INTO orchestrator.results (
    job_id, custom_id, batch_id, attempt, succeeded, status_code, response, error, model,
    prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, created_at)
SELECT x.job_id, 'req-' || lpad(x.k::text, 6, '0'), x.batch_id, 1, NOT x.failed,
       CASE WHEN x.failed THEN 400 ELSE 200 END,
       CASE WHEN x.failed THEN %(failed_body)s::jsonb ELSE v.response END,
       CASE WHEN x.failed THEN %(failed_error)s::jsonb END,
       x.model,
       CASE WHEN x.failed THEN 0 ELSE v.prompt END,
       CASE WHEN x.failed THEN 0 ELSE v.completion END,
       CASE WHEN x.failed THEN 0 ELSE v.prompt + v.completion END,
       CASE WHEN x.failed THEN 0 ELSE v.cached END,
       CASE WHEN x.failed THEN 0 ELSE v.reasoning END,
       x.finished_at - interval '1 minute'
{EACH_REQUEST}"""

# ledger.record_model_costs, for every batch of the chunk at once: the same GROUP BY over the
# batch's results, the price in force at the batch's end on its target, token_cost.
MODEL_COSTS = """
INSERT INTO orchestrator.batch_model_costs AS m
       (batch_id, model, price_id, results, prompt_tokens, completion_tokens,
        cached_tokens, reasoning_tokens, total_tokens, cost)
SELECT t.batch_id, t.model, p.id, t.results, t.prompt, t.completion, t.cached, t.reasoning,
       t.total, orchestrator.token_cost(p, t.prompt, t.cached, t.completion)
  FROM (SELECT r.batch_id, COALESCE(r.model, '') AS model, count(*) AS results,
               sum(r.prompt_tokens) AS prompt, sum(r.completion_tokens) AS completion,
               sum(r.cached_tokens) AS cached, sum(r.reasoning_tokens) AS reasoning,
               sum(r.total_tokens) AS total
          FROM orchestrator.results r WHERE r.job_id BETWEEN %(lo)s AND %(hi)s
         GROUP BY 1, 2) t
  JOIN orchestrator.batches b ON b.id = t.batch_id
  LEFT JOIN LATERAL orchestrator.price_in_force(b.target, t.model, b.finished_at) p ON true
"""

# The batch's counters from its results; its cost as steps._batch_cost makes it: the provider's
# figure where it reports one (fastrouter here: ours, give or take 3 %), else ours when every
# model with tokens is priced, else none.
BATCH_TOTALS = """
UPDATE orchestrator.batches b SET
    succeeded_count = c.ok, failed_count = c.ko,
    prompt_tokens = c.pt, completion_tokens = c.ct, total_tokens = c.tt,
    cached_tokens = c.cached, reasoning_tokens = c.rt,
    request_counts = jsonb_build_object('total', c.ok + c.ko, 'completed', c.ok,
                                        'failed', c.ko),
    usage = jsonb_build_object('input_tokens', c.pt, 'output_tokens', c.ct,
                               'total_tokens', c.tt),
    cost = CASE WHEN b.target = 'fastrouter'
                THEN round(m.computed * (0.97 + (b.id %% 61) / 1000.0), 8)
                WHEN m.unpriced = 0 THEN m.computed END,
    cost_source = CASE WHEN b.target = 'fastrouter' THEN 'provider'
                       WHEN m.unpriced = 0 THEN 'prices' ELSE 'none' END
  FROM (SELECT batch_id, count(*) FILTER (WHERE succeeded) AS ok,
               count(*) FILTER (WHERE NOT succeeded) AS ko,
               sum(prompt_tokens) AS pt, sum(completion_tokens) AS ct,
               sum(total_tokens) AS tt, sum(cached_tokens) AS cached,
               sum(reasoning_tokens) AS rt
          FROM orchestrator.results WHERE job_id BETWEEN %(lo)s AND %(hi)s
         GROUP BY batch_id) c,
       (SELECT batch_id, sum(cost) AS computed,
               count(*) FILTER (WHERE cost IS NULL AND total_tokens > 0) AS unpriced
          FROM orchestrator.batch_model_costs
         WHERE batch_id IN (SELECT id FROM orchestrator.batches
                             WHERE job_id BETWEEN %(lo)s AND %(hi)s)
         GROUP BY batch_id) m
 WHERE b.id = c.batch_id AND m.batch_id = c.batch_id
"""

JOB_TOTALS = """
UPDATE orchestrator.jobs j SET
    status = 'completed', request_count = s.requests, batch_count = s.batches,
    succeeded_count = s.ok, failed_count = s.ko, prompt_tokens = s.pt,
    completion_tokens = s.ct, total_tokens = s.tt, cost = s.cost,
    cost_source = CASE WHEN s.sources = 1 THEN s.source ELSE 'mixed' END,
    estimated_prompt_tokens = s.pt + s.requests * 12,
    estimated_max_output_tokens = s.requests * 600,
    finished_at = s.finished_at, updated_at = s.finished_at
  FROM (SELECT job_id, sum(request_count) AS requests, count(*) AS batches,
               sum(succeeded_count) AS ok, sum(failed_count) AS ko, sum(prompt_tokens) AS pt,
               sum(completion_tokens) AS ct, sum(total_tokens) AS tt, sum(cost) AS cost,
               count(DISTINCT cost_source) AS sources, min(cost_source) AS source,
               max(finished_at) AS finished_at
          FROM orchestrator.batches GROUP BY job_id) s
 WHERE j.id = s.job_id
"""

EVENTS = """
INSERT INTO orchestrator.events (at, job_id, batch_id, kind, detail)
SELECT e.at, p.job_id, e.batch_id, e.kind, e.detail
  FROM public.bench_plan p
  JOIN orchestrator.batches b ON b.id = p.batch_id
  CROSS JOIN LATERAL (VALUES
      (p.created_at + interval '1 second', NULL::bigint, 'job_planned',
       jsonb_build_object('requests', p.size), p.part < 2),
      (b.created_at + interval '3 seconds', b.id, 'batch_uploaded',
       jsonb_build_object('bytes', b.bytes, 'requests', b.request_count), true),
      (b.in_progress_at, b.id, 'batch_status_changed',
       jsonb_build_object('from', 'validating', 'to', 'in_progress'), true),
      (b.remote_finished_at, b.id, 'batch_status_changed',
       jsonb_build_object('from', 'finalizing', 'to', 'completed'), true),
      (b.finished_at, b.id, 'batch_ingested',
       jsonb_build_object('succeeded', b.succeeded_count, 'failed', b.failed_count,
                          'cost', b.cost::text, 'worker', 'bench-host:4242'), true)
  ) AS e(at, batch_id, kind, detail, keep)
 WHERE e.keep
UNION ALL
SELECT j.finished_at, j.id, NULL, 'job_completed',
       jsonb_build_object('succeeded', j.succeeded_count, 'failed', j.failed_count,
                          'total_tokens', j.total_tokens, 'cost', j.cost::text)
  FROM orchestrator.jobs j
 ORDER BY 1
"""

FINISH = [
    "SELECT setval(pg_get_serial_sequence('orchestrator.jobs', 'id'), max(id)) "
    "FROM orchestrator.jobs",
    "SELECT setval(pg_get_serial_sequence('orchestrator.batches', 'id'), max(id)) "
    "FROM orchestrator.batches",
    "SELECT setval(pg_get_serial_sequence('orchestrator.requests', 'seq'), max(seq)) "
    "FROM orchestrator.requests",
    "DROP TABLE public.bench_plan",
    "DROP TABLE public.bench_bodies",
]

TABLES = ("results", "requests", "batches", "batch_model_costs", "jobs", "events", "prices")


def session_settings(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET synchronous_commit = off")
    conn.execute("SET work_mem = '64MB'")


@dataclass
class Timer:
    steps: dict[str, float]

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.steps[name] = self.steps.get(name, 0.0) + time.perf_counter() - started


def fill(db_url: str, results: int, jobs: int, workers: int) -> dict[str, Any]:
    """The whole fill; returns its timings (seconds per step, wall clock)."""
    timer = Timer({})
    started = time.perf_counter()
    with psycopg.connect(db_url, autocommit=True) as conn:
        session_settings(conn)
        with timer.step("plan, prices, jobs, batches"):
            conn.execute(PLAN, {"jobs": jobs, "results": results, "days": DAYS})
            models = sorted({m for ms in (*MODELS.values(), *MIX.values()) for m in ms})
            conn.execute(
                BODIES,
                {
                    "text": TEXT,
                    "models": models,
                    "variants": VARIANTS,
                    "reasoning": list(REASONING),
                },
            )
            for sql in SCRATCH_INDEXES:
                conn.execute(sql)
            for row in PRICES:
                conn.execute(PRICES_SQL, (row[0], row[1], DAYS + 30, *row[2:]))
            for row in CHANGES:
                conn.execute(PRICES_SQL, (row[0], row[1], DAYS // 2, *row[2:]))
            # Jobs are enqueued as pending (a trigger insists); they complete at the end.
            conn.execute(JOBS)
            conn.execute(BATCHES)
        bounds = chunk_bounds(conn)

    lock = threading.Lock()
    done = [0]
    local = threading.local()
    connections: list[psycopg.Connection[Any]] = []

    def run_chunk(lo: int, hi: int) -> dict[str, float]:
        if not hasattr(local, "conn"):
            local.conn = psycopg.connect(db_url)
            session_settings(local.conn)
            local.conn.commit()
            with lock:
                connections.append(local.conn)
        conn = local.conn
        spent: dict[str, float] = {}
        params = {
            "lo": lo,
            "hi": hi,
            "failed_body": json.dumps({"error": FAILURE}),
            "failed_error": json.dumps(FAILURE),
        }
        for name, sql in (
            ("requests", REQUESTS),
            ("results", RESULTS_SQL),
            ("batch_model_costs", MODEL_COSTS),
            ("batch totals", BATCH_TOTALS),
        ):
            t = time.perf_counter()
            conn.execute(sql, params)
            spent[name] = time.perf_counter() - t
        conn.commit()
        with lock:
            done[0] += 1
            if done[0] % max(1, len(bounds) // 10) == 0 or done[0] == len(bounds):
                print(
                    f"  {done[0]}/{len(bounds)} chunks, {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
        return spent

    parts: dict[str, float] = {}
    with timer.step("requests, results, batch_model_costs, batch totals (in parallel)"):
        try:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                for spent in pool.map(lambda b: run_chunk(*b), bounds):
                    for name, seconds in spent.items():
                        key = f"  of which {name} (seconds summed over the connections)"
                        parts[key] = parts.get(key, 0.0) + seconds
        finally:
            for c in connections:
                c.close()
    timer.steps.update(parts)
    with psycopg.connect(db_url, autocommit=True) as conn:
        session_settings(conn)
        with timer.step("job totals, events, sequences"):
            conn.execute(JOB_TOTALS)
            conn.execute(EVENTS)
            for sql in FINISH:
                conn.execute(sql)
        with timer.step("ANALYZE"):
            conn.execute("ANALYZE")
        with timer.step("CHECKPOINT (none is to run while queries are timed)"):
            conn.execute("CHECKPOINT")
    return {
        "seconds": time.perf_counter() - started,
        "steps": timer.steps,
        "workers": workers,
        "chunks": len(bounds),
    }


def chunk_bounds(conn: psycopg.Connection[Any]) -> list[tuple[int, int]]:
    """Ranges of job ids holding about CHUNK_REQUESTS requests each."""
    rows = conn.execute(
        "SELECT job_id, size FROM public.bench_plan WHERE part < 2 ORDER BY job_id"
    ).fetchall()
    bounds, lo, held = [], None, 0
    for job_id, size in rows:
        lo = job_id if lo is None else lo
        held += size
        if held >= CHUNK_REQUESTS:
            bounds.append((lo, job_id))
            lo, held = None, 0
    if lo is not None:
        bounds.append((lo, rows[-1][0]))
    return bounds


def table_sizes(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    out = []
    for table in TABLES:
        rows, heap, toast, indexes, total = conn.execute(
            f"""
            SELECT (SELECT count(*) FROM orchestrator.{table}),
                   pg_relation_size(c.oid),
                   pg_total_relation_size(c.oid) - pg_relation_size(c.oid)
                       - pg_indexes_size(c.oid),
                   pg_indexes_size(c.oid), pg_total_relation_size(c.oid)
              FROM pg_class c WHERE c.oid = 'orchestrator.{table}'::regclass
            """
        ).fetchone() or (0, 0, 0, 0, 0)
        out.append(
            {
                "table": table,
                "rows": rows,
                "heap_bytes": heap,
                "toast_bytes": toast,
                "index_bytes": indexes,
                "total_bytes": total,
            }
        )
    return out


def pick_jobs(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Near the middle of the period: a job of about REQUESTS_PER_JOB requests in one batch (and
    that batch), and one of about BIG_JOB requests (the largest there is, on a small fill)."""
    middle = "abs(j.id - (SELECT max(id) / 2 FROM orchestrator.jobs))"
    job, requests, batch = conn.execute(
        f"""
        SELECT j.id, j.request_count, min(b.id)
          FROM orchestrator.jobs j JOIN orchestrator.batches b ON b.job_id = j.id
         WHERE j.batch_count = 1
         GROUP BY j.id
         ORDER BY abs(j.request_count - %s), {middle}
         LIMIT 1
        """,
        (REQUESTS_PER_JOB,),
    ).fetchone() or (0, 0, 0)
    big, big_requests = conn.execute(
        f"SELECT j.id, j.request_count FROM orchestrator.jobs j "
        f"ORDER BY abs(j.request_count - %s) / 500, {middle} LIMIT 1",
        (BIG_JOB,),
    ).fetchone() or (0, 0)
    return {
        "job": job,
        "job_requests": requests,
        "batch": batch,
        "big_job": big,
        "big_job_requests": big_requests,
    }


# -- the queries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    label: str
    sql: str
    baseline: str | None  # the same shape on the raw tables, without the view's extras
    baseline_label: str = ""


def queries(picked: dict[str, int]) -> list[Query]:
    job, batch, big = picked["job"], picked["batch"], picked["big_job"]
    cost_30 = "WHERE day >= now() - interval '30 days'"
    raw_by_day = """
        SELECT date_trunc('day', b.finished_at) AS day, b.target, m.model,
               sum(m.total_tokens) AS total_tokens, sum(m.cost) AS cost
          FROM orchestrator.batch_model_costs m
          JOIN orchestrator.batches b ON b.id = m.batch_id {where}
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
    plain_join = """
        SELECT q.custom_id, r.succeeded, r.response #>> '{{choices,0,message,content}}',
               r.total_tokens
          FROM orchestrator.requests q
          LEFT JOIN orchestrator.results r ON r.job_id = q.job_id AND r.custom_id = q.custom_id
         WHERE q.job_id = {job} ORDER BY q.seq"""
    grafana = """
        SELECT date_trunc('day', finished_at) AS time, target, sum(total_tokens) AS tokens
          FROM orchestrator.batches
         WHERE state = 'done' AND finished_at >= now() - interval '{days} days'
         GROUP BY 1, 2 ORDER BY 1, 2"""
    return [
        Query(
            "cost_by_day, last 30 days",
            f"SELECT * FROM orchestrator.cost_by_day {cost_30} ORDER BY day, target, model",
            raw_by_day.format(
                where="WHERE date_trunc('day', b.finished_at) >= now() - interval '30 days'"
            ),
            "batch_model_costs ⋈ batches, sums by day × target × model",
        ),
        Query(
            "cost_by_day, all (90 days)",
            "SELECT * FROM orchestrator.cost_by_day ORDER BY day DESC, target, model",
            raw_by_day.format(where=""),
            "the same, whole period",
        ),
        Query(
            "job_summary, latest 50 jobs",
            "SELECT * FROM orchestrator.job_summary ORDER BY job_id DESC LIMIT 50",
            "SELECT * FROM orchestrator.jobs ORDER BY id DESC LIMIT 50",
            "jobs, latest 50",
        ),
        Query(
            "job_summary, one job",
            f"SELECT * FROM orchestrator.job_summary WHERE job_id = {job}",
            f"SELECT * FROM orchestrator.jobs WHERE id = {job}",
            "jobs, one row",
        ),
        Query(
            "request_results, one job in seq order",
            "SELECT custom_id, status, answer, cost FROM orchestrator.request_results "
            f"WHERE job_id = {job} ORDER BY seq",
            plain_join.format(job=job),
            "requests ⟕ results, answer text",
        ),
        Query(
            "request_results, its first page (100)",
            "SELECT custom_id, status, answer, cost FROM orchestrator.request_results "
            f"WHERE job_id = {job} ORDER BY seq LIMIT 100",
            plain_join.format(job=job) + " LIMIT 100",
            "the same, 100",
        ),
        Query(
            f"request_results, a job of {picked['big_job_requests']:,} requests",
            "SELECT custom_id, status, answer, cost FROM orchestrator.request_results "
            f"WHERE job_id = {big} ORDER BY seq",
            plain_join.format(job=big),
            "requests ⟕ results, answer text",
        ),
        Query(
            "request_results, one job by status",
            "SELECT status, count(*), sum(total_tokens), sum(cost) "
            f"FROM orchestrator.request_results WHERE job_id = {job} GROUP BY status",
            "SELECT succeeded, count(*), sum(total_tokens) FROM orchestrator.results "
            f"WHERE job_id = {job} GROUP BY succeeded",
            "results of the job: count, sum",
        ),
        Query(
            "batches_by_state",
            "SELECT * FROM orchestrator.batches_by_state",
            "SELECT target, state, count(*) FROM orchestrator.batches GROUP BY 1, 2",
            "batches: count by target × state",
        ),
        Query(
            "Grafana: tokens per day from batches (30 days)",
            grafana.format(days=30),
            "SELECT day, target, sum(total_tokens) FROM orchestrator.cost_by_day "
            f"{cost_30} GROUP BY 1, 2 ORDER BY 1, 2",
            "the same figure from cost_by_day",
        ),
        Query(
            "Grafana: tokens per day from batches (90 days)",
            grafana.format(days=DAYS),
            "SELECT day, target, sum(total_tokens) FROM orchestrator.cost_by_day "
            "GROUP BY 1, 2 ORDER BY 1, 2",
            "the same figure from cost_by_day",
        ),
        Query(
            "(daemon) a batch's results per model, record_model_costs",
            "SELECT COALESCE(r.model, ''), count(*), sum(r.prompt_tokens), "
            "sum(r.completion_tokens), sum(r.cached_tokens), sum(r.reasoning_tokens), "
            f"sum(r.total_tokens) FROM orchestrator.results r WHERE r.batch_id = {batch} "
            "GROUP BY 1",
            "SELECT COALESCE(r.model, ''), count(*), sum(r.prompt_tokens), "
            "sum(r.completion_tokens), sum(r.cached_tokens), sum(r.reasoning_tokens), "
            f"sum(r.total_tokens) FROM orchestrator.results r WHERE r.job_id = {job} "
            "GROUP BY 1",
            "the same rows found by job_id (the primary key)",
        ),
    ]


def timed(conn: psycopg.Connection[Any], sql: str, runs: int) -> dict[str, Any]:
    seconds, rows = [], 0
    for i in range(runs):
        started = time.perf_counter()
        rows = len(conn.execute(sql).fetchall())
        seconds.append(time.perf_counter() - started)
        if i == 1 and min(seconds) > 5 * SLOW:  # two runs are enough to say it is slow
            break
    return {
        "runs": seconds,
        "median": statistics.median(seconds),
        "max": max(seconds),
        "rows": rows,
    }


def explain(conn: psycopg.Connection[Any], sql: str) -> str:
    rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}").fetchall()
    return "\n".join(str(r[0]) for r in rows)


def time_all(conn: psycopg.Connection[Any], qs: list[Query], runs: int) -> list[dict[str, Any]]:
    out = []
    for q in qs:
        view = timed(conn, q.sql, runs)
        base = timed(conn, q.baseline, runs) if q.baseline else None
        entry: dict[str, Any] = {
            "label": q.label,
            "sql": " ".join(q.sql.split()),
            "view": view,
            "baseline": base,
            "baseline_label": q.baseline_label,
            "baseline_sql": " ".join(q.baseline.split()) if q.baseline else None,
        }
        if view["median"] > EXPLAIN_OVER:
            entry["explain"] = explain(conn, q.sql)
        out.append(entry)
        base_text = f"; baseline {base['median'] * 1000:,.1f} ms" if base else ""
        print(
            f"  {q.label}: median {view['median'] * 1000:,.1f} ms, max "
            f"{view['max'] * 1000:,.1f} ms, {view['rows']:,} rows{base_text}",
            flush=True,
        )
    return out


def apply_ddl(conn: psycopg.Connection[Any], statements: list[str]) -> list[dict[str, Any]]:
    out = []
    for ddl in statements:
        before = set(
            r[0]
            for r in conn.execute(
                "SELECT oid FROM pg_class WHERE relnamespace = 'orchestrator'::regnamespace"
            ).fetchall()
        )
        started = time.perf_counter()
        conn.execute(ddl)
        seconds = time.perf_counter() - started
        created = conn.execute(
            "SELECT relname, pg_relation_size(oid) FROM pg_class "
            "WHERE relnamespace = 'orchestrator'::regnamespace AND NOT oid = ANY(%s)",
            (list(before),),
        ).fetchall()
        out.append(
            {
                "ddl": ddl,
                "seconds": seconds,
                "created": [{"name": n, "bytes": b} for n, b in created],
            }
        )
        print(
            f"  {short(ddl)}: {seconds:.1f} s"
            + "".join(f"; {n} {b / MB:,.0f} MB" for n, b in created)
        )
    conn.execute("ANALYZE")
    return out


# -- the report ----------------------------------------------------------------------------------


def short(sql: str, width: int = 100) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def ms(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:,.1f} s"
    if seconds >= 1:
        return f"{seconds:,.2f} s"
    if seconds >= 0.1:
        return f"{seconds * 1000:,.0f} ms"
    return f"{seconds * 1000:,.1f} ms"


def report(
    meta: dict[str, Any],
    filled: dict[str, Any],
    sizes: list[dict[str, Any]],
    rounds: list[dict[str, Any]],
) -> str:
    out = [
        "",
        f"reporting views benchmark (issue 11): {meta['results']:,} results in "
        f"{meta['jobs']:,} jobs over {DAYS} days; PostgreSQL {meta['postgres']} "
        f"({meta['server']}); {meta['cpus']} CPUs, load average {meta['load_average_before'][0]:.1f} "
        f"before, {meta['load_average_after'][0]:.1f} after",
        "settings: " + ", ".join(f"{k} {v}" for k, v in meta["settings"].items()),
        "",
        f"fill: {filled['seconds']:.0f} s ({filled['workers']} connections, "
        f"{filled['chunks']} chunks)",
    ]
    for name, seconds in filled["steps"].items():
        out.append(f"   {name:<72}{seconds:>7.1f} s")
    out += ["", f"   {'table':<20}{'rows':>12}{'heap':>10}{'toast':>9}{'indexes':>10}{'total':>10}"]
    for s in sizes:
        out.append(
            f"   {s['table']:<20}{s['rows']:>12,}{s['heap_bytes'] / MB:>7,.0f} MB"
            f"{s['toast_bytes'] / MB:>6,.0f} MB{s['index_bytes'] / MB:>7,.0f} MB"
            f"{s['total_bytes'] / MB:>7,.0f} MB"
        )
    out.append(f"   {'all':<32}{sum(s['total_bytes'] for s in sizes) / MB:>46,.0f} MB")
    for r in rounds:
        out += ["", f"{r['title']} — median / max of {meta['runs']} runs, client side:"]
        if r.get("ddl"):
            for d in r["ddl"]:
                made = "".join(f", {c['name']} {c['bytes'] / MB:,.0f} MB" for c in d["created"])
                out.append(f"   after {short(d['ddl'])} ({d['seconds']:.1f} s{made})")
        out.append(f"   {'query':<58}{'rows':>7}{'view':>22}   baseline")
        for q in r["queries"]:
            v, b = q["view"], q["baseline"]
            base = f"{ms(b['median'])} / {ms(b['max'])} ({q['baseline_label']})" if b else "—"
            flag = "  <-- over 1 s" if v["median"] > SLOW else ""
            out.append(
                f"   {q['label']:<58}{v['rows']:>7,}{ms(v['median']):>11} / {ms(v['max']):<9}"
                f"   {base}{flag}"
            )
        for q in r["queries"]:
            if "explain" in q:
                out += ["", f"   EXPLAIN (ANALYZE, BUFFERS) of {q['label']}:"]
                out += ["     " + line for line in q["explain"].splitlines()]
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--results", type=int, default=RESULTS, help="requests, each with a result")
    parser.add_argument(
        "--jobs", type=int, help=f"jobs (default: one per {REQUESTS_PER_JOB:,} results)"
    )
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each query")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, help="connections filling"
    )
    parser.add_argument("--db-url", help="a server where databases may be created")
    parser.add_argument(
        "--extra-ddl",
        action="append",
        default=[],
        help="a statement to apply after the first round; every query is timed again",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database (print its URL)")
    args = parser.parse_args(argv)
    if args.jobs is None:
        args.jobs = max(1, round(args.results / REQUESTS_PER_JOB))
    if args.results < 1 or args.jobs < 1 or args.jobs > args.results:
        parser.error("--results and --jobs must be positive, with no more jobs than results")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from orchestrator.db.migrate import upgrade

    started = time.monotonic()
    load_before = os.getloadavg()
    with pg_server(args.db_url) as (server, where):
        dbs = Databases(server, "bench_reports")
        try:
            name = dbs.create("db")
            url = dbs.url(name)
            upgrade(url)
            print(f"filling {name}: {args.results:,} results in {args.jobs:,} jobs ...", flush=True)
            filled = fill(url, args.results, args.jobs, args.workers)
            with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
                sizes = table_sizes(conn)
                picked = pick_jobs(conn)
                qs = queries(picked)
                print(
                    f"timing: job {picked['job']} ({picked['job_requests']:,} requests, batch "
                    f"{picked['batch']}), job {picked['big_job']} "
                    f"({picked['big_job_requests']:,} requests) ...",
                    flush=True,
                )
                rounds = [{"title": "queries", "queries": time_all(conn, qs, args.runs), "ddl": []}]
                if args.extra_ddl:
                    print("extra DDL ...", flush=True)
                    ddl = apply_ddl(conn, args.extra_ddl)
                    print("timing again ...", flush=True)
                    rounds.append(
                        {
                            "title": "queries after the extra DDL",
                            "queries": time_all(conn, qs, args.runs),
                            "ddl": ddl,
                        }
                    )
            postgres = dbs.version()
            settings = dbs.settings()
            if args.keep:
                dbs.created.remove(name)
                print(f"kept: {url}")
        finally:
            dbs.drop_all()
    meta = {
        "results": args.results,
        "jobs": args.jobs,
        **picked,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "runs": args.runs,
        "postgres": postgres,
        "server": where,
        "settings": settings,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
    }
    text = report(meta, filled, sizes, rounds)
    print(text)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "reports.json"
    document = {"meta": meta, "fill": filled, "sizes": sizes, "rounds": rounds, "report": text}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\n({meta['seconds']:.0f} s in all; written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
