"""Mutation benchmark: break each promise of the README on purpose and check that a test notices.

``make mutants`` (or ``.venv/bin/python scripts/mutants.py``) runs every entry of ``MUTATIONS``:
it applies the change to a temporary copy of the repository, runs the tests that should catch it,
and prints ``caught`` (a test failed, with the first failing test), ``NOT caught`` (all passed),
``stale`` (the ``old`` text no longer occurs exactly once: the list must follow the code) or
``error`` (pytest could not run the tests: collection/import errors, a timeout, an interrupted
run; a mutation must change behaviour, not break imports). The exit code is 0 only if every
mutation was caught.

Options: ``--list``, ``--only NAME`` (repeatable), ``--jobs N`` (default 2), ``--baseline`` (run
the union of the listed tests unmutated first; they must pass), ``--timeout SECONDS`` per mutation
(default 900), ``--why`` (print the failure that caught each mutation), ``--self-check`` (prove
that the copy, not this checkout, is what the tests run). ``make mutants MUTANTS_ARGS='...'``.

How the copy is made and why it is the copy that runs
------------------------------------------------------
The files git knows about (tracked, plus untracked files that are not ignored) are copied once
into a snapshot at start-up (so edits made to the checkout during a run do not leak into it);
each mutation gets its own copy of the snapshot. pytest runs as
``<repo>/.venv/bin/python -m pytest ...`` with ``cwd`` = the copy and ``PYTHONPATH`` = the copy.

The venv holds an *editable* install of this project: a ``.pth`` file appends a meta-path finder
(``__editable___batch_orchestrator_0_1_0_finder``) mapping ``orchestrator`` to
``/work/main/orchestrator``. It is *appended* to ``sys.meta_path``, after the normal
``PathFinder``, so it is only consulted when no ``sys.path`` entry has an ``orchestrator``
package. Measured (Python 3.11): run from a directory outside the repository, ``import
orchestrator`` resolves to the checkout through that finder; run with ``cwd`` = the copy, it
resolves to the copy, because

* in the pytest process, ``-m`` puts the cwd first on ``sys.path`` (``PYTHONPATH`` and pytest's
  rootdir insertion for the ``tests`` package add the copy too);
* the daemons the tests start (``tests/support.py``: ``sys.executable -m orchestrator run`` with
  an explicit, reduced environment: no ``PYTHONPATH``) inherit the cwd, and ``-m`` puts it first on
  ``sys.path`` again. A subprocess started *without* ``-m`` (a console script such as
  ``.venv/bin/orchestrator``) would get the checkout: the tests start none today.

This is checked on every run (a probe copy imports ``orchestrator`` both ways and must find the
copy's package) and, behaviourally, by ``--self-check``: one mutation makes the copy's
``orchestrator/__main__.py`` exit at once, which a test that runs ``python -m orchestrator
migrate`` in a subprocess with a reduced environment must catch; another makes the copy's
``orchestrator/__init__.py`` raise, which must stop the pytest process itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = REPO / ".venv" / "bin" / "python"


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One deliberate bug. ``old`` must occur exactly once in ``path``; it becomes ``new``.

    ``also`` holds further (old, new) edits of the same file, applied in order after the first
    (each must then occur exactly once in the text as edited so far)."""

    name: str
    promise: str
    path: str
    old: str
    new: str
    tests: list[str]
    also: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def edits(self) -> list[tuple[str, str]]:
        return [(self.old, self.new), *self.also]


# fmt: off
# Each entry names, first, the test the README's "Guarantees" section names for its promise: the
# run shows that *that* test catches it (tests run with -x, in the order listed).
PROCESS = "tests/e2e/test_processes.py::"
RELIABILITY = "tests/e2e/test_reliability.py::"
FENCING = "tests/e2e/test_fencing.py::"
INGEST = "tests/db/test_ingest.py::"
CLAIM = "tests/db/test_claim.py::"
OPENAI_CARRIED_OUT = (
    RELIABILITY + "test_openai_a_create_the_provider_carried_out_but_never_answered_is_adopted"
    "_not_repeated"
)
ECHOED = (
    "tests/e2e/test_secrets.py::"
    "test_a_key_the_provider_echoes_in_failed_lines_or_a_failed_batch_is_stored_and_shown_nowhere"
)
MUTATIONS: list[Mutation] = [
    Mutation(
        name="fence-no-token",
        promise="a daemon that lost its lease writes nothing (every write checks the lease token)",
        path="orchestrator/db/ledger.py",
        old=".where(Batch.id == lease.id, Batch.lease_token == lease.token, Batch.state.in_(allowed))",
        new=".where(Batch.id == lease.id, Batch.state.in_(allowed))",
        tests=[FENCING + "test_a_step_that_lost_its_lease_to_another_daemon_writes_nothing",
               CLAIM + "test_a_leased_batch_is_not_claimed_until_its_lease_expires"],
    ),
    Mutation(
        name="fence-ignores-state-table",
        promise="every state write follows the transition table, checked in the same UPDATE",
        path="orchestrator/db/ledger.py",
        old=".where(Batch.id == lease.id, Batch.lease_token == lease.token, Batch.state.in_(allowed))",
        new=".where(Batch.id == lease.id, Batch.lease_token == lease.token)",
        tests=[CLAIM + "test_a_state_write_the_table_does_not_allow_is_refused"],
    ),
    Mutation(
        name="result-without-lease",
        promise="results are written in the fenced transaction that marks the batch done",
        path="orchestrator/steps.py",
        # Results committed before the fenced write: the lease is not checked first, and a lost
        # lease no longer rolls the rows back. Not `s.commit()`: inside unit_of_work the next
        # statement would then raise InvalidRequestError, a crash rather than this bug; so the
        # psycopg connection under the session is committed behind SQLAlchemy's back.
        old="        ledger.lock(s, b, BatchState.INGESTING)\n",
        new="",
        also=[(
            "            resend_not_run=resend_not_run,\n"
            "        )\n",
            "            resend_not_run=resend_not_run,\n"
            "        )\n"
            "        s.connection().connection.dbapi_connection.commit()\n",
        )],
        tests=[FENCING + "test_an_ingest_that_lost_its_lease_writes_no_result_and_downloads_nothing"],
    ),
    Mutation(
        name="lease-on-daemon-clock",
        promise="leases are judged by the database's clock, so a daemon whose clock is off takes "
                "over no live lease",
        path="orchestrator/db/ledger.py",
        old="          AND (b.lease_expires_at IS NULL OR b.lease_expires_at < now())\n",
        new="          AND (b.lease_expires_at IS NULL OR b.lease_expires_at < :now)\n",
        tests=["tests/e2e/test_clock_skew.py"],
    ),
    Mutation(
        name="lock-order-broken",
        promise="batches of one job finishing together never deadlock (one lock order)",
        path="orchestrator/db/ledger.py",
        # The ingest updates its batch row twice (the second update re-checks the foreign key to
        # the job with FOR KEY SHARE) and the job row is locked FOR UPDATE: the old code.
        old="    in the module docstring): LeaseLost unless ``lease`` holds it in ``in_state``.\"\"\"\n",
        new="    in the module docstring): LeaseLost unless ``lease`` holds it in ``in_state``.\"\"\"\n"
            "    touch(session, lease, [in_state])\n",
        also=[(
            "sa.select(Job).where(Job.id == job_id).with_for_update(key_share=True)",
            "sa.select(Job).where(Job.id == job_id).with_for_update()",
        )],
        tests=["tests/e2e/test_lock_order.py"],
    ),
    Mutation(
        name="resolve-keeps-the-token",
        promise="an operator's resolve takes the batch from the worker holding it",
        path="orchestrator/db/ledger.py",
        old="            lease_token=Batch.lease_token + 1,\n",
        new="",
        tests=[FENCING + "test_an_operators_resolve_takes_the_batch_from_the_worker_that_holds_it"],
    ),
    Mutation(
        name="planning-db-blip-fails-job",
        promise="a passing database error while planning leaves the job pending",
        path="orchestrator/runner.py",
        old="        except TRANSIENT_DB_ERRORS as exc:\n",
        new="        except () as exc:\n",
        tests=["tests/e2e/test_planning_errors.py::"
               "test_a_passing_database_error_while_planning_leaves_the_job_pending"],
    ),
    Mutation(
        name="log-before-commit",
        promise="a transition's log line is emitted only once its transaction commits",
        path="orchestrator/db/ledger.py",
        old="    session.info.setdefault(_PENDING_LOGS, []).append((level, kind, {**ids, **fields}, True))"
            "\n",
        new="    getattr(log, level)(kind, **ids, **fields)\n",
        tests=["tests/db/test_record.py"],
    ),
    Mutation(
        name="ingest-drops-successes",
        promise="no result the provider produced is lost",
        path="orchestrator/ingest.py",
        old="        self.copy.write(\n"
            "            _row(self.job, self.batch, custom_id, attempt, True, status, body, None,"
            " usage, model)\n"
            "        )\n",
        new="",
        tests=[PROCESS + "test_sigkill_at_random_moments_loses_nothing_and_pays_once[openai]"],
    ),
    Mutation(
        name="ingest-failure-then-success",
        promise="no result lost: a failure line then a success line for one request keeps the "
                "success",
        path="orchestrator/ingest.py",
        old="self.failures.pop(custom_id, None)",
        new="self.failures.get(custom_id, None)",
        tests=[INGEST + "test_a_failure_then_a_success_for_one_request_in_one_file_lands_the_success"],
    ),
    Mutation(
        name="upsert-replaces-success",
        promise="a success is never replaced by a failure, even from another batch",
        path="orchestrator/db/ledger.py",
        old="        WHERE NOT orchestrator.results.succeeded\n"
            "          AND (EXCLUDED.succeeded",
        new="        WHERE (EXCLUDED.succeeded",
        tests=[INGEST + "test_a_success_is_never_replaced_by_a_failure_from_another_batch"],
    ),
    Mutation(
        name="intent-after-create",
        promise="no batch paid for twice: the intent (state 'creating' + key) is committed before "
                "POST /batches",
        path="orchestrator/steps.py",
        # The intent is written only once the create has answered, in the adopting transaction:
        # the happy path still works, but an answer that never comes leaves no trace of the key.
        old="                # The intent, committed before anything is sent.\n"
            "                ledger.begin_create(s, b, key=key, at=now)\n",
        new="                pass\n",
        also=[(
            "        with unit_of_work(deps.sessions) as s:\n"
            "            ledger.mark_submitted(\n",
            "        with unit_of_work(deps.sessions) as s:\n"
            "            ledger.begin_create(s, b, key=b.idempotency_key, at=now)\n"
            "            ledger.mark_submitted(\n",
        )],
        tests=[OPENAI_CARRIED_OUT],
    ),
    Mutation(
        name="unseen-create-taken-as-refused",
        promise="no batch paid for twice: a create whose answer was lost is reconciled, not "
                "repeated",
        path="orchestrator/steps.py",
        old="    ambiguous = exc.kind is ErrorKind.TRANSIENT\n",
        new="    ambiguous = False\n",
        tests=[OPENAI_CARRIED_OUT],
    ),
    Mutation(
        name="reconcile-without-list",
        promise="no batch paid for twice on targets that list: the key is looked for before "
                "creating again",
        path="orchestrator/steps.py",
        old="    for remote in deps.clients(b.target).iter_batches():\n",
        new="    for remote in []:\n",
        tests=[OPENAI_CARRIED_OUT],
    ),
    Mutation(
        name="claim-without-skip-locked",
        promise="several daemons share the work: batches are claimed FOR NO KEY UPDATE SKIP LOCKED",
        path="orchestrator/db/ledger.py",
        old="        FOR NO KEY UPDATE OF b SKIP LOCKED\n",
        new="        FOR NO KEY UPDATE OF b\n",
        tests=[CLAIM + "test_a_claim_skips_a_batch_locked_by_another_transaction_instead_of"
                       "_waiting"],
    ),
    Mutation(
        name="heartbeat-off",
        promise="a heartbeat renews the leases of long steps, so nobody takes them over",
        path="orchestrator/daemon.py",
        old="            tokens = dict(self._inflight)\n",
        new="            tokens = {}\n",
        tests=[PROCESS + "test_a_heartbeat_keeps_a_long_upload_from_being_taken_over"],
    ),
    Mutation(
        name="sigterm-no-grace",
        promise="SIGTERM lets running steps finish within shutdown_grace_seconds and exits 0",
        path="orchestrator/daemon.py",
        old="cf.wait(pending, timeout=self.settings.shutdown_grace_seconds)",
        new="cf.wait(pending, timeout=0)",
        tests=[PROCESS +
               "test_sigterm_mid_step_lets_the_step_finish_exits_0_and_a_new_daemon_finishes"],
    ),
    Mutation(
        name="bad-key-fails-jobs",
        promise="bad credentials pause the target, they do not fail its jobs",
        path="orchestrator/domain/decide.py",
        old="    if kind is ErrorKind.ACCOUNT:\n"
            "        return PauseTarget(",
        new="    if kind is ErrorKind.ACCOUNT:\n"
            "        return Fail(message=message)\n"
            "        return PauseTarget(",
        tests=[RELIABILITY +
               "test_a_revoked_key_pauses_the_target_jobs_wait_and_resume_by_themselves"],
    ),
    Mutation(
        name="long-custom-id-sent",
        promise="bad input is refused before anything is sent",
        path="orchestrator/domain/requests.py",
        old="    if len(custom_id) > rules.max_custom_id_length:\n",
        new="    if False:\n",
        tests=["tests/e2e/test_bad_input.py::"
               "test_a_bad_request_fails_the_job_naming_it[long-custom-id]"],
    ),
    Mutation(
        name="requests-into-planned-job",
        promise="requests added to a job that is no longer pending are refused at INSERT",
        path="migrations/versions/0002_enqueue_rules.py",
        old="        IF FOUND THEN\n",
        new="        IF FALSE THEN\n",
        tests=["tests/db/test_enqueue_rules.py"],
    ),
    Mutation(
        name="any-provider-sent",
        promise="bad input is refused before anything is sent: a provider the target does not "
                "accept",
        path="orchestrator/domain/requests.py",
        old="    if rules.requires_provider and rules.providers and row.provider not in rules.providers:\n",
        new="    if False:\n",
        tests=["tests/e2e/test_bad_input.py::"
               "test_a_bad_request_fails_the_job_naming_it[unknown-provider]"],
    ),
    Mutation(
        name="cli-prints-raw",
        promise="the CLI prints what it did not write with its control characters escaped",
        path="orchestrator/cli.py",
        old="    return _CONTROL.sub(lambda m: m.group().encode(\"unicode_escape\").decode(), str(value))\n",
        new="    return str(value)\n",
        tests=["tests/e2e/test_cli.py::"
               "test_status_prints_names_and_errors_with_their_control_characters_escaped"],
    ),
    Mutation(
        name="cancel-5xx-blocks-polling",
        promise="a cancel that answers 5xx is retried on backoff and never stops polling",
        path="orchestrator/steps.py",
        old="            if exc.kind is not ErrorKind.TRANSIENT:\n"
            "                raise  # a 429",
        new="            if True:\n"
            "                raise  # a 429",
        tests=["tests/e2e/test_scale.py::"
               "test_a_cancel_that_answers_5xx_is_retried_on_backoff_and_never_stops_polling"],
    ),
    Mutation(
        name="file-over-environment",
        promise="the environment wins over the TOML file: a gateway's API root is never dropped",
        path="orchestrator/config.py",
        old="            spec[\"base_url\"] = env[own_url_var]  # the environment wins over the file\n",
        new="            pass\n",
        tests=["tests/unit/test_config.py"],
    ),
    Mutation(
        name="reused-remote-id-taken-for-unknown",
        promise="a batch id the provider hands out twice fails the batch, never creates again",
        path="orchestrator/db/ledger.py",
        old="    if holder is not None:\n        raise RemoteIdTaken(",
        new="    if False:\n        raise RemoteIdTaken(",
        tests=[RELIABILITY + "test_a_batch_id_the_provider_hands_out_twice_fails_the_batch_instead"
                             "_of_paying_again"],
    ),
    Mutation(
        name="planning-takes-workers",
        promise="pending jobs never keep batch work waiting (planning has a lane of its own)",
        path="orchestrator/daemon.py",
        old="            return self.settings.workers - len(self._inflight)\n",
        new="            return self.settings.workers - len(self._inflight) - 2 * self._planning\n",
        tests=["tests/e2e/test_daemon.py::test_pending_jobs_never_keep_batch_work_waiting"],
    ),
    Mutation(
        name="429-not-shared",
        promise="rate limits are respected by everyone: a 429 is written to target_state",
        path="orchestrator/db/ledger.py",
        old='    block_target(session, target, until=until, reason=f"rate limited: {error}",'
            " paused=False)\n",
        new="",
        tests=[RELIABILITY +
               "test_after_a_429_with_retry_after_30_nobody_calls_the_target_for_30_s"],
    ),
    Mutation(
        name="resubmit-past-max-attempts",
        promise="attempts stop at max_attempts (a retryable failure on the last attempt is final)",
        path="orchestrator/ingest.py",
        old="self.resubmit and attempt < self.max_attempts)",
        new="self.resubmit and attempt <= self.max_attempts)",
        tests=["tests/e2e/test_scale.py::"
               "test_attempts_stop_at_max_attempts_and_the_last_error_is_kept"],
    ),
    Mutation(
        name="not-run-uses-an-attempt",
        promise="a request the provider never ran (batch_expired) goes into the next round at "
                "the same attempt",
        path="orchestrator/db/ledger.py",
        old="bi.attempt + CASE WHEN bi.ran IS FALSE THEN 0 ELSE 1 END",
        new="bi.attempt + 1",
        tests=["tests/e2e/test_scale.py::"
               "test_requests_the_provider_never_ran_are_sent_again_without_using_an_attempt"],
    ),
    Mutation(
        name="not-run-resent-for-ever",
        promise="requests the provider never runs are sent again only within the patience since "
                "they were first sent",
        path="orchestrator/steps.py",
        old="return waited < deps.policy.patience_seconds",
        new="return True",
        tests=["tests/e2e/test_scale.py::"
               "test_requests_the_provider_never_runs_end_once_their_patience_is_spent"],
    ),
    Mutation(
        name="patience-counts-an-outage",
        promise="time in which no daemon ran a batch's retry does not count against its patience",
        path="orchestrator/steps.py",
        old="    if late <= 0:\n        return b.failing_since",
        new="    if True:\n        return b.failing_since",
        tests=["tests/e2e/test_field_faults.py::"
               "test_time_no_daemon_was_running_does_not_count_against_the_patience"],
    ),
    Mutation(
        name="openai-file-too-large-fails",
        promise="an upload OpenAI refuses with 400 'File is too large.' is split, like a 413",
        path="orchestrator/domain/decide.py",
        old='return kind is ErrorKind.INVALID and "file is too large" in message.lower()',
        new="return False",
        tests=["tests/e2e/test_reliability.py::"
               "test_413_splits_the_chunk_and_both_halves_complete"],
    ),
    Mutation(
        name="poll-400-gives-up",
        promise="a 400 to a status call or a download is asked again within the patience",
        path="orchestrator/domain/decide.py",
        old="if kind is ErrorKind.INVALID and step in _READS_OF_A_LIVE_BATCH:",
        new="if False:",
        tests=["tests/e2e/test_reliability.py::"
               "test_a_400_to_a_status_call_or_a_download_is_asked_again_not_taken_for_a_refusal"],
    ),
    Mutation(
        name="short-files-thrown-away-at-patience",
        promise="files still short at the end of the patience: what they hold is kept, the rest fails",
        path="orchestrator/steps.py",
        old="short_since=since if b.step_failures and patience_spent(now, since, deps.policy) else None,",
        new="short_since=None,",
        tests=["tests/e2e/test_field_faults.py::"
               "test_files_short_past_the_patience_keep_what_they_hold_and_fail_the_rest"],
    ),
    Mutation(
        name="reingest-counts-cost-twice",
        promise="a reingested batch's cost is counted on its job once",
        path="orchestrator/db/ledger.py",
        old="cost=Job.cost - batch.cost if batch.cost is not None else Job.cost,",
        new="cost=Job.cost,",
        tests=["tests/e2e/test_field_faults.py::"
               "test_files_short_past_the_patience_keep_what_they_hold_and_fail_the_rest"],
    ),
    Mutation(
        name="cost-wrong-price-row",
        promise="cost from the prices table uses the price in force when the batch finished "
                "(one SQL rule for the daemon and the views)",
        path="migrations/versions/0005_money.py",
        old="AND target IN (p_target, '*') AND valid_from <= p_at",
        new="AND target IN (p_target, '*')",
        tests=["tests/db/test_costs.py::test_costs_are_exact_per_result_batch_model_and_day",
               "tests/db/test_costs.py::"
               "test_the_price_in_force_prefers_the_targets_own_row_then_the_latest_started"],
    ),
    Mutation(
        name="upload-pages-by-rows",
        promise="upload reads bodies at most 32 MB at a time (a larger one alone, in slices), "
                "whatever the number of rows: peak RSS stays under 300 MB",
        path="orchestrator/domain/packing.py",
        # A fixed row count per fetch, as before: 2,000 rows of 1 MB are 2 GB.
        old="        if count and (size + n > max_bytes or count == max_count):\n",
        new="        if count == max_count:\n",
        tests=["tests/db/test_reading_requests.py::"
               "test_upload_pages_hold_at_most_a_page_of_bytes_whatever_the_row_count",
               "tests/unit/test_packing.py::"
               "test_pages_hold_at_most_the_budget_and_a_larger_item_alone"],
    ),
    Mutation(
        name="redaction-off",
        promise="the API key stays secret: never in a log line, a row or an exception",
        path="orchestrator/observability.py",
        old="self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)",
        new="self.secrets = []",
        tests=["tests/e2e/test_secrets.py::"
               "test_the_key_never_reaches_a_log_line_a_command_output_or_a_row"],
    ),
    Mutation(
        name="traceback-locals-shown",
        promise="the API key stays secret: tracebacks are logged without frame locals",
        path="orchestrator/observability.py",
        old="ExceptionDictTransformer(show_locals=False)",
        new="ExceptionDictTransformer(show_locals=True)",
        tests=["tests/e2e/test_secrets.py::"
               "test_the_key_never_reaches_a_log_line_a_command_output_or_a_row"],
    ),
    Mutation(
        name="reconcile-lists-at-once",
        promise="a create the server carries out after the client gave up is found, not repeated",
        path="orchestrator/steps.py",
        old="if deps.clock.now() < settle_at:",
        new="if False:",
        tests=["tests/e2e/test_field_faults.py::"
               "test_a_create_applied_after_the_client_timed_out_is_found_by_waiting_not_created_twice"],
    ),
    Mutation(
        name="orphan-not-cancelled",
        promise="an orphan remote batch (a create that landed too late) is cancelled and recorded",
        path="orchestrator/sweep.py",
        old="        if owner is None or remote.id in adopted:",
        new="        if True:",
        tests=["tests/e2e/test_field_faults.py::"
               "test_a_create_that_lands_after_it_was_created_again_is_cancelled_as_an_orphan"],
    ),
    Mutation(
        name="orphan-sweep-cancels-in-flight",
        promise="the orphan sweep never cancels a create still in flight",
        path="orchestrator/sweep.py",
        old="        if owner.state == BatchState.CREATING and owner.idempotency_key == key:",
        new="        if False:",
        tests=["tests/e2e/test_field_faults.py::"
               "test_the_sweep_leaves_alone_a_create_in_flight_and_batches_of_other_installations"],
    ),
    Mutation(
        name="short-read-accepted",
        promise="result files far short of the provider's counts are read again, never resubmitted",
        path="orchestrator/domain/lines.py",
        old="    if covered >= expected:\n        return None",
        new="    if True:\n        return None",
        tests=["tests/e2e/test_field_faults.py::"
               "test_a_completed_batch_whose_files_are_not_readable_yet_is_read_later_never_resubmitted"],
    ),
    Mutation(
        name="output-404-gives-up-early",
        promise="an output file 'not found' for a while is downloaded later, not abandoned",
        path="orchestrator/domain/decide.py",
        old="kind is ErrorKind.TRANSIENT or (kind is ErrorKind.NOT_FOUND and step is Step.INGEST)",
        new="kind is ErrorKind.TRANSIENT",
        tests=["tests/e2e/test_field_faults.py::"
               "test_a_completed_batch_whose_files_are_not_readable_yet_is_read_later_never_resubmitted"],
    ),
    Mutation(
        name="no-patience",
        promise="passing errors are retried within a patience, then the batch fails saying why",
        path="orchestrator/domain/decide.py",
        old="    return (now - start).total_seconds() >= policy.patience_seconds",
        new="    return False",
        tests=["tests/e2e/test_field_faults.py::"
               "test_status_calls_failing_for_ever_show_as_stuck_then_fail_with_the_last_error_and_its_age",
               "tests/e2e/test_field_faults.py::"
               "test_files_that_stay_unreadable_past_the_patience_fail_the_batch_clearly_and_reingest_collects"],
    ),
    Mutation(
        name="stuck-not-shown",
        promise="a batch failing for long is shown as stuck (status, /healthz, metric)",
        path="orchestrator/db/queries.py",
        old="               AND (failing_since <= :since",
        new="               AND (failing_since > now() + interval '100 years'",
        tests=["tests/e2e/test_field_faults.py::"
               "test_status_calls_failing_for_ever_show_as_stuck_then_fail_with_the_last_error_and_its_age"],
    ),
    Mutation(
        name="finalizing-for-ever",
        promise="a batch stuck past its expires_at is given up after the patience",
        path="orchestrator/steps.py",
        old="    if late < deps.policy.patience_seconds:",
        new="    if True:",
        tests=["tests/e2e/test_field_faults.py::"
               "test_a_batch_stuck_in_finalizing_past_expires_at_shows_as_stuck_then_is_given_up"],
    ),
    Mutation(
        name="reingest-keeps-give-up-failures",
        promise="reingest collects what the provider produced for a batch that was given up",
        path="orchestrator/db/ledger.py",
        old="sa.delete(Result).where(Result.batch_id == batch_id, Result.succeeded.is_(False))",
        new="sa.delete(Result).where(sa.false())",
        tests=["tests/e2e/test_field_faults.py::"
               "test_files_that_stay_unreadable_past_the_patience_fail_the_batch_clearly_and_reingest_collects"],
    ),
    Mutation(
        name="ingest-errors-not-scrubbed",
        promise="the API key stays secret: a key a provider quotes in a failed line is scrubbed "
                "before the line is stored (results, the errors kept for a resubmission)",
        path="orchestrator/ingest.py",
        old="line = self.scrub.deep(line)",
        new="line = line",
        tests=[ECHOED, INGEST + "test_a_key_quoted_in_a_line_is_stored_nowhere_whole_or_cut_short"],
    ),
    Mutation(
        name="batch-errors-not-scrubbed",
        promise="the API key stays secret: a key a provider quotes in a failed batch's errors is "
                "scrubbed at the client, before the job's error, the batch row or the CLI see it",
        path="orchestrator/api/client.py",
        old="        return self._scrub.deep(data)\n",
        new="        return data\n",
        tests=[ECHOED],
    ),
    Mutation(
        name="gzip-download-read-raw",
        promise="a result file sent gzip-encoded is decoded, not read as garbage",
        path="orchestrator/api/client.py",
        old="            self.response.iter_bytes(DOWNLOAD_CHUNK)\n            if decoded",
        new="            self.response.iter_raw(DOWNLOAD_CHUNK)\n            if decoded",
        tests=["tests/e2e/test_field_faults.py::"
               "test_a_completed_batch_whose_files_are_not_readable_yet_is_read_later_never_resubmitted"],
    ),
    Mutation(
        name="budget-not-checked",
        promise="a job over its max_cost fails before anything is uploaded",
        path="orchestrator/plan.py",
        old="    if over_budget:",
        new="    if False:",
        tests=["tests/e2e/test_budget.py::"
               "test_a_job_over_its_max_cost_fails_before_anything_is_uploaded"],
    ),
    Mutation(
        name="job-finished-not-notified",
        promise="a client that LISTENs on orchestrator_job_finished hears every job end once, "
                "with the job's id and status",
        path="orchestrator/db/ledger.py",
        old="    _notify_job_finished(session, job_id, status)\n    record(",
        new="    record(",
        tests=["tests/e2e/test_job_finished.py::"
               "test_a_listener_hears_each_job_end_once_with_its_id_and_status",
               "tests/e2e/test_job_finished.py::"
               "test_the_readme_python_example_waits_for_a_job_and_returns_its_status"],
    ),
    Mutation(
        name="event-cost-none-string",
        promise="money in events and logs is its exact decimal string, or null when unknown: "
                "never a float, never \"None\"",
        path="orchestrator/db/ledger.py",
        old='{"worker": worker, "cost": cost, **summary}',
        new='{"worker": worker, "cost": str(cost), **summary}',
        tests=["tests/e2e/test_cost_events.py::"
               "test_a_cost_in_events_and_logs_is_an_exact_decimal_string_or_null"],
    ),
    Mutation(
        name="cost-not-rounded-once",
        promise="a cost is rounded once to the 8 places it is kept to, so the batch row, the "
                "job's sum and the events agree to the digit",
        path="orchestrator/db/ledger.py",
        old="    cost = as_stored(cost)\n",
        new="",
        tests=["tests/e2e/test_cost_events.py::"
               "test_a_cost_in_events_and_logs_is_an_exact_decimal_string_or_null"],
    ),
    Mutation(
        name="provider-cost-via-float",
        promise="a cost the provider sends as a JSON number is the decimal it spells, not a float",
        path="orchestrator/domain/cost.py",
        old="cost = Decimal(repr(value))",
        new="cost = Decimal(value)",
        tests=["tests/unit/test_cost.py::"
               "test_a_cost_sent_as_a_json_number_is_read_as_the_decimal_it_spells_not_as_a_float"],
    ),
    Mutation(
        name="reporting-role-writes",
        promise="the reporting role reads every table and view and writes nothing",
        path="orchestrator/db/roles.sql",
        old="GRANT SELECT ON ALL TABLES IN SCHEMA orchestrator TO orchestrator_reporting;",
        new="GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orchestrator\n"
            "    TO orchestrator_reporting;",
        tests=["tests/db/test_roles.py::"
               "test_the_reporting_role_reads_every_table_and_view_and_may_not_write_any"],
    ),
    Mutation(
        name="daemon-role-ddl",
        promise="the daemon's role runs a job end to end but may not change the schema",
        path="orchestrator/db/roles.sql",
        old="REVOKE CREATE ON SCHEMA orchestrator\n"
            "    FROM orchestrator_daemon, orchestrator_enqueue, orchestrator_reporting;",
        new="GRANT CREATE ON SCHEMA orchestrator TO orchestrator_daemon;",
        tests=["tests/db/test_roles.py::"
               "test_the_daemon_role_runs_a_job_end_to_end_and_may_not_change_the_schema"],
    ),
    Mutation(
        name="results-not-in-insertion-order",
        promise="orchestrator results prints the requests in the order they were inserted",
        path="orchestrator/db/queries.py",
        old='f"WHERE job_id = :job{only} ORDER BY seq"',
        new='f"WHERE job_id = :job{only} ORDER BY custom_id"',
        tests=["tests/e2e/test_cli_reports.py::"
               "test_results_as_csv_and_jsonl_in_insertion_order_the_failures_and_to_a_file"],
    ),
    Mutation(
        name="cli-money-as-float",
        promise="the CLI's money is exact: a cost in JSON is a decimal string, never a float",
        path="orchestrator/cli.py",
        old="    if isinstance(value, Decimal):\n        return decimal_text(value)\n    raise",
        new="    if isinstance(value, Decimal):\n        return float(value)\n    raise",
        tests=["tests/e2e/test_cli_reports.py::"
               "test_status_shows_progress_age_duration_tokens_and_cost_and_says_it_as_json",
               "tests/e2e/test_cli_reports.py::"
               "test_results_as_csv_and_jsonl_in_insertion_order_the_failures_and_to_a_file"],
    ),
    Mutation(
        name="cleanup-unbounded",
        promise="cleanup deletes old events in statements of bounded size, each its own "
                "transaction, while a daemon runs",
        path="orchestrator/db/ledger.py",
        old="\n             ORDER BY at LIMIT :limit FOR UPDATE SKIP LOCKED))",
        new="))",
        tests=["tests/e2e/test_retention.py::"
               "test_cleanup_deletes_old_events_in_batches_of_bounded_size_while_a_daemon_runs"],
    ),
    Mutation(
        name="cleanup-deletes-results",
        promise="cleanup never deletes a job, a request or a result unless --jobs-older-than "
                "is given",
        path="orchestrator/cli.py",
        old="jobs_days=args.jobs_older_than,",
        new="jobs_days=args.jobs_older_than or d.events_retention_days,",
        tests=["tests/e2e/test_retention.py::"
               "test_jobs_older_than_deletes_only_finished_old_jobs_in_chunks_and_dry_run_deletes_nothing"],
    ),
    Mutation(
        name="retention-timer-deletes-jobs",
        promise="the daemon's retention timer deletes old events and workers, never a job's "
                "results",
        path="orchestrator/retention.py",
        old="            batch_size=daemon.cleanup_batch_size,\n        )",
        new="            batch_size=daemon.cleanup_batch_size,\n"
            "            jobs_days=daemon.events_retention_days,\n        )",
        tests=["tests/e2e/test_retention.py::"
               "test_the_daemon_timer_sweeps_events_and_workers_and_never_a_jobs_results"],
    ),
    Mutation(
        name="files-deleted-unasked",
        promise="the provider's files are deleted after ingest only where "
                "delete_files_after_ingest is on",
        path="orchestrator/retention.py",
        old="if not (target.can_delete_files and target.delete_files_after_ingest):",
        new="if not target.can_delete_files:",
        tests=["tests/e2e/test_retention.py::"
               "test_provider_files_are_deleted_after_a_committed_ingest_when_asked"],
    ),
    Mutation(
        name="files-deleted-before-ingest",
        promise="the provider's files are deleted only after the batch's results are committed",
        path="orchestrator/steps.py",
        old='    files = ", ".join(file_ids) if file_ids else "none"\n',
        new='    files = ", ".join(file_ids) if file_ids else "none"\n'
            "    retention.delete_provider_files(deps, b, file_ids)\n",
        tests=["tests/e2e/test_retention.py::"
               "test_provider_files_are_deleted_after_a_committed_ingest_when_asked"],
    ),
    Mutation(
        name="daemon-unit-without-basic-hardening",
        promise="systemd-analyze security rates the daemon's unit 4.0 or better",
        path="deploy/orchestrator.service",
        old="NoNewPrivileges=yes\nCapabilityBoundingSet=\nAmbientCapabilities=\n"
            "ProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\nPrivateDevices=yes\n",
        new="",
        tests=["tests/deploy/test_systemd.py::"
               "test_security_exposure_is_at_most_4[orchestrator.service]"],
    ),
    Mutation(
        name="daemon-unit-migrates-on-start",
        promise="migrations run in their own one-shot unit as the migration role, not on every "
                "start of the daemon",
        path="deploy/orchestrator.service",
        old="ExecStart=/opt/batch-orchestrator/current/bin/orchestrator run\n",
        new="ExecStartPre=/opt/batch-orchestrator/current/bin/orchestrator migrate\n"
            "ExecStart=/opt/batch-orchestrator/current/bin/orchestrator run\n",
        tests=["tests/deploy/test_systemd.py::"
               "test_migration_is_a_separate_one_shot_by_the_migration_role"],
    ),
    Mutation(
        name="tick-late-alert-never-resolves",
        promise="the tick-late alert pages while the daemon does not tick, and stops once it does",
        path="deploy/prometheus/alerts.yml",
        old="expr: time() - orchestrator_last_tick_timestamp_seconds > 60",
        new="expr: max_over_time((time() - orchestrator_last_tick_timestamp_seconds)[1h:1m]) > 60",
        tests=["tests/deploy/test_monitoring.py::"
               "test_alerts_fire_while_the_problem_lasts_and_resolve_after"],
    ),
    Mutation(
        name="paused-alert-per-daemon",
        promise="a paused target pages once, however many daemons report it",
        path="deploy/prometheus/alerts.yml",
        old="expr: max by (target) (orchestrator_target_paused) == 1",
        new="expr: orchestrator_target_paused == 1",
        tests=["tests/deploy/test_monitoring.py::"
               "test_alerts_fire_while_the_problem_lasts_and_resolve_after"],
    ),
    Mutation(
        name="dashboard-names-unserved-metric",
        promise="every metric the dashboard and the alert rules name is in a real /metrics scrape",
        path="deploy/grafana/dashboard.json",
        old="orchestrator_lease_takeovers_total",
        new="orchestrator_lease_takeover_total",
        tests=["tests/deploy/test_metric_names.py::"
               "test_the_rules_and_the_dashboard_name_only_metrics_a_running_daemon_serves"],
    ),
    Mutation(
        name="compose-daemon-before-migration",
        promise="in docker-compose.yml the daemon starts only after the migration succeeded",
        path="docker-compose.yml",
        old="condition: service_completed_successfully",
        new="condition: service_started",
        tests=["tests/deploy/test_docker.py::"
               "test_compose_runs_postgres_then_migrate_then_the_daemon_and_the_emulator_on_demand"],
    ),
    Mutation(
        name="gauge-keeps-stale-label",
        promise="a gauge's label set that no longer applies reads 0 on the next refresh "
                "(a target gone from target_state is no longer rate limited)",
        path="orchestrator/observability.py",
        old="        for label in shown - set(values):\n            _labelled(gauge, label).set(0)\n",
        new="",
        tests=["tests/e2e/test_metrics.py::test_a_series_that_no_longer_applies_reads_zero"],
    ),
    Mutation(
        name="jobs-gauge-keeps-running",
        promise="orchestrator_jobs shows every open status, 0 when none: after the jobs finish, "
                "jobs{status=\"running\"} reads 0",
        path="orchestrator/observability.py",
        old="self._set(self.jobs, {s: values.jobs.get(s, 0) for s in OPEN_JOB_STATUSES})",
        new="self._set(self.jobs, dict(values.jobs)); self._shown.pop(self.jobs, None)",
        tests=["tests/e2e/test_metrics.py::"
               "test_a_daemon_s_metrics_match_the_calls_the_rows_and_the_prices",
               "tests/e2e/test_metrics.py::test_a_series_that_no_longer_applies_reads_zero"],
    ),
    Mutation(
        name="healthz-ignores-db",
        promise="/healthz answers 503 naming the database when it is unreachable",
        path="orchestrator/daemon.py",
        old="            body.update(status=\"unhealthy\", error=f\"database unreachable: {exc}\")\n"
            "            return False, body\n",
        new="            return True, body\n",
        tests=["tests/e2e/test_health.py::"
               "test_healthz_names_an_unreachable_database_then_answers_200_again"],
    ),
    Mutation(
        name="scrape-not-refreshed",
        promise="a scrape reads the database again (no stale value waiting for the 15-s timer)",
        path="orchestrator/daemon.py",
        old="        self.metrics.before_scrape(self.refresh_if_stale)\n",
        new="        self.metrics.before_scrape(None)\n",
        tests=["tests/e2e/test_metrics.py::"
               "test_a_daemon_s_metrics_match_the_calls_the_rows_and_the_prices"],
    ),
    Mutation(
        name="api-errors-not-counted",
        promise="every API call is counted by route and status, the failed ones too",
        path="orchestrator/api/client.py",
        old="        self._observe(call, str(response.status_code))\n"
            "        call.request_id = request_id(response)\n"
            "        if response.status_code >= 400:\n"
            "            raise self._status_error(response, call)\n",
        new="        call.request_id = request_id(response)\n"
            "        if response.status_code >= 400:\n"
            "            raise self._status_error(response, call)\n"
            "        self._observe(call, str(response.status_code))\n",
        tests=["tests/e2e/test_metrics.py::"
               "test_a_daemon_s_metrics_match_the_calls_the_rows_and_the_prices"],
    ),
    Mutation(
        name="takeover-not-counted",
        promise="a batch claimed from another daemon's expired lease counts as a lease takeover",
        path="orchestrator/db/ledger.py",
        old="        taken_over = previous is not None and previous != owner\n",
        new="        taken_over = False\n",
        tests=["tests/e2e/test_metrics.py::"
               "test_a_lease_taken_over_from_a_stalled_daemon_is_counted"],
    ),
    Mutation(
        name="gauges-read-history",
        promise="the gauges cost O(open work): they read the open jobs through ix_jobs_open, "
                "not every job ever",
        path="orchestrator/db/queries.py",
        old="\"WHERE status IN ('pending', 'running') GROUP BY status, target\"",
        new="\"WHERE status || '' IN ('pending', 'running') GROUP BY status, target\"",
        tests=["tests/e2e/test_metrics.py::"
               "test_the_gauges_read_the_open_work_through_the_partial_indexes"],
    ),
    Mutation(
        name="embedded-when-url-given",
        promise="a configured database URL is always used: the embedded PostgreSQL never is",
        path="orchestrator/zero_setup.py",
        old="    if settings.database_url:\n        return settings.database_url\n",
        new="",
        tests=["tests/e2e/test_zero_setup.py::"
               "test_a_configured_database_url_is_always_used_and_no_embedded_server_is_made"],
    ),
    Mutation(
        name="zero-setup-not-migrated",
        promise="zero setup: run migrates the embedded database itself (no migrate step)",
        path="orchestrator/zero_setup.py",
        old="        migrate.upgrade(server.url)\n",
        new="        pass\n",
        tests=["tests/e2e/test_zero_setup.py::"
               "test_run_without_a_url_uses_the_embedded_database_which_enqueue_reaches"],
    ),
    Mutation(
        name="demo-keep-not-kept",
        promise="orchestrator demo --keep leaves its database up and prints how to connect",
        path="orchestrator/demo.py",
        old="            if keep:\n                _keep(pg.url)\n",
        new="",
        tests=["tests/e2e/test_zero_setup.py::"
               "test_demo_keep_leaves_its_database_up_and_prints_a_url_the_readme_queries_work_on"],
    ),
    Mutation(
        name="check-ignores-schema",
        promise="orchestrator check fails on a schema not at the code's revision",
        path="orchestrator/check.py",
        old="    trouble = schema.problem(revision)\n",
        new="    trouble = None\n",
        tests=["tests/e2e/test_check.py::test_check_fails_on_a_schema_not_at_the_codes_revision"],
    ),
    Mutation(
        name="run-skips-revision-check",
        promise="orchestrator run refuses to start on a schema not at its revision (one line "
                "naming orchestrator migrate)",
        path="orchestrator/cli.py",
        old="    schema.preflight(url)  # refuses a database down or at another schema revision",
        new="    pass  # refuses a database down or at another schema revision",
        tests=["tests/e2e/test_cli_errors.py::"
               "test_every_mistake_is_one_line_with_its_exit_code_and_no_traceback"],
    ),
    Mutation(
        name="daemon-runs-without-metrics-port",
        promise="a daemon whose /metrics port is taken refuses to start, before registering",
        path="orchestrator/daemon.py",
        old="        except (OSError, RuntimeError) as exc:\n",
        new="        except (OSError, RuntimeError) as exc:\n            return None\n",
        tests=["tests/e2e/test_cli_errors.py::"
               "test_every_mistake_is_one_line_with_its_exit_code_and_no_traceback"],
    ),
    Mutation(
        name="config-types-unchecked",
        promise="a setting of the wrong type in the TOML file is refused, naming file and key",
        path="orchestrator/config.py",
        old="            checked[key] = check_type(value, hints[key])\n",
        new="            checked[key] = value\n",
        tests=["tests/unit/test_config.py::"
               "test_a_value_of_the_wrong_type_in_the_file_names_the_file_the_table_and_the_key"],
    ),
    Mutation(
        name="status-lists-dead-daemons",
        promise="orchestrator status lists only the daemons seen within the lease time",
        path="orchestrator/db/queries.py",
        old="            Worker.heartbeat_at\n"
            "            > sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, within_seconds),\n",
        new="",
        tests=["tests/e2e/test_cli_errors.py::"
               "test_status_lists_only_the_daemons_seen_within_the_lease_time"],
    ),
    Mutation(
        name="cancel-touches-finished-job",
        promise="cancel on a finished job changes nothing and says so",
        path="orchestrator/db/ledger.py",
        old="        .where(Job.id == job_id, Job.status.not_in([s.value for s in JOB_TERMINAL]))\n",
        new="        .where(Job.id == job_id)\n",
        tests=["tests/e2e/test_cli_errors.py::"
               "test_cancel_records_a_cancel_for_an_open_job_and_nothing_for_a_finished_one"],
    ),
    Mutation(
        name="token-limit-wait-fixed",
        promise="a token-limited batch is created again after the target's "
                "token_limit_retry_seconds, not a fixed 15 minutes",
        path="orchestrator/steps.py",
        old="            at = now + dt.timedelta(seconds=target.token_limit_retry_seconds)\n",
        new="            at = now + dt.timedelta(seconds=900.0)\n",
        tests=["tests/e2e/test_reliability.py::"
               "test_token_limit_exceeded_without_a_stated_limit_means_later_not_failed"],
    ),
    Mutation(
        name="token-limit-not-learned",
        promise="the limit a token_limit_exceeded message states is learned and planned by",
        path="orchestrator/steps.py",
        old="        if learned is not None:\n",
        new="        if False:\n",
        tests=["tests/e2e/test_capacity.py::test_five_jobs_needing_three_times_the_budget_all_complete_within_it"],
    ),
    Mutation(
        name="admission-ignores-in-flight",
        promise="a batch is created only when the tokens in flight plus its own fit the budget",
        path="orchestrator/domain/capacity.py",
        old="        held = load.tokens_in_flight + load.tokens_ahead\n",
        new="        held = load.tokens_ahead\n",
        tests=["tests/e2e/test_capacity.py::test_five_jobs_needing_three_times_the_budget_all_complete_within_it"],
    ),
    Mutation(
        name="no-split-over-budget",
        promise="a batch alone over its model's budget is split, never sent",
        path="orchestrator/domain/capacity.py",
        old="    if budget is not None and tokens > budget and requests > 1:\n",
        new="    if False:\n",
        tests=["tests/e2e/test_capacity.py::test_five_jobs_needing_three_times_the_budget_all_complete_within_it"],
    ),
    Mutation(
        name="planner-ignores-learned-limit",
        promise="a learned limit survives a restart: the next job is planned within it",
        path="orchestrator/plan.py",
        old="                max_tokens=budget.tokens if budget else None,\n",
        new="                max_tokens=None,\n",
        tests=["tests/e2e/test_capacity.py::test_a_learned_limit_survives_a_restart_and_plans_the_next_job"],
    ),
    Mutation(
        name="learned-limit-never-lowered",
        promise="a refusal of a batch admitted under the learned limit lowers it by a tenth",
        path="orchestrator/db/ledger.py",
        old="        after = max(1, int(before.learned_tokens * LEARNED_SHRINK))\n",
        new="        after = before.learned_tokens\n",
        tests=["tests/db/test_capacity_learning.py"],
    ),
    Mutation(
        name="admission-no-turns",
        promise="among equal priorities, a job's n-th batch goes before any job's (n+1)-th",
        path="orchestrator/db/queries.py",
        old="row_number() OVER (PARTITION BY o.job_id ORDER BY o.id) + COALESCE(s.n, 0) AS turn",
        new="0 AS turn",
        tests=["tests/e2e/test_capacity.py::test_small_jobs_are_admitted_before_a_huge_jobs_remaining_chunks"],
    ),
    Mutation(
        name="admission-ignores-priority",
        promise="a job's priority orders admission",
        path="orchestrator/db/queries.py",
        old="       AND (l.priority > me.priority\n            OR (l.priority = me.priority AND "
            "(l.turn, l.id) < (me.turn, me.id)))\n",
        new="       AND ((l.turn, l.id) < (me.turn, me.id))\n",
        tests=["tests/e2e/test_capacity.py::test_small_jobs_are_admitted_before_a_huge_jobs_remaining_chunks"],
    ),
    Mutation(
        name="batches-in-flight-cap-ignored",
        promise="at most max_batches_in_flight batches of a target are in flight",
        path="orchestrator/steps.py",
        old="        max_batches=target.max_batches_in_flight,\n",
        new="        max_batches=None,\n",
        tests=["tests/e2e/test_capacity.py::test_small_jobs_are_admitted_before_a_huge_jobs_remaining_chunks"],
    ),
    Mutation(
        name="capacity-shows-configured-budget",
        promise="status, capacity and the budget gauge show the lower of the configured and the "
                "learned budget, and say which",
        path="orchestrator/domain/capacity.py",
        old="    if learned is not None and (configured is None or learned < configured):\n",
        new="    if learned is not None and configured is None:\n",
        tests=["tests/e2e/test_capacity_view.py::"
               "test_status_shows_the_budget_in_force_what_is_in_flight_and_what_waits"],
    ),
    Mutation(
        name="capacity-waiting-gauge-never-reset",
        promise="orchestrator_batches_waiting_for_capacity reads 0 once the batches stop waiting",
        path="orchestrator/observability.py",
        old="        self._set(self.capacity_waiting, {_pair(m): m.waiting_batches for m in models})\n",
        new="        for labels, n in {_pair(m): m.waiting_batches for m in models}.items():\n"
            "            self.capacity_waiting.labels(*labels).set(n)\n",
        tests=["tests/e2e/test_capacity_view.py::"
               "test_the_capacity_gauges_show_the_report_and_read_zero_once_nothing_waits"],
    ),
    Mutation(
        name="capacity-in-flight-counts-waiting",
        promise="the tokens in flight are those of the batches creating or submitted, not of "
                "those waiting",
        path="orchestrator/db/queries.py",
        old="IN_FLIGHT = \"state IN ('creating', 'submitted')\"\n",
        new="IN_FLIGHT = \"state IN ('uploaded', 'creating', 'submitted')\"\n",
        tests=["tests/e2e/test_capacity_view.py::"
               "test_status_shows_the_budget_in_force_what_is_in_flight_and_what_waits"],
    ),
    Mutation(
        name="call-cap-ignored",
        promise="at most max_calls_per_minute calls to a target in each minute, by all daemons",
        path="orchestrator/db/ledger.py",
        old="        OR t.calls_in_minute < :cap\n",
        new="        OR TRUE\n",
        tests=["tests/db/test_call_permit.py::"
               "test_a_cap_of_three_grants_three_calls_a_minute_then_starts_again",
               "tests/e2e/test_call_cap.py::"
               "test_the_per_minute_call_cap_holds_with_three_daemons_running"],
    ),
    Mutation(
        name="call-cap-minute-never-rolls-over",
        promise="the call cap counts each minute afresh: a capped target is called again the "
                "next minute",
        path="orchestrator/db/ledger.py",
        old="     WHERE t.calls_minute IS NULL OR t.calls_minute < EXCLUDED.calls_minute\n",
        new="     WHERE t.calls_minute IS NULL\n",
        tests=["tests/db/test_call_permit.py::"
               "test_a_cap_of_three_grants_three_calls_a_minute_then_starts_again",
               "tests/e2e/test_call_cap.py::"
               "test_a_create_that_meets_the_cap_is_not_sent_and_waits_for_the_next_minute"],
    ),
    Mutation(
        name="call-cap-counts-as-failure",
        promise="a call held back by our own cap is a wait, not a step failure",
        path="orchestrator/api/errors.py",
        old="class CallCapReached(TargetBlocked):\n",
        new="class CallCapReached(ApiRateLimited):\n",
        tests=["tests/e2e/test_call_cap.py::"
               "test_the_per_minute_call_cap_holds_with_three_daemons_running",
               "tests/e2e/test_call_cap.py::"
               "test_a_create_that_meets_the_cap_is_not_sent_and_waits_for_the_next_minute"],
    ),
    Mutation(
        name="no-early-polls",
        promise="a 3-request job the provider finishes in 3 s completes in under 6 s with the "
                "default settings",
        path="orchestrator/deps.py",
        old="            first=d.poll_first_seconds,\n",
        new="            first=d.poll_initial_seconds,\n",
        tests=["tests/e2e/test_latency.py::"
               "test_a_3_request_job_the_provider_finishes_in_3_s_completes_in_under_6_s"],
    ),
    Mutation(
        name="poll-ignores-predicted-end",
        promise="a running batch is polled when the provider's pace says it will be done",
        path="orchestrator/steps.py",
        old="            done_at=backoff.eta(\n",
        new="            done_at=None and backoff.eta(\n",
        tests=["tests/e2e/test_latency.py::"
               "test_a_long_batch_is_seen_done_when_the_providers_pace_says_not_at_the_next_backoff"],
    ),
    Mutation(
        name="prediction-without-floor",
        promise="a batch is polled at most 233 times in its first day",
        path="orchestrator/domain/backoff.py",
        old="        return max(done_in, self.shortest(age))\n",
        new="        return done_in\n",
        tests=["tests/unit/test_backoff.py"],
    ),
    Mutation(
        name="no-tick-at-next-due",
        promise="the daemon process on its defaults completes a 3-request job in under 6 s",
        path="orchestrator/daemon.py",
        old="        if due is not None:\n            self._tick_in(",
        new="        if False:\n            self._tick_in(",
        tests=["tests/e2e/test_latency.py::"
               "test_the_daemon_process_on_its_defaults_completes_a_3_request_job_in_under_6_s"],
    ),
    Mutation(
        name="upload-holds-transaction-while-sending",
        promise="no transaction is open while the input file is sent",
        path="orchestrator/steps.py",
        old="                        piece = queries.body_slice(s, r, start, queries.PAGE_BYTES)\n"
            "                    yield piece\n",
        new="                        piece = queries.body_slice(s, r, start, queries.PAGE_BYTES)\n"
            "                        yield piece\n",
        tests=["tests/db/test_reading_requests.py::"
               "test_no_transaction_is_open_while_the_input_file_is_sent"],
    ),
    Mutation(
        name="groups-plan-a-non-plain-custom-id",
        promise="planning from groups gives the plan request by request gives, or declines",
        path="orchestrator/plan.py",
        old="        if not g.plain_ids:\n            return None, None\n",
        new="",
        tests=["tests/db/test_planning.py"],
    ),
    Mutation(
        name="groups-skip-the-checks",
        promise="nothing is sent that is sure to fail (a job planned from its groups)",
        path="orchestrator/plan.py",
        old="        if rq.request_problem(worst, g.body_shape, fixed + g.longest, rules):\n",
        new="        if False:\n",
        tests=["tests/db/test_planning.py"],
    ),
    Mutation(
        name="estimate-from-groups-without-bounds",
        promise="a job's estimate from its groups is its estimate from its requests",
        path="orchestrator/plan.py",
        old="        outputs[1] += g.max_output\n",
        new="        outputs[1] += 0\n",
        tests=["tests/db/test_planning.py::"
               "test_the_estimate_from_groups_is_the_estimate_from_the_requests"],
    ),
    Mutation(
        name="finalizing-not-polled-early",
        promise="a batch seen finalizing is seen done within seconds of its end",
        path="orchestrator/steps.py",
        old="            polls=unchanged if remote.status == RemoteStatus.FINALIZING"
            " else b.poll_count + 1,\n",
        new="            polls=b.poll_count + 1,\n",
        tests=["tests/e2e/test_latency.py::"
               "test_a_batch_seen_finalizing_is_polled_early_again_not_at_the_backoff"],
    ),
    Mutation(
        name="predicted-end-polled-before-it",
        promise="a predicted end is polled just after it, never before it",
        path="orchestrator/domain/backoff.py",
        old="rng.uniform(self.first / 2, self.first)",
        new="rng.uniform(-self.first / 2, self.first)",
        tests=["tests/unit/test_backoff.py"],
    ),
    Mutation(
        name="backoff-polls-just-before-predicted-end",
        promise="no poll comes just before a predicted end, to wait a tenth of the age after it",
        path="orchestrator/domain/backoff.py",
        old="            if delay < done_in < delay + self.shortest(age + delay):\n",
        new="            if False:\n",
        tests=["tests/unit/test_backoff.py"],
    ),
    Mutation(
        name="failed-step-kept-in-a-cycle",
        promise="a failed step frees what it read at once (a daemon retrying stays small)",
        path="orchestrator/runner.py",
        old="        outcome = \"api_error\"\n",
        new="        outcome = \"api_error\"\n        error = exc\n",
        tests=["tests/e2e/test_http_failures.py::"
               "test_a_failed_step_frees_what_it_read_at_once_not_at_the_next_full_collection"],
    ),
    Mutation(
        name="ingest-sums-miss-prompt-tokens",
        promise="every cost is checked against a hand computation (from ingest's own sums)",
        path="orchestrator/ingest.py",
        old="            sums[1] += prompt\n",
        new="            sums[1] += 0\n",
        tests=["tests/db/test_costs.py"],
    ),
    Mutation(
        name="read-ahead-never-taken",
        promise="the upload takes what planning read ahead",
        path="orchestrator/steps.py",
        old="deps.prefetch.take((job, first, last))",
        new="deps.prefetch.take((job, first, last + 1))",
        tests=["tests/e2e/test_read_ahead.py"],
    ),
    Mutation(
        name="items-outlive-their-batch",
        promise="a batch's items go with it, whatever deletes it",
        path="migrations/versions/0009_items_without_row_checks.py",
        old="DELETE FROM {S}.batch_items bi USING gone_batches g WHERE bi.batch_id = g.id;",
        new="PERFORM 1;",
        tests=["tests/db/test_migrations.py::"
               "test_a_batchs_items_go_with_it_whatever_deletes_it"],
    ),
    Mutation(
        name="tls-context-per-client",
        promise="every client shares the process's TLS settings (read once, at daemon start)",
        path="orchestrator/api/client.py",
        old="        verify=tls_context(),\n",
        new="",
        tests=["tests/api/test_tls.py"],
    ),
    Mutation(
        name="certificate-refusal-unexplained",
        promise="a refused certificate says so, and what to do",
        path="orchestrator/api/client.py",
        old="        if isinstance(seen, ssl.SSLCertVerificationError):",
        new="        if isinstance(seen, ssl.SSLZeroReturnError):",
        tests=["tests/api/test_tls.py"],
    ),
]
# fmt: on

SELF_CHECK_MARK = "mutants-self-check-marker"


@dataclasses.dataclass(frozen=True)
class SelfCheck:
    mutation: Mutation
    expect: str  # the status it must get
    proves: str


SELF_CHECKS: list[SelfCheck] = [
    SelfCheck(
        Mutation(
            name="selfcheck-subprocess",
            promise="(self-check) `python -m orchestrator` with a reduced env runs the copy",
            path="orchestrator/__main__.py",
            old="raise SystemExit(main())",
            new=f'raise SystemExit("{SELF_CHECK_MARK}")',
            tests=[
                "tests/db/test_migrations.py::test_two_processes_migrating_at_once_both_succeed"
            ],
        ),
        expect="caught",
        proves="daemons/CLI started by tests (sys.executable -m orchestrator, reduced env) "
        "run the mutated copy",
    ),
    SelfCheck(
        Mutation(
            name="selfcheck-pytest-process",
            promise="(self-check) the pytest process imports the copy's package",
            path="orchestrator/__init__.py",
            old="from __future__ import annotations\n",
            new=f'from __future__ import annotations\n\nraise ImportError("{SELF_CHECK_MARK}")\n',
            tests=["tests/unit/test_states.py"],
        ),
        expect="error",
        proves="the pytest process imports the mutated copy",
    ),
]


# -- outcomes -------------------------------------------------------------------------------

CAUGHT, NOT_CAUGHT, STALE, ERROR = "caught", "NOT caught", "stale", "error"
EXIT_CODES = {
    2: "interrupted (collection errors?)",
    3: "internal pytest error",
    4: "usage error",
    5: "no tests collected",
}
# A failure for one of these reasons is the mutation breaking the code, not changing behaviour.
NOT_BEHAVIOURAL = re.compile(
    r"^(ImportError|ModuleNotFoundError|SyntaxError|IndentationError|NameError)\b"
)


@dataclasses.dataclass
class Outcome:
    name: str
    status: str
    seconds: float = 0.0
    by: str = ""  # the first failing test, when caught
    detail: str = ""  # why, for stale/error; the tail of the output for errors
    output: str = ""


class Stale(Exception):
    pass


def apply_edits(text: str, edits: Sequence[tuple[str, str]], path: str) -> str:
    """``text`` with every edit applied; Stale unless each ``old`` occurs exactly once."""
    for old, new in edits:
        n = text.count(old)
        if n != 1:
            first = old.strip().splitlines()[0] if old.strip() else repr(old)
            raise Stale(f"{path}: {n} occurrences of {first[:60]!r} (need exactly 1)")
        if old == new:
            raise Stale(f"{path}: an edit that changes nothing")
        text = text.replace(old, new, 1)
    return text


def first_failure(output: str) -> tuple[str, str] | None:
    """(node id, reason) of the first ``FAILED`` line of pytest's short summary."""
    for line in output.splitlines():
        if line.startswith("FAILED "):
            node, _, reason = line[len("FAILED ") :].partition(" - ")
            return node.strip(), reason.strip()
    return None


def classify(name: str, code: int, output: str, seconds: float) -> Outcome:
    """Turn a pytest exit code and output into an outcome (see the module docstring)."""
    if code == 0:
        return Outcome(name, NOT_CAUGHT, seconds, output=output)
    if code == 1:
        failed = first_failure(output)
        if failed is None:
            return Outcome(
                name, ERROR, seconds, detail="exit 1 without a FAILED test", output=output
            )
        node, reason = failed
        if NOT_BEHAVIOURAL.match(reason):
            return Outcome(name, ERROR, seconds, by=node, detail=reason, output=output)
        return Outcome(name, CAUGHT, seconds, by=node, detail=reason, output=output)
    if TIMED_OUT in output:
        return Outcome(
            name, ERROR, seconds, detail="timed out (process group killed)", output=output
        )
    why = EXIT_CODES.get(code, "killed by a signal" if code < 0 else "unexpected exit code")
    return Outcome(name, ERROR, seconds, detail=f"pytest exit {code}: {why}", output=output)


def tail(output: str, n: int = 25) -> str:
    return "\n".join("    | " + line for line in output.rstrip().splitlines()[-n:])


def duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s"


# -- copies and processes -------------------------------------------------------------------

_running: set[subprocess.Popen[str]] = set()
_running_lock = threading.Lock()
_stopping = threading.Event()  # set on Ctrl-C: start no more pytest processes
TIMED_OUT = "[mutants] timed out"


def repo_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [p for p in out.split("\0") if p and not p.startswith(".venv/")]


def snapshot(dest: Path) -> None:
    """The working tree as git sees it (not .venv, not ignored files) copied into ``dest``."""
    for rel in repo_files():
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet in the index
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)


def pytest_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    env.pop("PYTHONSAFEPATH", None)  # -P semantics would drop the cwd from sys.path
    # Wide enough that the short summary keeps the reason after a long node id ("FAILED id - why")
    env["COLUMNS"] = "1000"
    return env


def run_pytest(copy: Path, tests: Sequence[str], timeout: float) -> tuple[int, str, float]:
    """Run ``tests`` in ``copy``: (exit code, output, seconds). A timeout kills the whole
    process group (pytest and the daemons its tests started) and is reported as code -9."""
    cmd = [str(PYTHON), "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider"]
    cmd += ["-p", "no:randomly", *tests]
    started = time.monotonic()
    with _running_lock:
        if _stopping.is_set():
            return 130, "[mutants] interrupted before it started\n", 0.0
        proc = subprocess.Popen(
            cmd,
            cwd=copy,
            env=pytest_env(copy),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        _running.add(proc)
    try:
        try:
            output, _ = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            output, _ = proc.communicate()
            output += f"\n{TIMED_OUT} after {duration(timeout)}; process group killed\n"
            code = -signal.SIGKILL
    finally:
        with _running_lock:
            _running.discard(proc)
    _kill_group(proc)  # daemons a test left behind
    return code, output, time.monotonic() - started


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_running() -> None:
    with _running_lock:
        _stopping.set()
        procs = list(_running)
    for proc in procs:
        _kill_group(proc)


@contextmanager
def workspace() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_mutation(m: Mutation, base: Path, root: Path, timeout: float) -> Outcome:
    copy = Path(tempfile.mkdtemp(prefix=f"{m.name}-", dir=root))
    try:
        shutil.copytree(base, copy, dirs_exist_ok=True, symlinks=True)
        target = copy / m.path
        try:
            if not target.is_file():
                raise Stale(f"{m.path}: no such file")
            target.write_text(apply_edits(target.read_text(), m.edits(), m.path))
        except Stale as exc:
            return Outcome(m.name, STALE, detail=str(exc))
        code, output, seconds = run_pytest(copy, m.tests, timeout)
        return classify(m.name, code, output, seconds)
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def check_stale(m: Mutation, base: Path) -> Outcome | None:
    target = base / m.path
    try:
        if not target.is_file():
            raise Stale(f"{m.path}: no such file")
        apply_edits(target.read_text(), m.edits(), m.path)
    except Stale as exc:
        return Outcome(m.name, STALE, detail=str(exc))
    return None


# -- import probe ---------------------------------------------------------------------------

PROBE_MODULE = "_mutants_probe"
PROBE_CODE = "import orchestrator\nprint(orchestrator.__file__)\n"


def probe_imports(base: Path, root: Path) -> list[str]:
    """Problems (empty if none) with where ``orchestrator`` comes from in a copy: in a process
    like the tests' (cwd + PYTHONPATH = copy) and in one like their daemons' (``-m``, cwd = copy,
    an environment with PATH only)."""
    copy = Path(tempfile.mkdtemp(prefix="probe-", dir=root))
    problems: list[str] = []
    try:
        shutil.copytree(base, copy, dirs_exist_ok=True, symlinks=True)
        (copy / "orchestrator" / f"{PROBE_MODULE}.py").write_text(PROBE_CODE)
        expected = (copy / "orchestrator" / "__init__.py").resolve()
        runs = {
            "pytest-like process": (
                [str(PYTHON), "-c", PROBE_CODE],
                pytest_env(copy),
            ),
            "daemon-like subprocess (-m, PATH only)": (
                [str(PYTHON), "-m", f"orchestrator.{PROBE_MODULE}"],
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            ),
        }
        for what, (cmd, env) in runs.items():
            done = subprocess.run(
                cmd, cwd=copy, env=env, capture_output=True, text=True, check=False
            )
            found = done.stdout.strip().splitlines()[-1:] or [done.stderr.strip()[-300:]]
            if done.returncode != 0 or Path(found[0]).resolve() != expected:
                problems.append(f"{what}: orchestrator imported from {found[0]!r}, not the copy")
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    return problems


# -- the run --------------------------------------------------------------------------------


def report_line(o: Outcome, *, why: bool = False) -> str:
    took = duration(o.seconds) if o.status != STALE else "-"
    if o.status == CAUGHT:
        what = f"by {o.by}" + (f"\n{'':<52}{o.detail[:200]}" if why and o.detail else "")
    elif o.status == NOT_CAUGHT:
        what = "every test passed"
    else:
        what = (o.detail + (f" (in {o.by})" if o.by else "")).strip()
    return f"{o.status:<11} {o.name:<30} {took:>7}  {what}"


def run_all(
    mutations: Sequence[Mutation],
    base: Path,
    root: Path,
    jobs: int,
    timeout: float,
    *,
    why: bool = False,
) -> list[Outcome]:
    outcomes: dict[str, Outcome] = {}
    runnable: list[Mutation] = []
    for m in mutations:
        stale = check_stale(m, base)
        if stale is None:
            runnable.append(m)
        else:
            outcomes[m.name] = stale
            print(report_line(stale), flush=True)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(run_mutation, m, base, root, timeout): m for m in runnable}
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[outcome.name] = outcome
                print(report_line(outcome, why=why), flush=True)
                if outcome.status == ERROR:
                    print(tail(outcome.output), flush=True)
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            kill_running()
            raise
    return [outcomes[m.name] for m in mutations]


def summary(outcomes: Sequence[Outcome], mutations: Sequence[Mutation], wall: float) -> None:
    promises = {m.name: m.promise for m in mutations}
    print()
    print(f"{'mutation':<30} {'result':<11} {'time':>7}  caught by / why")
    print(f"{'-' * 30} {'-' * 11} {'-' * 7}  {'-' * 40}")
    for o in outcomes:
        took = duration(o.seconds) if o.status != STALE else "-"
        what = o.by if o.status == CAUGHT else (o.detail or o.by or "every test passed")
        print(f"{o.name:<30} {o.status:<11} {took:>7}  {what}")
        if o.status != CAUGHT:
            print(f"{'':<30} {'':<11} {'':>7}  promise: {promises[o.name]}")
    caught = sum(o.status == CAUGHT for o in outcomes)
    print()
    print(f"{caught} of {len(outcomes)} mutations caught in {duration(wall)}")


def self_check(base: Path, root: Path, jobs: int, timeout: float) -> bool:
    ok = True
    outcomes = run_all([c.mutation for c in SELF_CHECKS], base, root, jobs, timeout)
    for check, o in zip(SELF_CHECKS, outcomes, strict=True):
        marked = SELF_CHECK_MARK in o.output
        passed = o.status == check.expect and marked
        ok = ok and passed
        verdict = "proved" if passed else "NOT proved"
        print(
            f"self-check {verdict}: {check.proves} "
            f"(got {o.status}, expected {check.expect}; marker in output: {marked})"
        )
        if not passed:
            print(tail(o.output))
    return ok


def baseline(mutations: Sequence[Mutation], base: Path, root: Path, timeout: float) -> bool:
    """The union of the mutations' tests, unmutated, must pass."""
    whole_files = {t for m in mutations for t in m.tests if "::" not in t}
    tests: list[str] = []
    for t in (t for m in mutations for t in m.tests):
        covered = "::" in t and t.split("::")[0] in whole_files
        if t not in tests and not covered:
            tests.append(t)
    print(f"baseline: {len(tests)} test paths, unmutated ...", flush=True)
    copy = Path(tempfile.mkdtemp(prefix="baseline-", dir=root))
    try:
        shutil.copytree(base, copy, dirs_exist_ok=True, symlinks=True)
        code, output, seconds = run_pytest(copy, tests, timeout * max(1, len(mutations)))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    last = output.strip().splitlines()[-1:] or [""]
    if code == 0:
        print(f"baseline passed in {duration(seconds)}: {last[0]}", flush=True)
        return True
    print(f"baseline FAILED (pytest exit {code}) in {duration(seconds)}:")
    print(tail(output, 40))
    return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--list", action="store_true", help="print the mutations and exit")
    p.add_argument("--only", action="append", metavar="NAME", help="run only this (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="mutations run in parallel (default 2)")
    p.add_argument("--baseline", action="store_true", help="first run the tests unmutated")
    p.add_argument("--timeout", type=float, default=900, help="seconds per mutation (900)")
    p.add_argument(
        "--why", action="store_true", help="also print the failure that caught each mutation"
    )
    p.add_argument(
        "--self-check",
        action="store_true",
        help="only prove that the tests (and their subprocesses) run the mutated copy",
    )
    return p.parse_args(argv)


def select(only: Sequence[str] | None) -> list[Mutation]:
    names = [m.name for m in MUTATIONS]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate mutation names: {sorted(dupes)}")
    if not only:
        return list(MUTATIONS)
    unknown = [n for n in only if n not in names]
    if unknown:
        raise SystemExit(f"unknown mutation(s): {unknown}; see --list")
    return [m for m in MUTATIONS if m.name in only]


def list_mutations(mutations: Sequence[Mutation]) -> None:
    for m in mutations:
        stale = check_stale(m, REPO)
        state = f"STALE: {stale.detail}" if stale else "applies"
        print(f"{m.name}  [{state}]")
        print(f"    promise: {m.promise}")
        print(f"    file:    {m.path} ({len(m.edits())} edit(s))")
        for t in m.tests:
            print(f"    test:    {t}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mutations = select(args.only)
    if args.list:
        list_mutations(mutations)
        return 0
    if not PYTHON.exists():
        print(f"no {PYTHON}: run `make setup` first", file=sys.stderr)
        return 1
    started = time.monotonic()
    with workspace() as root:
        base = root / "snapshot"
        base.mkdir()
        snapshot(base)
        problems = probe_imports(base, root)
        if problems:
            print("the copy is not what runs; refusing to go on:", *problems, sep="\n  ")
            return 1
        print("checked: the copies import their own orchestrator, not this checkout", flush=True)
        try:
            if args.self_check:
                ok = self_check(base, root, args.jobs, args.timeout)
                took = duration(time.monotonic() - started)
                print(f"self-check {'passed' if ok else 'FAILED'} in {took}")
                return 0 if ok else 1
            if args.baseline and not baseline(mutations, base, root, args.timeout):
                return 1
            outcomes = run_all(mutations, base, root, args.jobs, args.timeout, why=args.why)
        except KeyboardInterrupt:
            kill_running()
            print("\ninterrupted", file=sys.stderr)
            return 130
    summary(outcomes, mutations, time.monotonic() - started)
    return 0 if all(o.status == CAUGHT for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
