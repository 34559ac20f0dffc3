"""What providers and proxies we did not write do (issue 10): a create carried out after the
client gave up, a completed batch whose files are missing, unreadable, cut short or "not found",
status calls that fail for days, a batch stuck past its expires_at. In process, on a manual clock
shared with the emulator (over real HTTP): nothing is lost, nothing is paid twice, and a batch that
cannot be finished says so, visibly, and can be collected later."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math

import pytest
import structlog

from orchestrator.cli import main
from orchestrator.emulator.faults import Gzipped, HtmlPage, LateApply, TruncatedBody
from tests.support import (
    FAST,
    Harness,
    assert_results_match_provider,
    count,
    enqueue,
    events,
    failures,
    openai_harness,
    query,
    scalar,
    simple_requests,
)


def _remote_status(h: Harness, remote_id: str) -> str:
    return h.deps.clients("openai").get_batch(remote_id).status


def _cli(monkeypatch: pytest.MonkeyPatch, db_url: str, *argv: str) -> int:
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", db_url)
    try:
        return main(list(argv))
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()


# -- item 2: a create the server carries out after the client gave up --------------------------


def test_a_create_applied_after_the_client_timed_out_is_found_by_waiting_not_created_twice(
    db_url: str,
) -> None:
    # Given a 3 s client timeout and a server that carries the create out 8 s after it answered
    # 504 (the case: reconcile used to list at +6 s, find nothing and create again)
    with openai_harness(db_url, timeout_seconds=3.0, create_settle_seconds=10.0) as h:
        h.emulator.faults.add("create_batch", LateApply(8.0), times=1)
        job_id = enqueue(db_url, simple_requests(10), target="openai")
        assert h.run_job(job_id, seconds=1) == "completed"
        created = h.emulator.ledger.batches
        # Then reconcile waited until the create could no longer land, found it and adopted it:
        # one remote batch, paid once
        assert len(created) == 1
        assert scalar(db_url, "SELECT remote_batch_id FROM orchestrator.batches") == created[0].id
        assert assert_results_match_provider(db_url, h.emulator) == 10
        lists = h.emulator.ledger.calls_to("list_batches")
        assert lists and min(c.at for c in lists) >= created[0].created_at
    kinds = events(db_url, job_id)
    assert "batch_create_ambiguous" in kinds and "batch_adopted" in kinds


def test_a_create_that_lands_after_it_was_created_again_is_cancelled_as_an_orphan(
    db_url: str,
) -> None:
    with openai_harness(db_url, timeout_seconds=3.0, create_settle_seconds=10.0) as h:
        # Given a create that the server carries out 10 minutes after answering 504: later than
        # any wait, so reconcile finds nothing and creates again
        h.emulator.faults.add("create_batch", LateApply(600.0), times=1)
        job_id = enqueue(db_url, simple_requests(10), target="openai")
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1, seconds=2)
        assert len(h.emulator.ledger.batches) == 1
        # When the late create lands, and the orphan sweep runs
        h.clock.advance(600)
        h.emulator.run_due()
        created = h.emulator.ledger.batches
        assert len(created) == 2
        reports = h.daemon.sweep_orphans(force=True)
        # Then the one that was not adopted is cancelled, and that is in the ledger
        adopted = scalar(db_url, "SELECT remote_batch_id FROM orchestrator.batches")
        orphan = next(b.id for b in created if b.id != adopted)
        assert [(r.orphans, r.cancelled) for r in reports] == [(1, 1)]
        assert _remote_status(h, orphan) in ("cancelling", "cancelled")
        assert _remote_status(h, adopted) not in ("cancelling", "cancelled")
        assert query(
            db_url,
            "SELECT remote_batch_id, target, cancelled_at IS NOT NULL "
            "FROM orchestrator.orphan_batches",
        ) == [(orphan, "openai", True)]
        assert scalar(db_url, "SELECT orphans_cancelled FROM orchestrator.batches") == 1
        metric = h.deps.metrics.orphans_cancelled.labels("openai")._value.get()
        assert metric == 1
        # and a second sweep finds it again but counts nothing twice
        assert [(r.orphans, r.cancelled) for r in h.daemon.sweep_orphans(force=True)] == [(1, 0)]
        assert scalar(db_url, "SELECT orphans_cancelled FROM orchestrator.batches") == 1
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 10
    kinds = events(db_url, job_id)
    assert kinds.count("batch_orphan_found") == 1 and kinds.count("batch_orphan_cancelled") == 1


def test_the_sweep_leaves_alone_a_create_in_flight_and_batches_of_other_installations(
    db_url: str,
) -> None:
    with openai_harness(db_url, timeout_seconds=3.0, create_settle_seconds=3600.0) as h:
        # Given a create in flight (answer lost, reconcile still waiting) and a batch that
        # someone else created on the same account with a key that is not ours
        h.emulator.faults.add("create_batch", LateApply(5.0), times=1)
        job_id = enqueue(db_url, simple_requests(4), target="openai")
        h.run_until(lambda: bool(h.emulator.ledger.calls_to("create_batch")), seconds=1)
        h.step(10)
        h.emulator.run_due()
        assert len(h.emulator.ledger.batches) == 1
        assert scalar(db_url, "SELECT state FROM orchestrator.batches") == "creating"
        # When the sweep runs
        report = h.daemon.sweep_orphans(force=True)
        # Then nothing is cancelled: the create in flight is reconcile's to adopt
        assert [(r.orphans, r.cancelled) for r in report] == [(0, 0)]
        assert count(db_url, "orphan_batches") == 0
        h.clock.advance(3600)
        assert h.run_job(job_id) == "completed"
        assert len(h.emulator.ledger.batches) == 1
        assert assert_results_match_provider(db_url, h.emulator) == 4


# -- items 3 and 4: a completed batch whose files cannot be read whole (yet) --------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"batch": {"hide_output": 120.0}}, id="output_file_id-null-for-2-min"),
        pytest.param({"rule": ("file_content", HtmlPage(), 3)}, id="html-page-instead-of-file"),
        pytest.param(
            {"rule": ("file_content", TruncatedBody(0.3, clean=True), 2)},
            id="body-ends-cleanly-short",
        ),
        pytest.param({"status": ("file_content", 404, 14)}, id="404-for-over-a-minute"),
        pytest.param({"rule": ("file_content", Gzipped(), None)}, id="files-sent-gzip-encoded"),
    ],
)
def test_a_completed_batch_whose_files_are_not_readable_yet_is_read_later_never_resubmitted(
    db_url: str, fault: dict[str, object]
) -> None:
    with openai_harness(db_url) as h:
        if "batch" in fault:
            h.emulator.faults.add_batch_fault(**fault["batch"])  # type: ignore[arg-type]
        elif "rule" in fault:
            route, rule, times = fault["rule"]  # type: ignore[misc]
            h.emulator.faults.add(route, rule, times=times)
        else:
            route, status, times = fault["status"]  # type: ignore[misc]
            h.emulator.faults.add(route, status=status, times=times)
        job_id = enqueue(db_url, simple_requests(8), target="openai")
        assert h.run_job(job_id) == "completed"
        # Then every result is the provider's, from the one batch it ran: nothing was sent again
        assert len(h.emulator.ledger.batches) == 1
        assert count(db_url, "batches") == 1
        assert assert_results_match_provider(db_url, h.emulator) == 8
        assert count(db_url, "results", "succeeded") == 8
        assert scalar(db_url, "SELECT error FROM orchestrator.jobs") is None


def test_files_that_stay_unreadable_past_the_patience_fail_the_batch_clearly_and_reingest_collects(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = dataclasses.replace(FAST, patience_seconds=3600.0, stuck_after_seconds=600.0)
    with openai_harness(db_url, daemon=daemon) as h:
        # Given a completed batch whose output_file_id stays null for 5 hours (and whose lines,
        # once readable, hold some 500s to be sent again)
        h.emulator.faults.add_batch_fault(hide_output=5 * 3600.0, line_500=0.5)
        job_id = enqueue(db_url, simple_requests(12), target="openai")
        assert h.run_job(job_id, seconds=60) == "failed"
        batch_id, error, remote = query(
            db_url, "SELECT id, last_error, remote_batch_id FROM orchestrator.batches"
        )[0]
        # Then, after an hour of trying, the batch is given up with a message that says what
        # was wrong, for how long, and how to collect it later; nothing was sent again
        job_error = scalar(db_url, "SELECT error FROM orchestrator.jobs")
        assert job_error == error
        assert "gave up after 1h" in error
        assert "result files hold lines for 0 of the 12 requests" in error
        assert f"orchestrator reingest {batch_id}" in error
        assert len(h.emulator.ledger.batches) == 1
        gave_up = "NOT succeeded AND error->>'code' = 'patience_exhausted'"
        assert count(db_url, "results", gave_up) == 12
        # every request carries the batch's reason, with no status: none of its lines was read
        assert failures(db_url) == {
            (f"req-{i:05d}", None, "patience_exhausted", error) for i in range(12)
        }
        # When the files show up and an operator runs reingest
        h.clock.advance(5 * 3600)
        assert _cli(monkeypatch, db_url, "reingest", str(batch_id)) == 0
        assert h.run_job(job_id) == "completed"
        # Then every result is the provider's: the successes of the first batch, and the 500s
        # sent again in a second round as usual; the job's counts are exact
        assert assert_results_match_provider(db_url, h.emulator) == 12
        rounds = query(
            db_url, "SELECT round, remote_batch_id FROM orchestrator.batches ORDER BY id"
        )
        assert rounds[0] == (1, remote) and [r for r, _ in rounds] == [1, 2]
        assert count(db_url, "results", "attempt = 2") > 0
        # (those sent again are the ones the provider answered 500 in the first batch)
        first_500s = {
            line["custom_id"]
            for line in h.emulator.produced(remote)
            if (line.get("response") or {}).get("status_code") == 500
        }
        again = query(db_url, "SELECT custom_id FROM orchestrator.results WHERE attempt = 2")
        assert first_500s and {r[0] for r in again} == first_500s
        assert query(
            db_url, "SELECT succeeded_count, failed_count, error FROM orchestrator.jobs"
        ) == [(12, 0, None)]
        assert len(h.emulator.ledger.batches) == 2
    assert "batch_reingest_requested" in events(db_url, job_id)


def test_files_short_past_the_patience_keep_what_they_hold_and_fail_the_rest(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (found by the lifecycle model: a provider whose files lacked most lines for good had the
    # few successes they held thrown away with the batch when it was given up)
    daemon = dataclasses.replace(FAST, patience_seconds=600.0)
    with openai_harness(db_url, daemon=daemon) as h:
        # Given a provider that counts 20 requests done but writes the lines of only a few
        h.emulator.faults.add_batch_fault(missing_lines=0.8, times=1)
        query(
            db_url,
            "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, "
            "output_per_mtok) VALUES ('openai/gpt-4.1-nano', '2020-01-01', 1, 2) RETURNING model",
        )
        job_id = enqueue(db_url, simple_requests(20), target="openai")
        # When the files stay short for the whole patience
        assert h.run_job(job_id, seconds=30) == "failed"
        [remote] = h.emulator.ledger.batches
        answered = {line["custom_id"] for line in h.emulator.produced(remote.id)}
        # Then every success they held is kept, as the provider wrote it
        assert 0 < len(answered) < 10
        assert assert_results_match_provider(db_url, h.emulator) == len(answered)
        assert len(h.emulator.ledger.batches) == 1  # and nothing was sent again
        error = scalar(db_url, "SELECT error FROM orchestrator.jobs WHERE id = %s", job_id)
        assert error.startswith("ingest failed: gave up after 10m")
        assert f"the result files hold lines for {len(answered)} of the 20 requests" in error
        assert error.endswith("can be collected later with: orchestrator reingest 1")
        # and the others failed for good, saying why
        missing = {f"req-{i:05d}" for i in range(20)} - answered
        assert failures(db_url) == {(cid, None, "patience_exhausted", error) for cid in missing}
        assert query(
            db_url,
            "SELECT state, succeeded_count, failed_count, retried_count, last_error "
            "FROM orchestrator.batches",
        ) == [("failed", len(answered), len(missing), 0, error)]
        cost = scalar(db_url, "SELECT cost FROM orchestrator.batches")
        assert query(
            db_url,
            "SELECT succeeded_count, failed_count, cost FROM orchestrator.jobs WHERE id = %s",
            job_id,
        ) == [(len(answered), len(missing), cost)]
        assert cost > 0
        # When the operator reingests it and the files are as short as ever (found by the
        # model: the job then counted the batch's cost twice)
        assert _cli(monkeypatch, db_url, "reingest", "1") == 0
        assert h.run_job(job_id, seconds=30) == "failed"
        assert assert_results_match_provider(db_url, h.emulator) == len(answered)
    # Then it is given up the same way, and counted once
    assert query(
        db_url,
        "SELECT j.succeeded_count, j.failed_count, j.cost, b.cost FROM orchestrator.jobs j "
        "JOIN orchestrator.batches b ON b.job_id = j.id",
    ) == [(len(answered), len(missing), cost, cost)]


def test_a_404_on_the_output_file_past_the_patience_names_the_file(db_url: str) -> None:
    daemon = dataclasses.replace(FAST, patience_seconds=1800.0)
    with openai_harness(db_url, daemon=daemon) as h:
        h.emulator.faults.add("file_content", status=404, times=None)
        job_id = enqueue(db_url, simple_requests(3), target="openai")
        assert h.run_job(job_id, seconds=60) == "failed"
        output = scalar(db_url, "SELECT output_file_id FROM orchestrator.batches")
        error = scalar(db_url, "SELECT error FROM orchestrator.jobs")
        assert output and f"result file {output}" in error and "gave up after 30m" in error
        assert len(h.emulator.ledger.batches) == 1
    # and so does every request of it
    assert error.startswith("ingest failed: ")
    assert failures(db_url) == {
        (f"req-{i:05d}", None, "patience_exhausted", error) for i in range(3)
    }


def test_reingest_refuses_a_batch_that_is_not_failed(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with openai_harness(db_url) as h:
        job_id = enqueue(db_url, simple_requests(2), target="openai")
        assert h.run_job(job_id) == "completed"
    batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches")
    assert _cli(monkeypatch, db_url, "reingest", str(batch_id)) == 1
    err = capsys.readouterr().err
    assert f"batch {batch_id} is done; only a failed batch can be ingested again" in err
    assert "Traceback" not in err


# -- item 7: transient errors for ever, and a batch stuck past its expires_at ------------------


def test_status_calls_failing_for_ever_show_as_stuck_then_fail_with_the_last_error_and_its_age(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    daemon = dataclasses.replace(FAST, patience_seconds=4 * 3600.0, stuck_after_seconds=1800.0)
    # (the clock starts 2 h back, so that `orchestrator status`, on the system clock, sees the
    # hour of failures this test goes through)
    with openai_harness(db_url, daemon=daemon, behind=7200.0) as h:
        job_id = enqueue(db_url, simple_requests(5), target="openai")
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1, seconds=1)
        # Given a provider whose every status call answers 503
        h.emulator.faults.add("get_batch", status=503, message="upstream down", times=None)
        for _ in range(12):  # an hour of virtual time
            h.step(300)
        # Then long before giving up, the batch shows as stuck: status, /healthz, metric
        assert h.job_status(job_id) == "running"
        h.daemon.tick(wait=True)
        ok, health = h.daemon.health()
        assert ok and health["status"] == "degraded"
        [stuck] = health["stuck_batches"]
        assert stuck["state"] == "submitted" and "upstream down" in stuck["last_error"]
        assert stuck["for_seconds"] >= 1800
        h.daemon.refresh_metrics()
        assert h.deps.metrics.stuck_batches.labels("openai")._value.get() == 1
        capsys.readouterr()
        assert _cli(monkeypatch, db_url, "status") == 0
        out = capsys.readouterr().out
        assert "STUCK batch" in out and "failing for" in out and "upstream down" in out
        # When it goes on past the patience (4 h)
        assert h.run_job(job_id, seconds=300) == "failed"
        error = scalar(db_url, "SELECT error FROM orchestrator.jobs")
        # Then the batch fails, naming the last error and how long it has been failing
        assert "poll failed: gave up after 4h" in error and "upstream down" in error
        assert "orchestrator reingest" in error
        # and a metric that was right while it was stuck goes back to 0 once it is not
        h.daemon.refresh_metrics()
        assert h.deps.metrics.stuck_batches.labels("openai")._value.get() == 0
        # When the provider answers again, reingest collects what it produced
        h.emulator.faults.clear()
        batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches")
        assert _cli(monkeypatch, db_url, "reingest", str(batch_id)) == 0
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 5
        assert len(h.emulator.ledger.batches) == 1


def test_time_no_daemon_was_running_does_not_count_against_the_patience(db_url: str) -> None:
    # (found by the lifecycle model: a daemon back from an outage longer than the patience gave a
    # batch up at its first try, although its files were fine)
    daemon = dataclasses.replace(FAST, patience_seconds=4 * 3600.0)
    with openai_harness(db_url, daemon=daemon) as h:
        job_id = enqueue(db_url, simple_requests(5), target="openai")
        h.run_until(lambda: count(db_url, "batches", "state = 'submitted'") == 1, seconds=1)
        # Given a status call that failed once (a blip), and fails once more
        h.emulator.faults.add("get_batch", status=503, message="upstream down", times=2)
        h.run_until(lambda: scalar(db_url, "SELECT step_failures FROM orchestrator.batches") == 1)
        # When no daemon runs for 5 hours, longer than the patience (the provider finishes)
        h.clock.advance(5 * 3600)
        # and the first try after that fails again
        h.daemon.tick(wait=True)
        # Then the batch is not given up: nobody tried meanwhile, so those hours are not failing
        # ones; its failures are counted from the end of the outage
        state, failures, error, since = query(
            db_url,
            "SELECT state, step_failures, last_error, failing_since FROM orchestrator.batches",
        )[0]
        assert (state, failures) == ("submitted", 2) and "upstream down" in error
        assert since >= h.clock.now() - dt.timedelta(seconds=600)
        # and it goes on to collect every result
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 5


def test_a_batch_stuck_in_finalizing_past_expires_at_shows_as_stuck_then_is_given_up(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = dataclasses.replace(FAST, patience_seconds=6 * 3600.0, stuck_after_seconds=3600.0)
    with openai_harness(db_url, daemon=daemon) as h:
        h.emulator.faults.add_batch_fault(stuck_finalizing=math.inf)
        job_id = enqueue(db_url, simple_requests(4), target="openai")
        # When it is still finalizing two hours after its expires_at (24 h after creation)
        for _ in range(26 * 6):
            h.step(600)
        assert scalar(db_url, "SELECT remote_status FROM orchestrator.batches") == "finalizing"
        # Then it shows as stuck
        h.daemon.tick(wait=True)
        ok, health = h.daemon.health()
        [stuck] = health["stuck_batches"]
        assert ok and health["status"] == "degraded"
        assert stuck["remote_status"] == "finalizing" and stuck["for_seconds"] >= 3600
        # and after the patience past expires_at it is given up, saying why
        assert h.run_job(job_id, seconds=600) == "failed"
        error = scalar(db_url, "SELECT error FROM orchestrator.jobs")
        assert "'finalizing' 6h 0m after its expires_at" in error or (
            "'finalizing' 6h" in error and "after its expires_at" in error
        )
        # When the provider finishes it after all, reingest collects it
        h.emulator.release_stuck()
        batch_id = scalar(db_url, "SELECT id FROM orchestrator.batches")
        assert _cli(monkeypatch, db_url, "reingest", str(batch_id)) == 0
        assert h.run_job(job_id) == "completed"
        assert assert_results_match_provider(db_url, h.emulator) == 4
