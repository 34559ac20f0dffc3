"""The orphan sweep: remote batches that carry one of our create keys but that no batch adopted.

How one comes to exist: a create whose answer was lost (a timeout, a 5xx from a gateway) may be
carried out by the provider later than the client could know. Reconcile waits past the client's
timeout plus the target's ``create_settle_seconds`` before it lists the batches and, finding none
with its key, creates again; a create that lands even later than that leaves two remote batches
for one batch of ours, and both would be paid. So, on every target that can list batches, at
start-up and every ``orphan_sweep_seconds``, one daemon lists the batches created in the last
``ORPHAN_LOOKBACK`` and cancels each one that

* carries an ``orchestrator_key`` recorded in ``create_keys`` (we sent it: another installation
  sharing the account is never touched),
* is not the remote batch of any batch of ours, and
* is not a create still in flight (its batch in ``creating`` with that very key: reconcile will
  adopt it).

Each orphan is recorded once (``orphan_batches``, an event, a warning), its cancel is counted on
the batch that sent the key (``batches.orphans_cancelled``) and in
``orchestrator_orphans_cancelled_total``. An orphan that completed before it was found cannot be
cancelled: it is recorded and reported, and its results are not collected (its twin's are).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import structlog

from orchestrator.api.errors import ApiError
from orchestrator.api.schemas import BatchObject
from orchestrator.clock import from_unix
from orchestrator.config import TargetConfig
from orchestrator.db import ledger, queries
from orchestrator.db.session import unit_of_work
from orchestrator.deps import Deps
from orchestrator.domain.decide import ErrorKind
from orchestrator.domain.states import BatchState, RemoteStatus, remote_terminal

log = structlog.get_logger(__name__)

# Far enough back to see every batch that can still be running (the completion window is 24 h).
ORPHAN_LOOKBACK = dt.timedelta(hours=48)


@dataclasses.dataclass
class SweepReport:
    target: str
    listed: int = 0
    orphans: int = 0
    cancelled: int = 0
    failed: int = 0


def sweep_orphans(deps: Deps, *, force: bool = False) -> list[SweepReport]:
    """Sweep every target that can list batches and is due (``force``: due now)."""
    reports = []
    now = deps.clock.now()
    every = deps.settings.daemon.orphan_sweep_seconds
    for target in deps.settings.targets.values():
        if not target.can_list or target.api_key is None:
            continue
        with unit_of_work(deps.sessions) as s:
            if not ledger.begin_orphan_sweep(s, target.name, now=now, every=every, force=force):
                continue
        try:
            reports.append(_sweep(deps, target, now))
        except ApiError as exc:  # the next round tries again
            log.warning("orphan_sweep_failed", target=target.name, error=exc.message)
    return reports


def _sweep(deps: Deps, target: TargetConfig, now: dt.datetime) -> SweepReport:
    report = SweepReport(target.name)
    client = deps.clients(target.name)
    ours: list[tuple[BatchObject, uuid.UUID]] = []
    for remote in client.iter_batches():
        created = from_unix(remote.created_at)
        if created is not None and created < now - ORPHAN_LOOKBACK:
            break  # newest first: the rest is older
        report.listed += 1
        key = _key(remote)
        if key is not None and remote.status not in _NOT_ORPHANS:
            ours.append((remote, key))
    if not ours:
        return report
    with unit_of_work(deps.sessions) as s:
        owners = queries.create_key_owners(s, [key for _, key in ours])
        adopted = queries.adopted_remote_ids(s, [remote.id for remote, _ in ours])
    for remote, key in ours:
        owner = owners.get(key)
        if owner is None or remote.id in adopted:
            continue  # not ours, or the one we adopted
        if owner.state == BatchState.CREATING and owner.idempotency_key == key:
            continue  # its create is in flight: reconcile adopts it
        report.orphans += 1
        _handle(deps, target, remote, owner, report)
    if report.orphans:
        log.warning("orphan_sweep_done", **dataclasses.asdict(report))
    return report


# Remote batches that failed, expired or were cancelled cost nothing more: not orphans to chase.
_NOT_ORPHANS = frozenset({RemoteStatus.FAILED, RemoteStatus.EXPIRED, RemoteStatus.CANCELLED})


def _key(remote: BatchObject) -> uuid.UUID | None:
    raw = remote.metadata.get("orchestrator_key")
    if not isinstance(raw, str):
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def _handle(
    deps: Deps,
    target: TargetConfig,
    remote: BatchObject,
    owner: queries.OrphanOwner,
    report: SweepReport,
) -> None:
    with unit_of_work(deps.sessions) as s:
        to_cancel = ledger.orphan_found(
            s,
            remote_batch_id=remote.id,
            target=target.name,
            batch_id=owner.batch_id,
            job_id=owner.job_id,
            status=remote.status,
        )
    if not to_cancel or remote_terminal(remote.status) or remote.status == "cancelling":
        return  # already cancelled, or completed before we found it (recorded: nothing to stop)
    try:
        deps.clients(target.name).cancel_batch(remote.id)
    except ApiError as exc:
        report.failed += 1
        with unit_of_work(deps.sessions) as s:
            ledger.orphan_cancel_failed(s, remote_batch_id=remote.id, error=exc.message)
        if exc.kind in (ErrorKind.RATE_LIMITED, ErrorKind.ACCOUNT):
            raise  # stop this round; the next one tries again
        return
    with unit_of_work(deps.sessions) as s:
        counted = ledger.orphan_cancelled(
            s,
            remote_batch_id=remote.id,
            target=target.name,
            batch_id=owner.batch_id,
            job_id=owner.job_id,
        )
    if counted:
        report.cancelled += 1
        deps.metrics.orphans_cancelled.labels(target.name).inc()
