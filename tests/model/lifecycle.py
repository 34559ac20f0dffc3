"""A model of the batch lifecycle: random interleavings of what the provider, the network, the
clock, the operator and other daemons do, run against the real daemon code, a real PostgreSQL and
the emulator, and the README's invariants checked after every run.

A *scenario* is made from a seed alone (:func:`generate`): the provider's mode and pace (short
completion windows expire batches half done), its enqueued-token limit, one or two daemons (the
second one's clock 400 s off, or not), a few jobs (one of them, now and then, with a request sure
to fail), and a list of *acts* run one after the other:

* the daemons tick (one, or both at once in two threads), and the shared clock moves;
* a fault is armed in the emulator: any of its HTTP faults (429 with ``Retry-After``, 5xx, 401,
  an answer lost after the call was carried out, an answer past the client's timeout, a body cut
  short or ending early, garbage, an HTML page, gzip, a redirect, a create carried out later), a
  batch fault (per-line 429/500, lines missing or duplicated, shuffled output, no usage, a batch
  failed as a whole, stuck in finalizing, files hidden for a while, an error file id ``""``,
  messages that quote the key), a file not ready, the key revoked and restored;
* the operator cancels a job; another job arrives;
* a daemon is killed at a call (before it is sent, once the provider has carried it out, or part
  way through reading the answer): :class:`Killed` is raised in the daemon's own threads past
  every ``except Exception``, so the step stops where it is and writes nothing more (an open
  transaction rolls back), as SIGKILL would; a new daemon takes its place once its leases run out;
* the leases run out under a live daemon (a stall), the orphan sweep runs.

Then every fault is lifted and the daemons run until every job has ended (:meth:`World.drain`),
and :func:`check` holds the database, the logs and the emulator's own record (what it created,
what it produced) against the promises: one final row per request, matching what the provider
produced; nothing paid twice; attempts within ``max_attempts`` and never spent by a request the
provider did not run; counters, tokens and cost equal to a recomputation from the rows and the
prices; no batch left open without a visible reason; no secret anywhere; no step crashed.

Every run prints its seed; ``MODEL_SEED=<seed> MODEL_EXAMPLES=1 .venv/bin/python -m pytest
tests/model`` (or ``scripts/soak.py --seed <seed> --examples 1``) replays it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import io
import itertools
import logging
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import structlog
from psycopg.rows import dict_row

from orchestrator.clock import ManualClock, SystemClock
from orchestrator.daemon import Daemon
from orchestrator.db import ledger
from orchestrator.db.session import unit_of_work, with_database
from orchestrator.deps import Deps, make_deps
from orchestrator.domain.cost import as_stored, provider_cost
from orchestrator.emulator import Emulator, EmulatorConfig, mock_transport
from orchestrator.emulator import routes as emu_routes
from orchestrator.emulator.faults import Garbage, Gzipped, HtmlPage, LateApply, Redirect
from orchestrator.emulator.messages import EmuRequest
from orchestrator.observability import configure_logging
from tests import support

API_KEY = support.API_KEY
MODEL = "openai/gpt-4.1-nano"
# The daemons' pace, in virtual seconds: the tests' fast daemon, with a patience of an hour (so that
# a run that gives a batch up does so within a few hundred ticks) and two workers each.
DAEMON = dataclasses.replace(
    support.FAST, workers=2, patience_seconds=3600.0, stuck_after_seconds=600.0
)
TERMINAL_JOBS = ("completed", "failed", "cancelled")
OPEN_BATCHES = ("planned", "uploaded", "creating", "submitted", "ingesting")
ROUTES = {
    "fastrouter": ("upload_file", "create_batch", "get_batch", "file_content"),
    "openai": (
        "upload_file", "create_batch", "get_batch", "file_content", "list_batches",
        "cancel_batch", "get_file",
    ),
}  # fmt: skip


class Killed(BaseException):
    """The model's SIGKILL: raised in a daemon's threads at a call, past every ``except
    Exception``, so the step stops there and writes nothing more."""


# -- scenarios -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobSpec:
    size: int
    max_attempts: int
    bad: bool = False  # one request sure to fail: the job fails before anything is sent


@dataclasses.dataclass(frozen=True)
class Act:
    kind: str
    args: tuple[tuple[str, Any], ...] = ()

    def arg(self, name: str) -> Any:
        return dict(self.args)[name]

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.args)
        return f"{self.kind}({inner})"


def act(kind: str, **args: Any) -> Act:
    return Act(kind, tuple(sorted(args.items())))


@dataclasses.dataclass(frozen=True)
class Scenario:
    seed: int
    mode: str
    emulator: tuple[tuple[str, Any], ...]
    daemons: int
    skew: float  # seconds the second daemon's clock is off
    jobs: tuple[JobSpec, ...]
    acts: tuple[Act, ...]

    def describe(self) -> str:
        lines = [
            f"seed {self.seed}: mode {self.mode}, {self.daemons} daemon(s), skew {self.skew:+g}s",
            f"  emulator {dict(self.emulator)}",
            f"  jobs {[dataclasses.astuple(j) for j in self.jobs]}",
        ]
        lines += [f"  {n:3d}. {a}" for n, a in enumerate(self.acts, 1)]
        return "\n".join(lines)


def generate(seed: int) -> Scenario:
    """The scenario of ``seed`` (the same seed, the same scenario)."""
    rng = random.Random(seed)
    mode = rng.choice(["fastrouter", "openai"])
    emulator = {
        "rows_per_second": rng.choice([1.0, 2.0, 10.0, 50.0, 1000.0]),
        "validation_seconds": rng.choice([0.0, 1.0, 5.0]),
        "finalizing_seconds": rng.choice([0.0, 2.0, 10.0]),
        # short windows expire batches part way through (a slow provider)
        "completion_window_seconds": rng.choice([8, 15, 60, 600, 86400, 86400]),
        "enqueued_token_limit": rng.choice([None, None, None, 300, 1500]),
        "token_limit_states_limit": rng.random() < 0.7,
        "line_failure_rate": rng.choice([0.0, 0.0, 0.0, 0.1]),
        "output_order": rng.choice(["input", "shuffled"]),
        "max_file_bytes": rng.choice([200 * 1024 * 1024] * 5 + [2500]),
    }
    daemons = rng.choice([1, 1, 2])
    skew = rng.choice([0.0, 400.0, -400.0]) if daemons == 2 else 0.0
    jobs = tuple(_job(rng) for _ in range(rng.randint(1, 3)))
    acts = tuple(_act(rng, mode, daemons) for _ in range(rng.randint(6, 40)))
    return Scenario(seed, mode, tuple(emulator.items()), daemons, skew, jobs, acts)


def _job(rng: random.Random) -> JobSpec:
    return JobSpec(rng.randint(1, 24), rng.randint(1, 3), bad=rng.random() < 0.08)


# Where a daemon is killed: mostly at the calls every batch makes.
KILL_ROUTES = {
    "fastrouter": ("upload_file", "create_batch", "get_batch", "file_content"),
    "openai": (
        "upload_file", "create_batch", "get_batch", "file_content", "upload_file",
        "create_batch", "get_batch", "file_content", "list_batches", "cancel_batch",
    ),
}  # fmt: skip


def _act(rng: random.Random, mode: str, daemons: int) -> Act:
    node = rng.randrange(daemons)
    roll = rng.random()
    if roll < 0.28:
        return act("tick", node=node) if daemons == 1 or rng.random() < 0.6 else act("tick_all")
    if roll < 0.45:
        return act("advance", seconds=rng.choice([1, 3, 10, 30, 120, 600, 3600]))
    if roll < 0.63:
        return _http_fault(rng, ROUTES[mode])
    if roll < 0.74:
        return _batch_fault(rng)
    if roll < 0.81:
        when = rng.choice(["before", "after", "mid"])
        return act("kill", node=node, route=rng.choice(KILL_ROUTES[mode]), when=when)
    return _other(rng, node)


def _other(rng: random.Random, node: int) -> Act:
    return rng.choice(
        [
            act("restart", node=node), act("restart", node=node), act("restart", node=node),
            act("cancel", job=rng.randrange(3)), act("cancel", job=rng.randrange(3)),
            act("enqueue", job=_job(rng)), act("enqueue", job=_job(rng)),
            act("expire_leases"), act("expire_leases"), act("revoke"), act("restore"),
            act("not_ready", seconds=rng.choice([5.0, 30.0])), act("sweep", node=node),
            act("release"), act("reingest"), act("reingest"),
        ]
    )  # fmt: skip


def _http_fault(rng: random.Random, routes: tuple[str, ...]) -> Act:
    route = rng.choice((*routes, "*"))
    times = rng.choice([1, 1, 2, 3])
    kind = rng.choice(
        ["status", "status", "rate", "lost", "slow", "cut", "garbage", "html", "gzip",
         "redirect", "late", "echo"]
    )  # fmt: skip
    if kind == "status":
        return act("fault", route=route, status=rng.choice([500, 502, 503, 401]), times=times)
    if kind == "rate":
        return act("fault", route=route, status=429, retry_after=rng.choice([1, 20, 90]),
                   times=times)  # fmt: skip
    if kind == "lost":  # carried out, the answer lost (a 502 from a gateway)
        return act("fault", route=rng.choice(["create_batch", "cancel_batch", "upload_file"]),
                   status=rng.choice([502, 504]), applied=True, times=1)  # fmt: skip
    if kind == "slow":  # past the client's timeout: carried out, the client gave up
        return act("fault", route=route, status=503, applied=True, delay_seconds=120.0, times=1)
    if kind == "cut":
        return act("fault", route="file_content", truncate=rng.choice([0.3, 0.9]),
                   clean=rng.random() < 0.5, times=times)  # fmt: skip
    if kind == "late":
        late = rng.choice([30.0, 100.0, 100.0, 900.0])
        return act("fault", route="create_batch", late=late, times=1)
    if kind == "echo":
        return act("fault", route=route, status=rng.choice([400, 500]), echo_auth=True,
                   times=1)  # fmt: skip
    return act("fault", route=route, special=kind, times=times)


def _batch_fault(rng: random.Random) -> Act:
    options: dict[str, Any] = rng.choice(
        [
            {"line_429": 0.3}, {"line_500": 0.3}, {"missing_lines": 0.2},
            {"duplicate_lines": 0.3}, {"shuffle": True}, {"no_usage": True},
            {"fail_with": rng.choice(["server_error", "invalid_model"])},
            {"stuck_finalizing": rng.choice([600.0, 7200.0, math.inf])},
            {"hide_output": rng.choice([30.0, 600.0])},
            {"empty_error_file_id": True}, {"echo_auth": True, "line_500": 0.5},
            {"line_429": 0.2, "line_500": 0.2, "missing_lines": 0.1, "duplicate_lines": 0.1},
        ]
    )  # fmt: skip
    return act("batch_fault", times=rng.choice([1, 1, 2]), **options)


# -- the world ---------------------------------------------------------------------------------


class OffsetClock:
    """Another VM's clock: the shared one, ``offset`` seconds off."""

    def __init__(self, base: ManualClock, offset: float) -> None:
        self._base = base
        self._offset = dt.timedelta(seconds=offset)

    def now(self) -> dt.datetime:
        return self._base.now() + self._offset

    def sleep(self, seconds: float) -> None:
        self._base.sleep(seconds)


class Mortal(httpx.BaseTransport):
    """The emulator's in-process transport, and a kill switch: armed for a route, the daemon dies
    at its next call to it, before it is sent, once the provider has carried it out, or part way
    through reading the answer; and every call it makes after that dies too."""

    def __init__(self, inner: httpx.BaseTransport, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix
        self._armed: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self.dead = False
        self.died_at: str | None = None

    def arm(self, route: str, when: str | None) -> None:
        with self._lock:
            self._armed = (route, when) if when else None

    def _die(self, where: str) -> Killed:
        self.dead = True
        self.died_at = where
        return Killed(where)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        route = emu_routes.match(request.method, request.url.path, self._prefix).route
        with self._lock:
            if self.dead:
                raise Killed("dead")
            when = None
            if self._armed is not None and self._armed[0] == route:
                when = self._armed[1]
                self._armed = None
            if when == "before":
                raise self._die(f"{route}:before")
        response = self._inner.handle_request(request)
        if when == "after":
            response.close()
            with self._lock:
                raise self._die(f"{route}:after")
        if when == "mid":
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                stream=_Dying(response.stream, self, f"{route}:mid"),
                request=request,
            )
        return response


class _Dying(httpx.SyncByteStream):
    """A body that kills its reader after the first chunk (or at its end, if it has one)."""

    def __init__(self, inner: Any, mortal: Mortal, where: str) -> None:
        self._inner = inner
        self._mortal = mortal
        self._where = where

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            yield chunk[: max(1, len(chunk) // 2)]
            break
        raise self._mortal._die(self._where)

    def close(self) -> None:
        self._inner.close()


@dataclasses.dataclass
class Node:
    """One daemon (a process of its own, in the model)."""

    deps: Deps
    daemon: Daemon
    mortal: Mortal
    alive: bool = True

    def close(self) -> None:
        self.daemon.close()
        self.deps.close()


@dataclasses.dataclass
class Figures:
    """What one run did, for the soak's totals."""

    acts: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    kills: int = 0
    restarts: int = 0
    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    jobs: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    remote_batches: int = 0
    rounds: int = 0
    expired: int = 0
    token_limited: int = 0
    faulted_calls: int = 0
    orphans: int = 0
    ambiguous_creates: int = 0
    splits: int = 0
    not_run_resent: int = 0
    clean_drops_resent: int = 0
    reingested: int = 0
    reingested_after_give_up: int = 0
    open_with_reason: int = 0
    drain_ticks: int = 0
    seconds: float = 0.0

    def add(self, other: Figures) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, collections.Counter):
                mine.update(theirs)
            else:
                setattr(self, f.name, mine + theirs)


class World:
    """The emulator, the daemons and the database of one run, on one manual clock."""

    def __init__(self, scenario: Scenario, db_url: str) -> None:
        self.scenario = scenario
        self.db_url = db_url
        self.clock = ManualClock(SystemClock().now())
        config = EmulatorConfig(
            mode=scenario.mode, api_key=API_KEY, seed=scenario.seed, **dict(scenario.emulator)
        )
        self.emulator = Emulator(config, self.clock)
        self.prefix = config.path_prefix
        self.settings = support.make_settings(
            db_url, "http://emulator" + config.path_prefix, preset=scenario.mode,
            target=scenario.mode, daemon=DAEMON,
        )  # fmt: skip
        self.nodes: list[Node] = [self._node(i) for i in range(scenario.daemons)]
        self.jobs: list[tuple[int, JobSpec]] = []
        self.figures = Figures()
        self._prices()

    def _node(self, index: int, generation: int = 0) -> Node:
        clock: Any = self.clock
        if index == 1 and self.scenario.skew:
            clock = OffsetClock(self.clock, self.scenario.skew)
        mortal = Mortal(mock_transport(self.emulator), self.prefix)
        seed = self.scenario.seed * 100 + index * 10 + generation
        deps = make_deps(self.settings, clock=clock, transport=mortal, seed=seed)
        return Node(deps, Daemon(deps), mortal)

    def _prices(self) -> None:
        with psycopg.connect(self.db_url) as conn:
            conn.execute(
                "INSERT INTO orchestrator.prices (model, valid_from, input_per_mtok, "
                "cached_input_per_mtok, output_per_mtok, batch_discount) "
                "VALUES (%s, '2020-01-01', 0.1, 0.025, 0.4, 0.5)",
                (MODEL,),
            )

    # -- jobs --

    def enqueue(self, spec: JobSpec) -> int:
        n = len(self.jobs)
        requests = [
            {"custom_id": f"j{n}-{i:03d}", "body": support.chat_body(f"{n}.{i}", model=MODEL)}
            for i in range(spec.size)
        ]
        if spec.bad:
            requests[-1] = {"custom_id": f"j{n}-bad", "body": {"messages": [{"role": "user"}]}}
        job_id = support.enqueue(
            self.db_url, requests, name=f"model {n}", target=self.scenario.mode,
            max_attempts=spec.max_attempts,
        )  # fmt: skip
        self.jobs.append((job_id, spec))
        self.figures.requests += spec.size
        return job_id

    # -- acts --

    def run(self) -> None:
        for spec in self.scenario.jobs:
            self.enqueue(spec)
        for a in self.scenario.acts:
            self.figures.acts[a.kind] += 1
            self.apply(a)
            self._bury()

    def apply(self, a: Act) -> None:  # noqa: C901 (one branch per kind of act, flat)
        k = a.kind
        if k == "tick":
            self._tick(self.nodes[a.arg("node")])
        elif k == "tick_all":
            threads = [threading.Thread(target=self._tick, args=(n,)) for n in self.nodes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elif k == "advance":
            self.clock.advance(a.arg("seconds"))
        elif k == "fault":
            self._fault(dict(a.args))
        elif k == "batch_fault":
            options = dict(a.args)
            times = options.pop("times")
            self.emulator.faults.add_batch_fault(times=times, **options)
        elif k == "not_ready":
            self.emulator.faults.add_file_not_ready(a.arg("seconds"))
        elif k == "revoke":
            self.emulator.revoke_key()
        elif k == "restore":
            self.emulator.restore_key()
        elif k == "release":
            self.emulator.release_stuck()
        elif k == "cancel":
            if self.jobs:
                job_id = self.jobs[a.arg("job") % len(self.jobs)][0]
                with psycopg.connect(self.db_url) as conn:
                    conn.execute(
                        "UPDATE orchestrator.jobs SET cancel_requested_at = now() WHERE id = %s",
                        (job_id,),
                    )
        elif k == "enqueue":
            self.enqueue(a.arg("job"))
        elif k == "kill":
            # armed, then the daemon goes on (a few ticks) until it reaches that call, or not
            node = self.nodes[a.arg("node")]
            if node.alive:
                node.mortal.arm(a.arg("route"), a.arg("when"))
                for _ in range(4):
                    self._tick(node)
                    if node.mortal.dead:
                        break
                    self.clock.advance(5)
        elif k == "restart":
            self._restart(a.arg("node"))
        elif k == "expire_leases":
            support.expire_leases(self.db_url)
        elif k == "reingest":
            self._reingest()
        elif k == "sweep":
            node = self.nodes[a.arg("node")]
            if node.alive:
                with contextlib.suppress(Killed):
                    node.daemon.sweep_orphans(force=True)
        else:  # pragma: no cover (a scenario made by generate() has no other kind)
            raise ValueError(f"unknown act {a}")

    def _reingest(self) -> None:
        """The operator's ``orchestrator reingest`` of the first failed batch that reached the
        provider, if there is one."""
        batch_id = support.scalar(
            self.db_url,
            "SELECT min(id) FROM orchestrator.batches "
            "WHERE state = 'failed' AND remote_batch_id IS NOT NULL",
        )
        if batch_id is not None:
            with unit_of_work(self.nodes[0].deps.sessions) as s:
                ledger.reopen_for_reingest(s, batch_id, now=self.clock.now())

    def _tick(self, node: Node) -> None:
        if node.alive:
            node.daemon.tick(wait=True)

    def _fault(self, spec: dict[str, Any]) -> None:
        faults = self.emulator.faults
        route, times = spec.pop("route"), spec.pop("times")
        if "late" in spec:
            faults.add(route, fault=LateApply(spec["late"]), times=times)
        elif "special" in spec:
            fault = {
                "garbage": Garbage(),
                "html": HtmlPage(),
                "gzip": Gzipped(),
                "redirect": Redirect(),
            }[spec["special"]]
            faults.add(route, fault=fault, times=times)
        elif "truncate" in spec:
            from orchestrator.emulator.faults import TruncatedBody

            faults.add(route, fault=TruncatedBody(spec["truncate"], spec["clean"]), times=times)
        else:
            faults.add(route, times=times, **spec)

    def _bury(self) -> None:
        """A daemon that died stops: nothing of it runs any more."""
        for node in self.nodes:
            if node.alive and node.mortal.dead:
                node.alive = False
                self.figures.kills += 1

    def _restart(self, index: int) -> None:
        """A new daemon in place of a dead one (a new worker id); the dead one's leases run out
        (on the database's clock), as they would after its lease time."""
        old = self.nodes[index]
        if old.alive:
            return
        old.close()
        self.nodes[index] = self._node(index, generation=self.figures.restarts + 1)
        self.figures.restarts += 1
        support.expire_leases(self.db_url)

    # -- the end --

    def drain(self, budget: int = 900) -> None:
        """Every fault lifted, every daemon alive: run until every job has ended (or the
        budget of ticks is spent), jumping the clock to the next batch due."""
        self.emulator.faults.clear()
        self.emulator.restore_key()
        for index, node in enumerate(self.nodes):
            node.mortal.arm("", None)  # a kill armed that never fired: off
            self._bury()
            if not self.nodes[index].alive:
                self._restart(index)
        reingested: set[int] = set()
        for step in range(budget):
            self.emulator.release_stuck()
            if self._all_ended() and not self._give_ups(reingested):
                break
            self.figures.drain_ticks += 1
            for node in self.nodes:
                node.daemon.tick(wait=True)
            if step % 40 == 39:
                self.nodes[0].daemon.sweep_orphans(force=True)
            self.clock.advance(self._next_due())
        # creates carried out late have landed by now; the orphan sweep finds them
        self.clock.advance(1200)
        self.emulator.run_due()
        self.nodes[0].daemon.sweep_orphans(force=True)
        # every remote batch runs to its end, so that what each one produced can be counted
        self.clock.advance(3 * 86400)
        for entry in self.emulator.ledger.batches:
            self.emulator.handle(
                EmuRequest.build(
                    "GET", f"{self.prefix}/batches/{entry.id}",
                    headers=[("authorization", f"Bearer {API_KEY}")],
                )
            ).close()  # fmt: skip

    def _give_ups(self, done: set[int]) -> bool:
        """What the README tells the operator to do once a provider is well again: ``orchestrator
        reingest`` each batch given up after its patience (its job's error says so), so that what
        the provider produced meanwhile is collected. Whether there was one to reingest."""
        given_up = [
            row[0]
            for row in support.query(
                self.db_url,
                "SELECT id FROM orchestrator.batches WHERE state = 'failed' "
                "AND remote_batch_id IS NOT NULL AND last_error LIKE '%%orchestrator reingest%%'",
            )
            if row[0] not in done
        ]
        for batch_id in given_up:
            done.add(batch_id)
            with unit_of_work(self.nodes[0].deps.sessions) as s:
                ledger.reopen_for_reingest(s, batch_id, now=self.clock.now())
            self.figures.reingested_after_give_up += 1
        return bool(given_up)

    def _all_ended(self) -> bool:
        return (
            support.count(self.db_url, "jobs", "status NOT IN ('completed', 'failed', 'cancelled')")
            == 0
        )

    def _next_due(self) -> float:
        now = self.clock.now()
        due = support.scalar(
            self.db_url,
            "SELECT min(next_run_at) FROM orchestrator.batches WHERE state = ANY(%s)",
            list(OPEN_BATCHES),
        )
        if due is None:
            return 5.0
        return min(max((due - now).total_seconds(), 1.0), 900.0)

    def close(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
        self.emulator.close()


# -- the invariants --------------------------------------------------------------------------


def check(world: World, logs: str) -> list[str]:
    """Every promise, held against the rows, the logs and the emulator: what is broken."""
    broken: list[str] = []
    db = _Rows(world.db_url)
    for name, promise in (
        ("one final row per request, as the provider produced it", _results_match),
        ("nothing paid twice", _paid_once),
        ("attempts", _attempts),
        ("counters, tokens and cost", _accounts),
        ("no batch open without a visible reason", _open_batches),
        ("nothing secret stored or logged", _secrets),
        ("no step crashed", _no_crash),
    ):
        try:
            promise(world, db, logs, broken)
        except AssertionError as exc:
            broken.append(f"{name}: {exc}")
    return broken


class _Rows:
    """The tables, read once."""

    def __init__(self, db_url: str) -> None:
        def rows(sql: str) -> list[dict[str, Any]]:
            with psycopg.connect(db_url) as conn, conn.cursor(row_factory=dict_row) as c:
                return list(c.execute(sql).fetchall())

        self.jobs = {r["id"]: r for r in rows("SELECT * FROM orchestrator.jobs")}
        self.requests = rows("SELECT job_id, custom_id, body FROM orchestrator.requests")
        self.results = {
            (r["job_id"], r["custom_id"]): r for r in rows("SELECT * FROM orchestrator.results")
        }
        self.batches = {r["id"]: r for r in rows("SELECT * FROM orchestrator.batches")}
        self.items = rows("SELECT * FROM orchestrator.batch_items")
        self.orphans = rows("SELECT * FROM orchestrator.orphan_batches")
        self.prices = rows("SELECT * FROM orchestrator.prices")
        self.targets = rows("SELECT * FROM orchestrator.target_state")
        self.events = rows("SELECT kind, job_id, batch_id, detail FROM orchestrator.events")


def _success(line: Any) -> bool:
    response = line.get("response") if isinstance(line, dict) else None
    return (
        isinstance(response, dict) and response.get("status_code") == 200 and not line.get("error")
    )


def _not_run(line: Any) -> bool:
    error = line.get("error") if isinstance(line, dict) else None
    return (
        not line.get("response")
        and isinstance(error, dict)
        and error.get("code") == "batch_expired"
    )


def _results_match(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    support.assert_results_match_provider(world.db_url, world.emulator, dropped_ok=True)
    for job_id, spec in world.jobs:
        job = db.jobs[job_id]
        cids = {r["custom_id"] for r in db.requests if r["job_id"] == job_id}
        have = {cid for (j, cid) in db.results if j == job_id}
        batches = [b for b in db.batches.values() if b["job_id"] == job_id]
        if spec.bad:
            assert job["status"] in ("failed", "cancelled"), (job_id, job["status"])
            assert not batches and not have, f"job {job_id}: sure to fail, yet planned"
            if job["status"] == "failed":
                assert f"j{world.jobs.index((job_id, spec))}-bad" in (job["error"] or ""), (
                    f"job {job_id}: its error does not name the request: {job['error']!r}"
                )
            continue
        if job["status"] in ("completed", "failed"):
            assert have == cids, (
                f"job {job_id} {job['status']}: {len(cids - have)} requests without a result "
                f"({sorted(cids - have)[:3]}), {len(have - cids)} results of no request"
            )
        else:
            assert have <= cids, f"job {job_id}: results of no request"
    sent = {e.metadata.get("orchestrator_job") for e in world.emulator.ledger.batches if e.metadata}
    for job_id, spec in world.jobs:
        if spec.bad:
            assert str(job_id) not in sent, f"job {job_id}: sure to fail, yet sent"


def _remotes(world: World) -> dict[int, list[str]]:
    """Local batch id → the remote batches created for it (the emulator's record)."""
    out: dict[int, list[str]] = collections.defaultdict(list)
    for entry in world.emulator.ledger.batches:
        local = (entry.metadata or {}).get("orchestrator_batch")
        if local is not None:
            out[int(local)].append(entry.id)
    return out


def _paid_once(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    """A remote batch that produced at least one success was paid for. Each local batch has at
    most one, but for what the README allows and the ledger says happened: a create whose outcome
    was unknown on a target that cannot list (``ambiguous_creates``), and an orphan found by the
    sweep (``orphan_batches``). And no request's answer was bought more often than that."""
    orphans = collections.Counter(o["batch_id"] for o in db.orphans)
    extra: dict[int, int] = {}
    for local, remote_ids in _remotes(world).items():
        paid = [r for r in remote_ids if any(_success(x) for x in world.emulator.produced(r))]
        batch = db.batches.get(local)
        allowed = (batch["ambiguous_creates"] if batch else 0) + orphans[local]
        assert len(paid) <= 1 + allowed, (
            f"batch {local}: {len(paid)} remote batches paid ({paid}), "
            f"{allowed} explained (ambiguous creates, orphans found)"
        )
        extra[local] = allowed
    bought: collections.Counter[tuple[int, str]] = collections.Counter()
    for entry in world.emulator.ledger.batches:
        job = (entry.metadata or {}).get("orchestrator_job")
        answered = {x["custom_id"] for x in world.emulator.produced(entry.id) if _success(x)}
        for cid in answered:  # a line written twice in one batch is paid once
            if job is not None:
                bought[(int(job), cid)] += 1
    held: dict[tuple[int, str], set[int]] = collections.defaultdict(set)
    dropped: collections.Counter[tuple[int, str]] = collections.Counter()
    remotes = _remotes(world)
    for item in db.items:
        key = (item["job_id"], item["custom_id"])
        held[key].add(item["batch_id"])
        # The README's stated bound: a download that cleanly drops whole lines (fewer than half)
        # makes those requests be sent again, answered or not.
        if (item["error"] or {}).get("code") == "missing_result" and any(
            _success(x) and x["custom_id"] == key[1]
            for r in remotes.get(item["batch_id"], [])
            for x in world.emulator.produced(r)
        ):
            dropped[key] += 1
    world.figures.clean_drops_resent += sum(dropped.values())
    for key, n in bought.items():
        allowed = sum(extra.get(b, 0) for b in held[key]) + dropped[key]
        assert n <= 1 + allowed, f"request {key}: answered and paid {n} times ({allowed} explained)"
    world.figures.orphans += len(db.orphans)
    world.figures.ambiguous_creates += sum(b["ambiguous_creates"] for b in db.batches.values())


def _attempts(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    """Attempts stay within max_attempts; a request the provider never ran (batch_expired) goes
    on at the same attempt; any other round uses one; the stored result is at its last one."""
    lines_of: dict[int, dict[str, list[Any]]] = {}
    for local, remote_ids in _remotes(world).items():
        by_cid: dict[str, list[Any]] = collections.defaultdict(list)
        for r in remote_ids:
            for line in world.emulator.produced(r):
                by_cid[line.get("custom_id")].append(line)
        lines_of[local] = by_cid
    chains: dict[tuple[int, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for item in db.items:
        batch = db.batches[item["batch_id"]]
        if batch["state"] == "superseded":
            continue  # split: its requests went on, at the same attempt, in the parts
        chains[(item["job_id"], item["custom_id"])].append(item | {"round": batch["round"]})
    for key, chain in chains.items():
        chain.sort(key=lambda i: (i["round"], i["batch_id"]))
        _one_chain(world, db, key, chain, lines_of)
    world.figures.rounds += max((b["round"] for b in db.batches.values()), default=0)


def _one_chain(
    world: World,
    db: _Rows,
    key: tuple[int, str],
    chain: list[dict[str, Any]],
    lines_of: dict[int, dict[str, list[Any]]],
) -> None:
    rounds = [i["round"] for i in chain]
    assert len(set(rounds)) == len(rounds), f"request {key}: twice in one round {rounds}"
    max_attempts = db.jobs[key[0]]["max_attempts"]
    for before, after in itertools.pairwise(chain):
        step = 0 if before["ran"] is False else 1
        assert after["attempt"] == before["attempt"] + step, (
            f"request {key}: attempt {before['attempt']} (ran={before['ran']}) in batch "
            f"{before['batch_id']}, then {after['attempt']} in batch {after['batch_id']}"
        )
    for item in chain:
        assert 1 <= item["attempt"] <= max_attempts, (
            f"request {key}: attempt {item['attempt']} of {max_attempts}"
        )
        produced = lines_of.get(item["batch_id"], {}).get(key[1], [])
        if item["ran"] is False:
            world.figures.not_run_resent += 1
            assert produced and all(_not_run(x) for x in produced), (
                f"request {key}: counted as not run in batch {item['batch_id']}, but the "
                f"provider produced {produced[:2]}"
            )
        elif item["ran"] and produced:
            assert not all(_not_run(x) for x in produced), (
                f"request {key}: the provider never ran it in batch {item['batch_id']} "
                "(batch_expired), yet it used an attempt"
            )
    result = db.results.get(key)
    last = next((i for i in chain if result and i["batch_id"] == result["batch_id"]), None)
    if result is not None and last is not None:
        assert result["attempt"] == last["attempt"], (
            f"request {key}: result at attempt {result['attempt']}, its batch had it at "
            f"{last['attempt']}"
        )


def _accounts(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    """Job and batch counters, tokens and cost, recomputed by hand from the result rows and the
    prices (or the provider's own figure where it gives one)."""
    models = {(r["job_id"], r["custom_id"]): (r["body"] or {}).get("model") for r in db.requests}
    by_job: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    by_batch: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in db.results.values():
        by_job[r["job_id"]].append(r)
        by_batch[r["batch_id"]].append(r)
    for job_id, job in db.jobs.items():
        rs = by_job[job_id]
        want = (
            sum(r["succeeded"] for r in rs),
            sum(not r["succeeded"] for r in rs),
            sum(r["prompt_tokens"] for r in rs),
            sum(r["completion_tokens"] for r in rs),
            sum(r["total_tokens"] for r in rs),
        )
        got = (
            job["succeeded_count"], job["failed_count"], job["prompt_tokens"],
            job["completion_tokens"], job["total_tokens"],
        )  # fmt: skip
        assert got == want, f"job {job_id}: counters {got}, results say {want}"
        costs = [b["cost"] for b in db.batches.values() if b["job_id"] == job_id and b["cost"]]
        want_cost = sum(costs, Decimal(0)) if costs else None
        assert job["cost"] == want_cost or (not costs and job["cost"] in (None, 0)), (
            f"job {job_id}: cost {job['cost']}, its batches' {want_cost}"
        )
        world.figures.succeeded += want[0]
        world.figures.failed += want[1]
        world.figures.jobs[job["status"]] += 1
    for batch in db.batches.values():
        if batch["state"] != "done":
            continue
        rs = by_batch[batch["id"]]
        got = (batch["succeeded_count"], batch["failed_count"], batch["total_tokens"])
        want = (
            sum(r["succeeded"] for r in rs),
            sum(not r["succeeded"] for r in rs),
            sum(r["total_tokens"] for r in rs),
        )
        assert got == want, f"batch {batch['id']}: counters {got}, its results say {want}"
        reported = provider_cost(batch["remote"] or {})
        computed = _priced(db, batch, rs, models)
        want_cost = as_stored(reported if reported is not None else computed)
        source = (
            "provider" if reported is not None else "prices" if computed is not None else "none"
        )
        assert (batch["cost"], batch["cost_source"]) == (want_cost, source), (
            f"batch {batch['id']}: cost {batch['cost']} ({batch['cost_source']}), by hand "
            f"{want_cost} ({source})"
        )


def _priced(
    db: _Rows, batch: dict[str, Any], results: list[dict[str, Any]], models: dict[Any, Any]
) -> Decimal | None:
    """A batch's cost at the price in force when it finished, model by model, as the README
    says: (prompt - cached) x input + cached x cached input + completion x output, less the batch
    discount, per million tokens; none unless every model with tokens has a price."""
    sums: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0])
    for r in results:
        model = r["model"] or models.get((r["job_id"], r["custom_id"])) or ""
        s = sums[model]
        s[0] += r["prompt_tokens"]
        s[1] += r["cached_tokens"]
        s[2] += r["completion_tokens"]
        s[3] += r["total_tokens"]
    total = Decimal(0)
    priced = 0
    for model, (prompt, cached, completion, tokens) in sums.items():
        rows = [
            p for p in db.prices
            if p["model"] == model and p["target"] in (batch["target"], "*")
            and p["valid_from"] <= batch["finished_at"]
        ]  # fmt: skip
        if not rows:
            if tokens:
                return None
            continue
        p = max(rows, key=lambda p: (p["target"] == batch["target"], p["valid_from"]))
        cached_price = p["cached_input_per_mtok"]
        if cached_price is None:
            cached_price = p["input_per_mtok"]
        cost = (
            (
                (prompt - cached) * p["input_per_mtok"]
                + cached * cached_price
                + completion * p["output_per_mtok"]
            )
            * (1 - p["batch_discount"])
            / Decimal(1_000_000)
        )
        total += cost
        priced += 1
    return total if priced else None


def _open_batches(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    paused = {t["target"] for t in db.targets if t.get("paused")}
    for batch in db.batches.values():
        if batch["state"] not in OPEN_BATCHES:
            continue
        reason = (
            batch["waiting_reason"]
            or batch["last_error"]
            or ("target paused" if batch["target"] in paused else None)
        )
        assert reason, f"batch {batch['id']} left {batch['state']} with no reason shown"
        world.figures.open_with_reason += 1
    for job_id, _ in world.jobs:
        status = db.jobs[job_id]["status"]
        if status not in TERMINAL_JOBS:
            open_ = [
                b
                for b in db.batches.values()
                if b["job_id"] == job_id and b["state"] in OPEN_BATCHES
            ]
            assert open_, f"job {job_id} left {status} with no open batch to say why"


def _secrets(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    """The key, whole or its second half, in no table and no log line."""
    pieces = (API_KEY, API_KEY[len(API_KEY) // 2 :])
    with psycopg.connect(world.db_url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'orchestrator' AND table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        for table in tables:
            text = "\n".join(
                r[0] for r in conn.execute(f"SELECT t::text FROM orchestrator.{table} t").fetchall()
            )
            for piece in pieces:
                assert piece not in text, f"the key is in table {table}"
    for piece in pieces:
        for line in logs.splitlines():
            assert piece not in line, f"the key is in a log line: {line[:300]}"


def _no_crash(world: World, db: _Rows, logs: str, broken: list[str]) -> None:
    for line in logs.splitlines():
        if '"step_crashed"' in line or '"job_plan_crashed"' in line:
            raise AssertionError(f"a step crashed (a bug): {line[:600]}")
    for batch in db.batches.values():
        assert "internal error" not in (batch["last_error"] or ""), (
            f"batch {batch['id']}: {batch['last_error']}"
        )


# -- one run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """The daemon's logging as it is configured in production (JSON, redaction), into a buffer;
    the process's logging as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    configure_logging(level="debug", fmt="json", secrets=[API_KEY], stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


@contextlib.contextmanager
def fresh_database(pg_server: str, template: str) -> Iterator[str]:
    name = f"orch_m_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield with_database(pg_server, name)
    finally:
        if os.environ.get("MODEL_KEEP"):  # to look at a run's rows: MODEL_KEEP=1
            print(f"kept the run's database: {with_database(pg_server, name)}")
        else:
            with psycopg.connect(pg_server, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclasses.dataclass
class Outcome:
    scenario: Scenario
    broken: list[str]
    figures: Figures

    def explain(self) -> str:
        replay = (
            f"replay: MODEL_SEED={self.scenario.seed} MODEL_EXAMPLES=1 .venv/bin/python -m pytest "
            f"tests/model -p no:randomly  (or: .venv/bin/python scripts/soak.py --seed "
            f"{self.scenario.seed} --examples 1)"
        )
        return "\n".join(
            [f"model run of seed {self.scenario.seed} broke:", *self.broken, replay,
             self.scenario.describe()]
        )  # fmt: skip


def run(seed: int, pg_server: str, template: str) -> Outcome:
    """One run of the scenario of ``seed``: its acts, the drain, the invariants."""
    scenario = generate(seed)
    started = time.monotonic()
    with fresh_database(pg_server, template) as db_url, captured_logs() as logs:
        world = World(scenario, db_url)
        try:
            world.run()
            world.drain()
            broken = check(world, logs.getvalue())
        finally:
            world.close()
            if os.environ.get("MODEL_KEEP"):
                kept = f"/tmp/model-{seed}.log"
                with open(kept, "w") as fh:
                    fh.write(logs.getvalue())
                print(f"kept the run's log: {kept}")
        world.figures.remote_batches = len(world.emulator.ledger.batches)
        world.figures.faulted_calls = sum(1 for c in world.emulator.ledger.calls if c.faulted)
        world.figures.expired = support.count(db_url, "batches", "remote_status = 'expired'")
        world.figures.token_limited = support.count(
            db_url, "events", "kind = 'batch_token_limited'"
        )
        world.figures.splits = support.count(db_url, "events", "kind = 'batch_split'")
        world.figures.reingested = support.count(
            db_url, "events", "kind = 'batch_reingest_requested'"
        )
    world.figures.seconds = time.monotonic() - started
    return Outcome(scenario, broken, world.figures)


def seeds(count: int, base: int | None = None) -> list[int]:
    """``count`` seeds from ``base`` (``MODEL_SEED`` in the environment, else a fixed one: the
    same scenarios in every ``make test``)."""
    start = base if base is not None else int(os.environ.get("MODEL_SEED", "1000"))
    return list(range(start, start + count))
