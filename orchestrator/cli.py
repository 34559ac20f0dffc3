"""The command line, and the only composition root: settings → logging → deps → command.

A mistake a person can fix is one line on stderr, ``orchestrator: <what is wrong>; <what to do>``,
never a traceback: exit code 2 for the command line and the configuration (a bad argument, a file
that cannot be read, a setting of the wrong type, a job that does not exist), 1 for what went wrong
at run time (the database down, a schema at another revision, a port taken). Usage errors of
argparse itself are one line too, and keep their exit code 2.

The heavy modules (SQLAlchemy, the daemon, the emulator) are imported by the commands that use
them: a mistake is reported before they are loaded, and ``orchestrator emulator`` alone loads the
emulator.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import os
import re
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, TextIO

import orjson

from orchestrator import __version__, zero_setup
from orchestrator.config import Settings
from orchestrator.domain.decide import duration
from orchestrator.errors import (
    BatchNotFound,
    ConfigError,
    JobNotFound,
    OrchestratorError,
    UsageError,
)

if TYPE_CHECKING:
    from orchestrator import retention
    from orchestrator.db.queries import JobWaiting
    from orchestrator.deps import Deps

# What exits 2 (the command line or the configuration is wrong); any other OrchestratorError is
# a failure at run time and exits 1.
USAGE_ERRORS = (ConfigError, UsageError, JobNotFound, BatchNotFound)
BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(with_emulator="emulator" in arguments)
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        from orchestrator.observability import configure_logging

        configure_logging(
            level=settings.log_level,
            fmt=settings.log_format,
            secrets=settings.secrets(),
            stream=sys.stderr,
        )
        result: int = args.func(args, settings)
        sys.stdout.flush()  # here, so that a reader gone away is noticed below
        return result
    except BrokenPipeError:
        # The reader stopped reading (``status | head -1``): it has what it wanted.
        _stdout_to_devnull()
        return 0
    except OrchestratorError as exc:
        return _fail(exc, settings)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        known = _explain(exc, settings)
        if known is None:
            raise  # a bug: its traceback is what a report needs
        return _fail(known, settings)


def _fail(exc: OrchestratorError, settings: Settings | None) -> int:
    """One line on stderr; the exit code: 2 for a usage or configuration error, else 1."""
    line = f"orchestrator: {shown(exc)}"
    for secret in settings.secrets() if settings else ():
        line = line.replace(secret, "***")
    print(line, file=sys.stderr)
    return 2 if isinstance(exc, USAGE_ERRORS) else 1


def _explain(exc: Exception, settings: Settings | None) -> OrchestratorError | None:
    """A database error a person can act on (the server down, no schema, a missing grant, a
    number out of range), as the one line to print; None for anything else."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:  # never imported: not a database error
        return None
    sa = sys.modules.get("sqlalchemy")
    orig: object = exc.orig if sa is not None and isinstance(exc, sa.exc.DBAPIError) else exc
    if not isinstance(orig, psycopg.Error):
        return None
    from orchestrator.db import schema

    url = settings.database_url if settings else None
    errors = psycopg.errors
    if isinstance(orig, psycopg.OperationalError | psycopg.InterfaceError):
        return schema.unavailable(url, orig)
    if url and isinstance(
        orig,
        errors.UndefinedTable
        | errors.UndefinedColumn
        | errors.UndefinedFunction
        | errors.InvalidSchemaName,
    ):
        try:  # the schema is not this code's: say which way, and what to run
            schema.preflight(url)
        except OrchestratorError as found:
            return found
        return None
    if isinstance(orig, errors.InsufficientPrivilege):
        return OrchestratorError(
            f"the database refused: {schema.reason(orig)}; connect as a role that has the "
            "grants orchestrator roles gives (see the README on database roles)"
        )
    if isinstance(orig, errors.NumericValueOutOfRange):
        return UsageError(f"a number is out of range: {schema.reason(orig)}; use a smaller one")
    return None


def _stdout_to_devnull() -> None:
    """Send what is left in stdout's buffer to /dev/null, so that the interpreter's last flush at
    exit does not fail on the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass  # stdout is not a file (in tests): nothing will flush to a pipe


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other error (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"orchestrator: {message}; see {self.prog} --help\n")


def _number(kind: str, low: int, high: int) -> Any:
    """An argparse type: a whole number from ``low`` to ``high``, named ``kind`` in its error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {kind} (a whole number from {low} to {high})"
            )
        return value

    parse.__name__ = kind  # what argparse calls it in its own messages
    return parse


JOB_ID = _number("job id", 1, BIGINT_MAX)
BATCH_ID = _number("batch id", 1, BIGINT_MAX)


def _parser(*, with_emulator: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="orchestrator",
        description="Run LLM Batch API work from PostgreSQL. Configuration: environment variables "
        "(ORCHESTRATOR_DATABASE_URL, FASTROUTER_API_KEY, ...; see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("run", help="run the daemon until SIGTERM")
    p.add_argument(
        "--workers", type=_number("number of workers", 1, 10_000), help="worker threads (default 4)"
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("enqueue", help="enqueue a JSONL file (or stdin: -) of requests as one job")
    p.add_argument("file", help="a JSONL file of requests, or - to read them from stdin")
    p.add_argument("--name")
    p.add_argument("--target", default="fastrouter")
    p.add_argument("--endpoint", default="/v1/chat/completions")
    p.add_argument("--max-attempts", type=_number("number of attempts", 1, INT_MAX), default=3)
    p.add_argument("--priority", type=_number("priority", -INT_MAX - 1, INT_MAX), default=0)
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("status", help="jobs, open batches, paused targets, capacity and daemons")
    p.add_argument("job", nargs="?", type=JOB_ID, help="one job in detail")
    p.add_argument(
        "--limit",
        type=_number("limit", 0, BIGINT_MAX),
        default=20,
        help="how many of the newest jobs (20)",
    )
    p.add_argument("--json", action="store_true", help="the same as one JSON object")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "capacity",
        help="each target's enqueued-token budgets (configured and learned), what is in flight "
        "and what waits for capacity; --forget MODEL deletes a learned limit",
        description="Per target and model: the budget in force (the lower of the configured "
        "enqueued_token_budgets and the limit learned from a provider's token_limit_exceeded "
        "error), the estimated tokens of the batches in flight, and the batches waiting for "
        "capacity. --forget MODEL deletes the limit learned for MODEL (when the provider raised "
        "it); the configured budget applies again until the provider refuses a batch.",
    )
    p.add_argument(
        "--forget", metavar="MODEL", help="delete the limit learned for MODEL (see --target)"
    )
    p.add_argument(
        "--target",
        metavar="NAME",
        help="only this target (with --forget: needed when MODEL has a limit learned on several)",
    )
    p.add_argument("--json", action="store_true", help="the same as one JSON object")
    p.set_defaults(func=cmd_capacity)

    p = sub.add_parser("cancel", help="cancel a job (same as setting cancel_requested_at)")
    p.add_argument("job", type=JOB_ID)
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser(
        "results", help="a job's requests with their answers, in the order they were inserted"
    )
    p.add_argument("job", type=JOB_ID)
    p.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="jsonl (default: one JSON object a line, exact) or csv (a header row; control "
        "characters other than tab and line breaks shown escaped)",
    )
    p.add_argument(
        "--failed", action="store_true", help="only the requests that failed or did not run"
    )
    p.add_argument("--output", type=Path, metavar="FILE", help="write to FILE, not stdout")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("resolve", help="settle a batch whose create outcome is unknown")
    p.add_argument("batch", type=BATCH_ID)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--adopt", metavar="REMOTE_ID", help="the provider's id of the batch")
    group.add_argument("--recreate", action="store_true", help="it was not created: create it")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser(
        "reingest",
        help="collect a failed batch's results again (one given up after its patience)",
    )
    p.add_argument("batch", type=BATCH_ID)
    p.set_defaults(func=cmd_reingest)

    p = sub.add_parser("config", help="print the effective settings (secrets masked)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser(
        "check",
        help="check the database, its schema, each target's key and the metrics port "
        "(one line each; exit 1 if any fails)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "roles",
        help="create the database roles (migrator, daemon, enqueue, reporting) and their grants",
    )
    p.set_defaults(func=cmd_roles)

    p = sub.add_parser(
        "cleanup",
        help="delete old events and workers rows (and, if asked, finished jobs) in small batches",
        description="Delete what is past its age, at most --batch-size rows per statement, each "
        "in a transaction of its own. Without --jobs-older-than, no job, request, batch or result "
        "is ever deleted. Defaults come from the [daemon] settings (events_retention_days, "
        "workers_retention_days, cleanup_batch_size).",
    )
    p.add_argument(
        "--events-older-than",
        type=_days,
        metavar="DAYS",
        help="events older than DAYS (0: keep them all)",
    )
    p.add_argument(
        "--workers-older-than",
        type=_days,
        metavar="DAYS",
        help="rows of daemons not heard from for DAYS (stopped or dead; 0: keep them all)",
    )
    p.add_argument(
        "--jobs-older-than",
        type=_days,
        metavar="DAYS",
        help="also finished jobs (completed, failed, cancelled) older than DAYS, with their "
        "requests, results, batches and events; never an open job (0: none)",
    )
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="rows per statement")
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("emulator", help="serve the built-in Batch API emulator")
    if with_emulator:  # its options only when asked for: the emulator is a heavy import
        from orchestrator.emulator import server as emulator_server

        emulator_server.add_arguments(p)
        p.set_defaults(func=lambda args, settings: emulator_server.run_from_args(args))

    p = sub.add_parser("demo", help="embedded PostgreSQL + emulator + daemon, end to end")
    p.add_argument("--jobs", type=int, default=3)
    p.add_argument("--requests", type=int, default=40, help="requests per job")
    p.add_argument(
        "--keep", action="store_true", help="keep the database up afterwards (until Ctrl-C)"
    )
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    # imported here: alembic (with mako) costs a quarter of a second that `run` need not pay
    from orchestrator.db import migrate as migrations

    url = settings.require_database_url()
    migrations.upgrade(url)
    print("schema orchestrator is up to date")
    return 0


def _deps(settings: Settings, *, create: bool = False) -> Deps:
    """Engine, sessions and clients for a command that uses the database, after checking that
    the database answers and that its schema is this code's (one line, not a traceback, when it
    is not). Commands call it before importing the database modules, which are heavy."""
    from orchestrator.db import schema

    # with no database configured, the embedded one (``zero_setup``); ``create``: made if missing
    settings = zero_setup.with_database(settings, os.environ, create=create)
    schema.preflight(settings.require_database_url())
    from orchestrator.deps import make_deps

    return make_deps(settings)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from orchestrator.db import schema

    if args.workers:
        settings = replace(settings, daemon=replace(settings.daemon, workers=args.workers))
    url = zero_setup.resolve_database_url(settings, os.environ, create=True, daemon=True)
    settings = replace(settings, database_url=url)
    schema.preflight(url)  # refuses a database down or at another schema revision, in one line
    from orchestrator.daemon import Daemon
    from orchestrator.db.session import libpq_url
    from orchestrator.deps import make_deps

    deps = make_deps(settings)
    return Daemon(deps, listen_url=libpq_url(url)).serve()


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    """A JSONL file (or stdin, ``-``) becomes one job. The target and the file are checked
    before the database is touched."""
    settings.target(args.target)
    source, shown_as, default_name = _open_input(args.file)
    with source:
        deps = _deps(settings, create=True)
        from orchestrator.db.session import unit_of_work
        from orchestrator.enqueue import enqueue_lines

        with unit_of_work(deps.sessions) as s:
            job_id = enqueue_lines(
                s,
                source,
                source_name=shown_as,
                name=args.name or default_name,
                target=args.target,
                endpoint=args.endpoint,
                max_attempts=args.max_attempts,
                priority=args.priority,
            )
    print(job_id)
    return 0


def _open_input(file: str) -> tuple[IO[bytes], str, str]:
    """The binary stream of ``file`` (``-``: stdin), how messages name it, and the job's name
    when ``--name`` is not given (the file's name)."""
    if file == "-":
        return sys.stdin.buffer, "stdin", "stdin"  # closed when read: a CLI reads it once
    path = Path(file)
    try:
        return path.open("rb"), shown(file), path.name
    except FileNotFoundError:
        raise UsageError(
            f"{shown(file)}: no such file; give the path of a JSONL file, or - to read the "
            "requests from stdin"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{shown(file)} is a directory; give the path of a JSONL file") from None
    except OSError as exc:
        raise UsageError(
            f"cannot read {_os_error(path, exc)}; check the file's permissions"
        ) from None


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 whether the cancel was recorded or the job had already finished (nothing to do: a
    finished job is as cancelled as it will get); exit 2 for a job that does not exist."""
    deps = _deps(settings)
    from orchestrator.db import ledger
    from orchestrator.db.session import unit_of_work

    with unit_of_work(deps.sessions) as s:
        found = ledger.request_cancel(s, args.job)
    if found is None:
        raise JobNotFound(f"no job {args.job}; list the jobs with orchestrator status")
    status, requested = found
    if requested:
        print(f"job {args.job}: cancel requested (status now {status})")
    else:
        print(f"job {args.job} is already {status}; nothing to cancel")
    return 0


def cmd_results(args: argparse.Namespace, settings: Settings) -> int:
    """One row per request (``queries.RESULT_COLUMNS``), streamed from the database."""
    deps = _deps(settings)
    from orchestrator.db import queries
    from orchestrator.db.session import unit_of_work

    with unit_of_work(deps.sessions) as s:
        if queries.job(s, args.job) is None:
            raise JobNotFound(f"no job {args.job}; list the jobs with orchestrator status")
        if args.output is None:
            rows = queries.request_results(s, args.job, failed_only=args.failed)
            _write_results(rows, sys.stdout, args.format)
            return 0
        try:
            out = args.output.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            print(f"orchestrator: cannot write {_os_error(args.output, exc)}", file=sys.stderr)
            return 2
        try:
            with out:
                rows = queries.request_results(s, args.job, failed_only=args.failed)
                _write_results(rows, out, args.format)
        except OSError as exc:
            print(f"orchestrator: writing {_os_error(args.output, exc)}", file=sys.stderr)
            return 1
    return 0


def _os_error(path: Path, exc: OSError) -> str:
    return f"{shown(path)}: {shown(exc.strerror or exc)}"


def _write_results(rows: Any, out: TextIO, fmt: str) -> None:
    columns = list(rows.keys())
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(value) for value in row])
    else:
        for row in rows:
            out.write(json_text(dict(zip(columns, row, strict=True))) + "\n")


# What a CSV cell shows escaped: the control characters but tab and line breaks, which the csv
# module quotes (an answer is often several lines long).
_CSV_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return decimal_text(value)
    return _CSV_CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """What the daemon would run with: environment over file over preset, secrets masked."""
    url = settings.database_url
    embedded = f"(not set: the embedded PostgreSQL in {zero_setup.data_dir(os.environ)})"
    print(f"database_url  {shown(masked_url(url)) if url else shown(embedded)}")
    print(f"log           {settings.log_level}, {settings.log_format}")
    daemon = dataclasses.asdict(settings.daemon)
    print("daemon        " + ", ".join(f"{k}={v}" for k, v in daemon.items()))
    for name, t in sorted(settings.targets.items()):
        key = "set" if t.api_key and t.api_key.reveal() else "NOT SET"
        print(
            f"target {shown(name)}: {t.flavor} at {shown(t.base_url)}, key {key}, "
            f"timeout {t.timeout_seconds:g} s, list {t.can_list}, cancel {t.can_cancel}, "
            f"unknown creates: {t.ambiguous_create_policy}"
        )
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    """One line per check (``ok``, ``FAIL`` or ``skip``); exit 1 if any failed."""
    from orchestrator.check import run_checks

    if not settings.database_url:
        # the embedded database `run` would use, if it has been made; else the check says FAIL
        with contextlib.suppress(ConfigError):
            settings = zero_setup.with_database(settings, os.environ)
    return 0 if run_checks(settings, sys.stdout) else 1


def cmd_roles(args: argparse.Namespace, settings: Settings) -> int:
    """The database roles of ``deploy/roles.sql``, applied as the configured user (a superuser)."""
    from orchestrator import roles

    for notice in roles.apply(settings.require_database_url()):
        print(shown(notice))
    print("\n".join(roles.summary()))
    return 0


def masked_url(url: str) -> str:
    """A database URL with its password replaced by ``***``."""
    from orchestrator.db.session import sqlalchemy_url

    try:
        return sqlalchemy_url(url).set(drivername="postgresql").render_as_string()
    except ConfigError:
        return "(not a valid URL)"


def cmd_resolve(args: argparse.Namespace, settings: Settings) -> int:
    deps = _deps(settings)
    from orchestrator.db import ledger
    from orchestrator.db.session import unit_of_work

    with unit_of_work(deps.sessions) as s:
        how = ledger.resolve_unknown_create(s, args.batch, adopt=args.adopt, now=deps.clock.now())
    print(f"batch {args.batch}: {how}")
    return 0


def cmd_reingest(args: argparse.Namespace, settings: Settings) -> int:
    deps = _deps(settings)
    from orchestrator.db import ledger
    from orchestrator.db.session import unit_of_work

    with unit_of_work(deps.sessions) as s:
        remote = ledger.reopen_for_reingest(s, args.batch, now=deps.clock.now())
    print(
        f"batch {args.batch}: reopened; a running daemon polls {shown(remote)} and ingests what "
        "the provider produced"
    )
    return 0


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days") from None
    if not days >= 0 or days == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: days must be 0 or more")
    return days


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return n


def cmd_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    """Retention by hand (the daemon's timer does events and workers on its own)."""
    from orchestrator import retention

    d = settings.daemon
    policy = retention.Policy(
        events_days=d.events_retention_days
        if args.events_older_than is None
        else args.events_older_than,
        workers_days=d.workers_retention_days
        if args.workers_older_than is None
        else args.workers_older_than,
        jobs_days=args.jobs_older_than,
        batch_size=args.batch_size or d.cleanup_batch_size,
    )
    deps = _deps(settings)
    try:
        report = retention.sweep(deps.sessions, policy, dry_run=args.dry_run)
    finally:
        deps.close()
    for line in _cleanup_lines(report):
        print(line)
    return 0


def _cleanup_lines(report: retention.Report) -> list[str]:
    """What ``cleanup`` did (or would do): one row per table it deletes from."""
    policy = report.policy
    which = {
        "events": f"older than {policy.events_days:g} days" if policy.events_days else "",
        "workers": f"not heard from for {policy.workers_days:g} days"
        if policy.workers_days
        else "",
    }
    tables = ["events", "workers"]
    if policy.jobs_days:
        which["events"] += (", and " if which["events"] else "") + "those of the jobs below"
        which["jobs"] = f"finished more than {policy.jobs_days:g} days ago"
        tables += ["jobs", "batches", "batch_items", "requests", "results"]
    which = {table: text or "kept (retention off)" for table, text in which.items()}
    verb = "would delete (dry run: nothing deleted)" if report.dry_run else "deleted"
    lines = [f"{verb}, at most {policy.batch_size:,} rows per statement:"]
    rows = [
        [
            table,
            f"{report.tables[table].rows:,}",
            "-" if report.dry_run else f"{report.tables[table].statements:,}",
            which.get(table, "of those jobs"),
        ]
        for table in tables
    ]
    headers = ["table", "rows", "statements", "which"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    right = (False, True, True, False)
    for cells in [headers, *rows]:
        lines.append(
            "  ".join(
                c.rjust(w) if r else c.ljust(w)
                for c, w, r in zip(cells, widths, right, strict=True)
            ).rstrip()
        )
    if not policy.jobs_days:
        lines.append(
            "no job, request, batch or result was touched (--jobs-older-than DAYS deletes "
            "finished jobs with theirs)"
        )
    return lines


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    deps = _deps(settings)
    from orchestrator import capacity_view
    from orchestrator.db import queries
    from orchestrator.db.session import unit_of_work

    now = deps.clock.now()
    with unit_of_work(deps.sessions) as s:
        if args.job is not None:
            return _job_status(s, args.job, now=now, as_json=args.json)
        jobs = queries.jobs(s, limit=args.limit)
        progress = queries.job_progress(s, [j.id for j in jobs])
        waiting = queries.jobs_waiting(s, [j.id for j in jobs])
        open_batches = queries.open_batches_by_state(s)
        targets = queries.target_states(s)
        capacity = capacity_view.read(s, settings, in_status=True)
        stuck = queries.stuck_batches(s, now=now, stuck_after=settings.daemon.stuck_after_seconds)
        # the live ones: a daemon killed without a goodbye stops counting after its lease
        workers = queries.live_workers(s, within_seconds=settings.daemon.lease_seconds)
        unknown = {
            t: n for t, n in queries.pending_by_target(s).items() if t not in settings.targets
        }
    if args.json:
        report = {
            "now": now,
            "jobs": [_job_json(j, progress.get(j.id), now, waiting.get(j.id)) for j in jobs],
            "open_batches": dict(sorted(open_batches)),
            "pending_not_served": dict(sorted(unknown.items())),
            "targets": [_target_json(t, now) for t in targets],
            "capacity": capacity_view.as_json(capacity),
            "stuck_batches": [
                {**b._asdict(), "stuck_seconds": _seconds(b.failing_since or b.expires_at, now)}
                for b in stuck
            ],
            "daemons": [
                {
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "version": w.version,
                    "started_at": w.started_at,
                    "heartbeat_at": w.heartbeat_at,
                }
                for w in workers
            ],
        }
        print(json_text(report, indent=True))
        return 0
    _table(
        [
            "job",
            "name",
            "status",
            "progress",
            "requests",
            "ok",
            "failed",
            "batches",
            "age",
            "duration",
            "tokens",
            "cost",
            "error",
        ],
        [
            [
                j.id,
                j.name or "",
                j.status,
                _percent_text(_progress(j, progress.get(j.id))),
                j.request_count or 0,
                j.succeeded_count,
                j.failed_count,
                j.batch_count,
                duration(_seconds(j.created_at, now) or 0.0),
                _duration_text(_job_duration(j, now)),
                f"{j.total_tokens:,}",
                money(j.cost),
                (j.error or "")[:60],
            ]
            for j in jobs
        ],
    )
    for j in jobs:
        if j.id in waiting:
            print(f"job {j.id}: {capacity_view.job_line(waiting[j.id], now)}")
    print("\nopen batches: " + (", ".join(f"{st} {n}" for st, n in open_batches) or "none"))
    if unknown:
        print(_not_served_line(unknown, settings))
    for t in targets:
        if t.paused:
            print(
                f"target {shown(t.target)}: PAUSED ({shown(t.reason)}); jobs wait, next probe "
                f"{t.blocked_until:%H:%M:%S}"
            )
        elif t.blocked_until and t.blocked_until > now:
            print(
                f"target {shown(t.target)}: throttled until {t.blocked_until:%H:%M:%S} "
                f"({shown(t.reason)})"
            )
    for b in stuck:
        since = b.failing_since or b.expires_at
        age = duration((now - since).total_seconds()) if since else "?"
        why = (
            f"failing for {age}: {shown((b.last_error or '')[:200])}"
            if b.failing_since
            else f"still {shown(b.remote_status)} {age} past its expires_at"
        )
        print(f"STUCK batch {b.id} (job {b.job_id}, {b.state}): {why}")
    for line in capacity_view.status_lines(capacity, now):
        print(line)
    print(
        f"daemons running: {len(workers)} (seen in the last {duration(settings.daemon.lease_seconds)})"
        + "".join(
            f"\n  {shown(w.hostname)} pid {w.pid}, seen {w.heartbeat_at:%H:%M:%S}" for w in workers
        )
    )
    return 0


def _not_served_line(unknown: dict[str, int], settings: Settings) -> str:
    """Pending jobs of a target this configuration does not know: a daemon configured as this
    command is leaves them, for a daemon that has their target. (Not a built-in target without a
    key here: the keys live in the daemons' environment, not in the one status runs in; each
    daemon's gauge and log say what it leaves for want of a key.)"""
    total = sum(unknown.values())
    jobs = "1 pending job waits" if total == 1 else f"{total} pending jobs wait"
    named = ", ".join(f"{shown(t)} {n}" for t, n in sorted(unknown.items()))
    hints = "; ".join(f"{shown(t)}: {settings.not_served_hint(t)}" for t in sorted(unknown))
    return f"{jobs} for a target this configuration does not know ({named}): {hints}"


def _job_status(s: Any, job_id: int, *, now: dt.datetime, as_json: bool) -> int:
    from orchestrator.db import queries

    job = queries.job(s, job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id}; list the jobs with orchestrator status")
    progress = queries.job_progress(s, [job_id]).get(job_id)
    waiting = queries.jobs_waiting(s, [job_id]).get(job_id)
    batches = queries.job_batches(s, job_id)
    batch_progress = queries.batch_progress(s, job_id)
    if as_json:
        report = _job_json(job, progress, now, waiting) | {
            "batches": [_batch_json(b, batch_progress.get(b.id)) for b in batches]
        }
        print(json_text(report, indent=True))
        return 0
    print(
        f"job {job.id} ({shown(job.name or 'unnamed')}): {job.status}, target {shown(job.target)}"
    )
    done, total, percent = _progress(job, progress)
    print(
        f"progress {_percent_text((done, total, percent))} ({done:,} of {total:,} requests in "
        f"its batches), {job.succeeded_count:,} succeeded, {job.failed_count:,} failed of "
        f"{job.request_count or 0:,}"
    )
    print(
        f"created {job.created_at:%Y-%m-%d %H:%M:%S} ({duration(_seconds(job.created_at, now) or 0)}"
        f" ago), running time {_duration_text(_job_duration(job, now))}"
    )
    print(
        f"tokens {job.total_tokens:,} ({job.prompt_tokens:,} prompt, "
        f"{job.completion_tokens:,} completion), cost {money(job.cost)}"
    )
    if job.error:
        print(f"error: {shown(job.error)}")
    if waiting is not None:
        from orchestrator.capacity_view import job_line

        print(job_line(waiting, now))
    _table(
        [
            "batch",
            "round",
            "state",
            "remote",
            "remote id",
            "requests",
            "progress",
            "ok",
            "failed",
            "tokens",
            "cost",
            "last error",
        ],
        [
            [
                b.id,
                b.round,
                b.state,
                b.remote_status or "",
                b.remote_batch_id or "",
                b.request_count,
                "{}/{}".format(*batch_progress.get(b.id, (0, b.request_count))),
                b.succeeded_count,
                b.failed_count,
                f"{b.total_tokens:,}",
                money(b.cost),
                (b.last_error or "")[:50],
            ]
            for b in batches
        ],
    )
    return 0


def _seconds(since: dt.datetime | None, until: dt.datetime) -> float | None:
    """Seconds from ``since`` to ``until`` (never below 0), to the millisecond."""
    return None if since is None else round(max((until - since).total_seconds(), 0.0), 3)


def _job_duration(job: Any, now: dt.datetime) -> float | None:
    """How long the job has been running: started → finished, or now; None before it starts."""
    return _seconds(job.started_at, job.finished_at or now)


def _duration_text(seconds: float | None) -> str:
    return "-" if seconds is None else duration(seconds)


def _progress(job: Any, counted: tuple[int, int] | None) -> tuple[int, int, float | None]:
    """(done, total, percent) of a job's requests in its open and done batches. The percent is
    rounded down to a tenth (100 only when all are done); with no request counted yet, 0 for a job
    not finished, 100 for a completed one and None (unknown) for one failed or cancelled."""
    done, total = counted or (0, 0)
    if total > 0:
        return done, total, done * 1000 // total / 10
    if job.status == "completed":
        return done, total, 100.0
    return done, total, None if job.status in ("failed", "cancelled") else 0.0


def _percent_text(progress: tuple[int, int, float | None]) -> str:
    percent = progress[2]
    return "-" if percent is None else f"{int(percent)}%"


def _job_json(
    job: Any, counted: tuple[int, int] | None, now: dt.datetime, waiting: JobWaiting | None
) -> dict[str, Any]:
    done, total, percent = _progress(job, counted)
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "target": job.target,
        "endpoint": job.endpoint,
        "request_count": job.request_count,
        "succeeded_count": job.succeeded_count,
        "failed_count": job.failed_count,
        "batch_count": job.batch_count,
        "progress": {"done": done, "total": total, "percent": percent},
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "total_tokens": job.total_tokens,
        "cost": job.cost,
        "error": job.error,
        "cancel_requested_at": job.cancel_requested_at,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "age_seconds": _seconds(job.created_at, now),
        "duration_seconds": _job_duration(job, now),
        "waiting_for_capacity": 0 if waiting is None else waiting.batches,
        "waiting_reason": None if waiting is None else waiting.reason,
    }


def _batch_json(b: Any, counted: tuple[int, int] | None) -> dict[str, Any]:
    done, total = counted or (0, b.request_count)
    return {
        "id": b.id,
        "round": b.round,
        "state": b.state,
        "remote_status": b.remote_status,
        "remote_batch_id": b.remote_batch_id,
        "request_count": b.request_count,
        "progress": {"done": done, "total": total},
        "succeeded_count": b.succeeded_count,
        "failed_count": b.failed_count,
        "prompt_tokens": b.prompt_tokens,
        "completion_tokens": b.completion_tokens,
        "total_tokens": b.total_tokens,
        "cost": b.cost,
        "cost_source": b.cost_source,
        "created_at": b.created_at,
        "finished_at": b.finished_at,
        "last_error": b.last_error,
        "model": b.model,
        "estimated_tokens": b.estimated_tokens,
        "waiting_since": b.waiting_since,
        "waiting_reason": b.waiting_reason,
    }


def _target_json(t: Any, now: dt.datetime) -> dict[str, Any]:
    throttled = t.blocked_until is not None and t.blocked_until > now
    return {
        "target": t.target,
        "state": "paused" if t.paused else "throttled" if throttled else "ok",
        "blocked_until": t.blocked_until,
        "reason": t.reason,
    }


def cmd_capacity(args: argparse.Namespace, settings: Settings) -> int:
    """Every target's capacity (``--target``: one target's, configured or named by the
    database), or ``--forget MODEL`` (``capacity_view``)."""
    deps = _deps(settings)
    from orchestrator import capacity_view as view
    from orchestrator.db.session import unit_of_work

    now = deps.clock.now()
    if args.forget is not None:
        with unit_of_work(deps.sessions) as s:
            forgotten = view.forget(s, settings, args.forget, args.target)
        if args.json:
            print(json_text(view.forgotten_json(forgotten), indent=True))
        else:
            print(view.forgotten_text(forgotten))
        return 0
    with unit_of_work(deps.sessions) as s:
        targets = view.read(s, settings, in_status=False)
    if args.target is not None:
        targets = view.of_target(targets, args.target, settings)
    if args.json:
        print(json_text({"now": now, "targets": view.as_json(targets)}, indent=True))
        return 0
    rows = view.rows(targets, now)
    if not rows and not any(t.max_batches_in_flight is not None for t in targets):
        print("no budget configured or learned, and nothing in flight or waiting")
        return 0
    _table(view.HEADERS, rows)
    for line in view.notes(targets):
        print(line)
    return 0


def decimal_text(value: Decimal) -> str:
    """``0.0000216``: a decimal exactly, in plain notation (never ``2.16E-5``), without the
    trailing zeros of its scale."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def money(value: Decimal | None) -> str:
    """``$0.000260``: an amount of US dollars, exact (six decimals, more if it has them); ``-``
    when unknown."""
    if value is None:
        return "-"
    whole, _, decimals = decimal_text(value).partition(".")
    return f"${whole}.{decimals.ljust(6, '0')}"


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return decimal_text(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_C1 = re.compile(r"[\x7f-\x9f]")


def json_text(value: Any, *, indent: bool = False) -> str:
    """``value`` as JSON: decimals as exact decimal strings, times as ISO 8601, and every control
    character escaped (JSON escapes those below 0x20; these escape DEL and the C1 range too)."""
    option = orjson.OPT_INDENT_2 if indent else 0
    text = orjson.dumps(value, default=_json_default, option=option).decode()
    return _C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def shown(value: object) -> str:
    """A value from the database, a provider or a user, safe to print: control characters (ANSI
    escapes, newlines, carriage returns) are shown escaped (``\\x1b``, ``\\n``), so no value can
    forge a line of output or take over the terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[shown(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.demo import run_demo

    return run_demo(settings, jobs=args.jobs, requests=args.requests, keep=args.keep)
