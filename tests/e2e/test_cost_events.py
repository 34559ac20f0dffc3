"""Money in events and log lines: never a float, never "None". A batch's cost is its exact
decimal string, as stored (NUMERIC(20, 8)), or JSON null when nobody knows it."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import psycopg
import pytest
import structlog

from orchestrator.emulator import EmulatorConfig
from tests.support import API_KEY, enqueue, harness, query, scalar, settings_for, simple_requests

EIGHT_PLACES = re.compile(r"^-?\d+\.\d{8}$")
# Our price table, with more decimal places than a cost is kept to (so rounding shows).
INPUT, OUTPUT = Decimal("0.123457"), Decimal("0.654321")


def _event_costs(db_url: str, job_id: int) -> dict[str, tuple[Any, str]]:
    rows = query(
        db_url,
        "SELECT kind, detail->'cost', jsonb_typeof(detail->'cost') FROM orchestrator.events "
        "WHERE job_id = %s AND detail ? 'cost' ORDER BY id",
        job_id,
    )
    return {kind: (value, json_type) for kind, value, json_type in rows}


@pytest.mark.parametrize("source", ["provider", "prices", "unknown"])
def test_a_cost_in_events_and_logs_is_an_exact_decimal_string_or_null(
    db_url: str, source: str
) -> None:
    # Given a batch whose cost the provider reports (FastRouter), or that our prices give, or
    # that nobody knows (OpenAI reports none, and there is no price)
    mode = "fastrouter" if source == "provider" else "openai"
    if source == "prices":
        with psycopg.connect(db_url) as conn:
            conn.execute(
                "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, "
                "output_per_mtok) VALUES ('openai/gpt-4.1-nano', '2020-01-01', %s, %s)",
                (INPUT, OUTPUT),
            )
    config = EmulatorConfig(mode=mode, api_key=API_KEY)
    settings = settings_for(db_url, preset=mode, target=mode)
    capture = structlog.testing.capture_logs()
    with capture as lines, harness(db_url, emulator_config=config, settings=settings) as h:
        job_id = enqueue(db_url, simple_requests(7), target=mode)
        # When the job runs through
        assert h.run_job(job_id) == "completed"

    batch_cost, cost_source, usage_cost, prompt, completion = query(
        db_url,
        "SELECT cost, cost_source, usage->>'cost', prompt_tokens, completion_tokens "
        "FROM orchestrator.batches WHERE job_id = %s",
        job_id,
    )[0]
    job_cost = scalar(db_url, "SELECT cost FROM orchestrator.jobs WHERE id = %s", job_id)
    costs = _event_costs(db_url, job_id)
    ingested = [e for e in lines if e["event"] == "batch_ingested"]
    completed = [e for e in lines if e["event"] == "job_completed"]
    assert len(ingested) == len(completed) == 1

    if source == "unknown":
        # Then the events say null (not "None", not 0), and so do the log lines
        assert batch_cost is None and job_cost is None and cost_source == "none"
        assert costs == {"batch_ingested": (None, "null"), "job_completed": (None, "null")}
        assert ingested[0]["cost"] is None and completed[0]["cost"] is None
        return

    # Then the cost is what the provider reported, or what our prices give, to the digit
    # (rounded once, as PostgreSQL rounds, to the 8 places it is kept to)
    if source == "provider":
        assert cost_source == "provider" and usage_cost is not None
        exact = Decimal(usage_cost)  # the provider's number, as the JSON spelled it
    else:
        assert cost_source == "prices" and usage_cost is None
        exact = (prompt * INPUT + completion * OUTPUT) / Decimal(1_000_000)
    assert exact > 0
    expected = exact.quantize(Decimal("0.00000001"), rounding=ROUND_HALF_UP)
    assert batch_cost == expected and job_cost == expected
    # And the events hold that very amount as a decimal string: the batch's and the job's alike
    text = format(expected, "f")
    assert EIGHT_PLACES.match(text)
    assert costs == {"batch_ingested": (text, "string"), "job_completed": (text, "string")}
    # And so do the log lines
    assert ingested[0]["cost"] == text and completed[0]["cost"] == text
