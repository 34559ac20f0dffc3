"""Soak: thousands of runs of the lifecycle model (``tests/model/lifecycle.py``), and the bugs it
finds when they are planted.

``make soak`` (``.venv/bin/python scripts/soak.py``) runs ``--examples`` scenarios (default 2,000)
from ``--seed`` on (default: a random base, printed), ``--workers`` at a time (processes; default 2),
each on a fresh database copied from a migrated template, and prints what the runs did (acts,
kills, faults that fired, rounds, expiries, token-limit refusals, orphans, jobs by how they ended)
and every run that broke a promise, with its seed and the command that replays it. Exit code 0
only if none did.

``--planted`` plants each bug of ``PLANTED`` in a copy of the checkout, one at a time (one per
promise the model checks), runs the model there from the same seeds until a run breaks a promise
(at most ``--examples`` runs), and prints after how many runs, and which promise broke. A planted
bug the model does not find within the budget is a gap in the model.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from scripts.mutants import Mutation, apply_edits, pytest_env, snapshot  # noqa: E402

PYTHON = REPO / ".venv" / "bin" / "python"
LOCAL = "postgresql://postgres@127.0.0.1:5432/postgres"

# One bug per promise the model checks: each a plausible slip, each the model must find.
PLANTED = [
    Mutation(
        name="duplicate-success-line-taken-twice",
        promise="one final row per request, as the provider produced it",
        path="orchestrator/ingest.py",
        old="        self.succeeded.add(custom_id)\n        if self.failures",
        new="        if self.failures",
        tests=[],
    ),
    Mutation(
        name="lost-create-answer-taken-as-refused",
        promise="nothing paid twice",
        path="orchestrator/steps.py",
        old="ambiguous = exc.kind is ErrorKind.TRANSIENT",
        new="ambiguous = False",
        tests=[],
    ),
    Mutation(
        name="not-run-uses-an-attempt",
        promise="attempts (a request the provider never ran uses none)",
        path="orchestrator/db/ledger.py",
        old="bi.attempt + CASE WHEN bi.ran IS FALSE THEN 0 ELSE 1 END",
        new="bi.attempt + 1",
        tests=[],
    ),
    Mutation(
        name="retry-past-max-attempts",
        promise="attempts (within max_attempts)",
        path="orchestrator/ingest.py",
        old="self.resubmit and attempt < self.max_attempts)",
        new="self.resubmit and attempt <= self.max_attempts)",
        tests=[],
    ),
    Mutation(
        name="failed-count-not-added",
        promise="counters, tokens and cost",
        path="orchestrator/db/ledger.py",
        old='            failed=counts["failed_count"],\n',
        new='            failed=counts["failed_count"] if counts["succeeded_count"] else 0,\n',
        tests=[],
    ),
    Mutation(
        name="cached-tokens-priced-twice",
        promise="counters, tokens and cost",
        path="orchestrator/ingest.py",
        old="            sums[4] += cached\n",
        new="            sums[4] += cached + prompt\n",
        tests=[],
    ),
    Mutation(
        name="split-batch-counted-open",
        promise="no batch or job open without a visible reason",
        path="orchestrator/db/ledger.py",
        old=".where(Batch.job_id == job_id, Batch.state.in_(OPEN_STATES))",
        new='.where(Batch.job_id == job_id, Batch.state.notin_(("done", "failed", "cancelled")))',
        tests=[],
    ),
    Mutation(
        name="failure-lines-not-scrubbed",
        promise="nothing secret stored or logged",
        path="orchestrator/ingest.py",
        old="        if self.scrub is not None and self.scrub.found_in_json(raw):\n",
        new="        if False:\n",
        tests=[],
    ),
]


# -- the database --------------------------------------------------------------------------


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@contextmanager
def template() -> Iterator[tuple[str, str]]:
    """(server URL, the name of a migrated template database), as the tests' fixtures make them:
    ``TEST_DATABASE_URL``, the local server, else an embedded PostgreSQL."""
    from orchestrator.db.migrate import upgrade
    from orchestrator.db.session import libpq_url, with_database
    from orchestrator.embedded import EmbeddedPostgres

    with contextlib.ExitStack() as stack:
        explicit = os.environ.get("TEST_DATABASE_URL")
        if explicit:
            server = libpq_url(explicit)
        elif _reachable(LOCAL):
            server = LOCAL
        else:
            server = libpq_url(stack.enter_context(EmbeddedPostgres()).url)
        name = f"orch_soak_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            upgrade(with_database(server, name))
            yield server, name
        finally:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- runs ----------------------------------------------------------------------------------

_SERVER: dict[str, str] = {}  # a worker's server and template, set once by _init


def _init(server: str, name: str) -> None:
    _SERVER.update(server=server, template=name)


def _one(seed: int) -> tuple[int, list[str], object, str]:
    from tests.model import lifecycle

    try:
        outcome = lifecycle.run(seed, _SERVER["server"], _SERVER["template"])
    except Exception as exc:  # noqa: BLE001 (a run that could not finish is a finding too)
        return seed, [f"the run raised {type(exc).__name__}: {exc}"], None, ""
    return seed, outcome.broken, outcome.figures, outcome.explain() if outcome.broken else ""


def soak(examples: int, base: int, workers: int, stop_at_first: bool) -> int:
    from tests.model import lifecycle

    seeds = list(range(base, base + examples))
    totals = lifecycle.Figures()
    broken: dict[int, tuple[list[str], str]] = {}
    done = 0
    started = time.monotonic()
    ctx = mp.get_context("fork")
    with template() as (server, name), ctx.Pool(workers, _init, (server, name)) as pool:
        for seed, problems, figures, explained in pool.imap_unordered(_one, seeds):
            done += 1
            if figures is not None:
                totals.add(figures)  # type: ignore[arg-type]
            if problems:
                broken[seed] = (problems, explained)
                print(f"BROKEN seed {seed}: {problems[0][:300]}", flush=True)
                if stop_at_first:
                    print(f"first broken run after {done} runs (seed {seed})")
                    print(explained)
                    pool.terminate()
                    break
            if done % 100 == 0:
                rate = done / (time.monotonic() - started)
                print(f"  {done} of {examples} runs, {len(broken)} broken, {rate:.1f} runs/s",
                      flush=True)  # fmt: skip
    wall = time.monotonic() - started
    _figures(totals, done, wall, base, workers)
    for seed in sorted(broken):
        print(f"\n{broken[seed][1] or broken[seed][0]}")
    print(f"\n{done} runs, {len(broken)} broken" + (f": seeds {sorted(broken)}" if broken else ""))
    return 1 if broken else 0


def _figures(t: object, done: int, wall: float, base: int, workers: int) -> None:
    f = t  # lifecycle.Figures
    print(f"\nlifecycle model: {done} runs from seed {base} in {wall / 60:.1f} min "
          f"({workers} processes; {getattr(f, 'seconds', 0) / max(done, 1):.2f} s a run)")  # fmt: skip
    rows = [
        ("requests", "requests"), ("results: succeeded", "succeeded"),
        ("results: failed", "failed"), ("remote batches created", "remote_batches"),
        ("calls a fault answered", "faulted_calls"), ("daemons killed", "kills"),
        ("daemons restarted", "restarts"), ("remote batches expired", "expired"),
        ("token-limit refusals", "token_limited"), ("splits", "splits"),
        ("rounds (sum of each run's last)", "rounds"),
        ("requests resent unrun (no attempt)", "not_run_resent"),
        ("creates of unknown outcome", "ambiguous_creates"), ("orphans found", "orphans"),
        ("lines dropped cleanly, resent", "clean_drops_resent"),
        ("failed batches reingested by the operator", "reingested"),
        ("  of them given up, reingested once well", "reingested_after_give_up"),
        ("batches open, with a reason, at the end", "open_with_reason"),
    ]  # fmt: skip
    for label, attr in rows:
        print(f"  {label:<42} {getattr(f, attr):>9,}")
    for counter in ("jobs", "acts"):
        print(f"  {counter}:", dict(sorted(getattr(f, counter).items())))


# -- planted bugs ----------------------------------------------------------------------------


def planted(examples: int, base: int, only: Sequence[str]) -> int:
    chosen = [m for m in PLANTED if not only or m.name in only]
    missed = 0
    with tempfile.TemporaryDirectory(prefix="soak-planted-") as tmp:
        pristine = Path(tmp) / "pristine"
        snapshot(pristine)
        for m in chosen:
            copy = Path(tmp) / m.name
            subprocess.run(["cp", "-a", str(pristine), str(copy)], check=True)
            target = copy / m.path
            target.write_text(apply_edits(target.read_text(), [(m.old, m.new), *m.also], m.path))
            started = time.monotonic()
            proc = subprocess.run(
                [str(PYTHON), "scripts/soak.py", "--examples", str(examples), "--seed", str(base),
                 "--workers", "1", "--stop-at-first"],
                cwd=copy, env=pytest_env(copy), capture_output=True, text=True, check=False,
            )  # fmt: skip
            seconds = time.monotonic() - started
            found = re.search(r"first broken run after (\d+) runs \(seed (\d+)\)", proc.stdout)
            if found:
                first = re.search(r"^BROKEN seed \d+: (.*)$", proc.stdout, re.M)
                print(f"{m.name:<44} found after {found.group(1):>4} runs (seed {found.group(2)}, "
                      f"{seconds:.0f}s): {first.group(1)[:160] if first else '?'}", flush=True)  # fmt: skip
            else:
                missed += 1
                tail = "\n".join(proc.stdout.splitlines()[-3:] + proc.stderr.splitlines()[-5:])
                print(f"{m.name:<44} NOT found in {examples} runs ({seconds:.0f}s)\n{tail}",
                      flush=True)  # fmt: skip
    print(f"\n{len(chosen) - missed} of {len(chosen)} planted bugs found")
    return 1 if missed else 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None, help="the first seed (default: random)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stop-at-first", action="store_true")
    parser.add_argument("--planted", action="store_true", help="find each planted bug")
    parser.add_argument("--only", action="append", default=[], help="a planted bug (repeatable)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.seed if args.seed is not None else random.randrange(1, 10**7)
    if args.planted:
        return planted(args.examples, base, args.only)
    print(f"soak: {args.examples} runs from seed {base}", flush=True)
    return soak(args.examples, base, args.workers, args.stop_at_first)


if __name__ == "__main__":
    sys.exit(main())
