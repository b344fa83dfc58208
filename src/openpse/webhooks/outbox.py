"""The transactional outbox: pending deliveries written with their event, claimed with a lease.

Life of a ``webhook_deliveries`` row::

    pending ──claim (lease)──▶ sending ──2xx──────────────▶ succeeded
       ▲                         │ ├──failure, tries left──▶ pending (next_attempt_at = +delay)
       └──lease expired──────────┘ ├──failure, none left───▶ failed
                                   └──410 Gone─────────────▶ failed (endpoint disabled)
    pending ──endpoint disabled or deleted──▶ canceled

"sending" is not a stored status: a claim keeps the row ``pending`` and moves its
``next_attempt_at`` (and ``locked_until``) to the end of the lease, under a fresh ``claimed_by``
token. A worker that dies after sending and before recording simply lets the lease run out; the
row is then due again and re-sent with the same ``webhook-id`` (at-least-once). Recording
applies only while the token still matches, so a late worker never overwrites a newer claim.

Claiming is one statement on both backends: ``SELECT ... FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so any number of workers take disjoint rows; on SQLite the same statement runs
under the single ``BEGIN IMMEDIATE`` writer, which serialises claims across processes.

Each claim counts as an attempt (``attempt_count`` grows at claim time), so even a delivery
that keeps killing its worker is tried at most ``MAX_ATTEMPTS`` times.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from openpse.domain.ids import PREFIXES, new_id
from openpse.storage.db import TX_SCOPED_INFO, Tx
from openpse.storage.direct import GatedStatement, Writes, direct
from openpse.storage.tables import events, webhook_attempts, webhook_deliveries, webhook_endpoints
from openpse.webhooks.schedule import (
    MAX_ATTEMPTS,
    UniformRandom,
    endpoint_should_be_disabled,
    next_delay_s,
)
from openpse.webhooks.sender import RESPONSE_EXCERPT_CAP_BYTES, AttemptResult

__all__ = [
    "ALL_EVENTS",
    "ERROR_CAP_CHARS",
    "ClaimedDelivery",
    "EndpointQueue",
    "Outcome",
    "QueueSnapshot",
    "RecordSummary",
    "cancel_pending",
    "claim_due",
    "enqueue",
    "enqueue_for_event",
    "queue_stats",
    "record_outcomes",
    "subscribes",
    "write_event",
    "write_events",
]

ALL_EVENTS = "*"
ERROR_CAP_CHARS = 500
MAX_ENDPOINTS_PER_EVENT = 100
CANDIDATES_PER_CLAIM = 2

D = webhook_deliveries
E = webhook_endpoints


def subscribes(enabled_events: Iterable[str], event_type: str) -> bool:
    return any(t == ALL_EVENTS or t == event_type for t in enabled_events)


# --- writing -------------------------------------------------------------------------------------


async def enqueue(
    tx: Tx, *, event_id: str, endpoint_ids: Sequence[str], merchant_id: str, livemode: bool,
    now_s: int,
) -> list[dict[str, Any]]:
    """One pending delivery of ``event_id`` per endpoint, due now; returns the new rows."""
    rows = [
        {
            "id": new_id(PREFIXES["delivery"]),
            "event_id": event_id,
            "endpoint_id": endpoint_id,
            "merchant_id": merchant_id,
            "livemode": livemode,
            "status": "pending",
            "attempt_count": 0,
            "next_attempt_at": now_s,
            "locked_until": None,
            "claimed_by": None,
            "last_status_code": None,
            "last_error": None,
            "created": now_s,
            "updated": now_s,
            "version": 1,
        }
        for endpoint_id in endpoint_ids
    ]
    if rows:
        await tx.execute(insert(D), rows)
    return rows


async def write_event(tx: Tx, row: dict[str, Any], *, now_s: int, writes: Writes = ()
                      ) -> None:
    """:func:`write_events` of one event."""
    await write_events(tx, (row,), now_s=now_s, writes=writes)


async def write_events(tx: Tx, rows: Sequence[dict[str, Any]], *, now_s: int,
                       writes: Writes = (), guards: Writes = (), last: bool = False,
                       tails: Sequence[GatedStatement] = ()) -> list[int]:
    """Insert ``events`` rows (their columns in ``rows``: one merchant's, one mode) and a
    pending delivery of each per enabled endpoint subscribed to its type, in the caller's
    transaction, in order.

    PostgreSQL: one statement (the events' INSERT in a WITH, the deliveries made by
    ``INSERT ... SELECT`` from the endpoints, at most ``MAX_ENDPOINTS_PER_EVENT`` an event),
    one round trip whether or not the merchant has endpoints. SQLite (no round trips): each
    event's INSERT, then :func:`enqueue_for_event`. ``writes``: made with the events, in the
    same statement (``Direct.execute``); ``guards``: updates made with them whose row counts
    are returned (``Direct.execute_guarded``, as are ``last`` and ``tails``, which only
    PostgreSQL takes). A delivery id there is the
    milliseconds of ``new_id`` and 64 random bits from the server.
    """
    merchant_id, livemode = rows[0]["merchant_id"], rows[0]["livemode"]
    if any((row["merchant_id"], row["livemode"]) != (merchant_id, livemode) for row in rows):
        raise ValueError("events written together must be one merchant's, in one mode")
    d = direct(tx)
    if d.is_sqlite:
        counts = [await d.write(g) for g in guards]
        await d.write_all(writes)
        for row in rows:
            await d.execute(_INSERT_EVENT, row)
            await enqueue_for_event(tx, row["type"], row["id"], merchant_id=row["merchant_id"],
                                    livemode=bool(row["livemode"]), now_s=now_s)
        return counts
    params: dict[str, Any] = {"merchant_id": merchant_id, "livemode": livemode, "now": now_s,
                              "n": MAX_ENDPOINTS_PER_EVENT,
                              "id_head": PREFIXES["delivery"] + new_id("")[:10]}
    for i, row in enumerate(rows):
        params[f"e{i}_id"], params[f"e{i}_type"] = row["id"], row["type"]
    return await d.execute_guarded(_deliveries_sql(len(rows)), params, guards=guards,
                                   writes=[*writes, *((events, row) for row in rows)],
                                   last=last, tails=tails)


_INSERT_EVENT = ("INSERT INTO events (id, merchant_id, livemode, type, object_id, payload, created)"
                 " VALUES (:id, :merchant_id, :livemode, :type, :object_id, :payload, :created)")


@functools.cache
def _deliveries_sql(n: int) -> str:
    """The deliveries of ``n`` events (PostgreSQL); their rows ride in its WITH."""
    events_list = ", ".join(f"(:e{i}_id::text, :e{i}_type::text, {i})" for i in range(n))
    return (
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, merchant_id, livemode, "
        "status, attempt_count, next_attempt_at, created, updated, version) "
        "SELECT :id_head || substr(md5(random()::text || e.id), 1, 16), v.id, e.id, "
        ":merchant_id, :livemode, 'pending', 0, :now, :now, :now, 1 "
        f"FROM (VALUES {events_list}) AS v(id, etype, ord) CROSS JOIN LATERAL ("
        "SELECT e.id FROM webhook_endpoints e "
        "WHERE e.merchant_id = :merchant_id AND e.livemode = :livemode "
        "AND e.status = 'enabled' "
        f"AND e.enabled_events::jsonb ?| ARRAY['{ALL_EVENTS}', v.etype] ORDER BY e.id LIMIT :n"
        ") e ORDER BY v.ord, e.id")


async def enqueue_for_event(tx: Tx, event_type: str, event_id: str, *, merchant_id: str,
                            livemode: bool, now_s: int) -> int:
    """A delivery per enabled endpoint subscribed to the event (:func:`write_event` on SQLite;
    the endpoints are read, then matched here).

    Runs inside the transaction that records the event, so the event and its deliveries commit
    or roll back together. The merchant's endpoints are read once per transaction (a payment's
    events share them; endpoints change in transactions of their own).
    """
    scoped: dict[str, Any] = tx.info.setdefault(TX_SCOPED_INFO, {})
    cache: dict[tuple[str, bool], list[dict[str, Any]]] = scoped.setdefault("endpoints", {})
    candidates = cache.get((merchant_id, livemode))
    if candidates is None:
        candidates = cache[(merchant_id, livemode)] = await direct(tx).fetchall(
            _ENDPOINTS, {"m": merchant_id, "l": livemode, "n": MAX_ENDPOINTS_PER_EVENT}, table=E)
    targets = [r["id"] for r in candidates if subscribes(r["enabled_events"], event_type)]
    await enqueue(tx, event_id=event_id, endpoint_ids=targets, merchant_id=merchant_id,
                  livemode=livemode, now_s=now_s)
    return len(targets)


_ENDPOINTS = ("SELECT id, enabled_events FROM webhook_endpoints WHERE merchant_id = :m AND "
              "livemode = :l AND status = 'enabled' ORDER BY id LIMIT :n")


async def cancel_pending(tx: Tx, endpoint_id: str, *, reason: str, now_s: int) -> int:
    """Cancel the endpoint's pending deliveries (it was disabled or deleted)."""
    res = await tx.execute(
        update(D).where(D.c.endpoint_id == endpoint_id, D.c.status == "pending")
        .values(status="canceled", last_error=reason[:ERROR_CAP_CHARS], locked_until=None,
                claimed_by=None, updated=now_s, version=D.c.version + 1))
    return int(res.rowcount or 0)


# --- claiming ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this worker holds the lease on, with all it needs to send it."""

    id: str
    event_id: str
    endpoint_id: str
    merchant_id: str
    livemode: bool
    attempt_number: int
    """1 for the first try; counts claims, so a try lost with its worker counts too."""
    url: str
    secrets_enc: str
    payload: str
    created: int
    token: str


async def claim_due(
    tx: Tx, *, now_s: int, limit: int, lease_s: int, token: str,
    max_per_endpoint: int | None = None, in_flight: Mapping[str, int] | None = None,
) -> list[ClaimedDelivery]:
    """Take up to ``limit`` due deliveries for ``lease_s`` seconds under ``token``.

    With ``max_per_endpoint``, no endpoint gets more than that many attempts at once from
    this worker, counting the ``in_flight`` ones (endpoint id -> attempts still running):
    a slow or flooded endpoint then cannot take every slot, and a merchant's receiver is not
    hit by more parallel requests than the sender keeps connections for.
    """
    busy = dict(in_flight or {})
    pick = select(D.c.id, D.c.endpoint_id).where(D.c.status == "pending",
                                                 D.c.next_attempt_at <= now_s)
    if max_per_endpoint is not None:
        saturated = sorted(e for e, n in busy.items() if n >= max_per_endpoint)
        if saturated:
            pick = pick.where(D.c.endpoint_id.not_in(saturated))
    # Candidates beyond ``limit``: some may be skipped for their endpoint's cap.
    pick = pick.order_by(D.c.next_attempt_at, D.c.id).limit(limit * CANDIDATES_PER_CLAIM)
    if tx.dialect.name != "sqlite":  # SQLite: the single writer already serialises claims
        pick = pick.with_for_update(skip_locked=True)
    ids: list[str] = []
    for row in (await tx.execute(pick)).all():
        if len(ids) >= limit:
            break
        if max_per_endpoint is not None:
            if busy.get(row.endpoint_id, 0) >= max_per_endpoint:
                continue
            busy[row.endpoint_id] = busy.get(row.endpoint_id, 0) + 1
        ids.append(row.id)
    if not ids:
        return []
    until = now_s + lease_s
    await tx.execute(
        update(D).where(D.c.id.in_(ids))
        .values(attempt_count=D.c.attempt_count + 1, next_attempt_at=until, locked_until=until,
                claimed_by=token, updated=now_s, version=D.c.version + 1))
    rows = (await tx.execute(
        select(D.c.id, D.c.event_id, D.c.endpoint_id, D.c.merchant_id, D.c.livemode,
               D.c.attempt_count, D.c.created, E.c.url, E.c.status.label("endpoint_status"),
               E.c.secrets_enc, events.c.payload)
        .select_from(D.outerjoin(E, E.c.id == D.c.endpoint_id)
                     .outerjoin(events, events.c.id == D.c.event_id))
        .where(D.c.id.in_(ids)).order_by(D.c.next_attempt_at, D.c.id))).all()
    claimed: list[ClaimedDelivery] = []
    dead: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r.endpoint_status != "enabled" or r.payload is None:
            dead["endpoint_disabled" if r.payload is not None else "event_missing"].append(r.id)
        elif r.attempt_count > MAX_ATTEMPTS:  # the last try died with its worker
            dead["attempts_exhausted"].append(r.id)
        else:
            claimed.append(ClaimedDelivery(
                id=r.id, event_id=r.event_id, endpoint_id=r.endpoint_id,
                merchant_id=r.merchant_id, livemode=bool(r.livemode),
                attempt_number=r.attempt_count, url=r.url, secrets_enc=r.secrets_enc,
                payload=r.payload, created=r.created, token=token))
    for reason, dead_ids in dead.items():
        await tx.execute(
            update(D).where(D.c.id.in_(dead_ids))
            .values(status="failed" if reason == "attempts_exhausted" else "canceled",
                    last_error=reason, locked_until=None, claimed_by=None, updated=now_s,
                    version=D.c.version + 1))
    return claimed


# --- recording -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished attempt: what was sent, when (``sent_at_s``: the job's clock), what came."""

    delivery: ClaimedDelivery
    result: AttemptResult
    sent_at_s: int

    @property
    def finished_at_s(self) -> int:
        return self.sent_at_s + self.result.latency_ms // 1000


@dataclass
class RecordSummary:
    """What recording decided: outcome counts (for metrics) and endpoints to disable."""

    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    disable: dict[str, str] = field(default_factory=dict)
    """endpoint id -> reason (``endpoint_gone`` or ``failing``)."""


def _excerpt(text: str) -> str:
    data = text.encode("utf-8", errors="replace")[:RESPONSE_EXCERPT_CAP_BYTES]
    return data.decode("utf-8", errors="ignore")


def _next_state(o: Outcome, rng: UniformRandom) -> tuple[str, int, str]:
    """(status, next_attempt_at, outcome label) after attempt ``o``."""
    r = o.result
    if r.ok:
        return "succeeded", o.finished_at_s, "succeeded"
    if r.gone:
        return "failed", o.finished_at_s, "endpoint_gone"
    delay_s = next_delay_s(o.delivery.attempt_number, retry_after_s=r.retry_after_s, rng=rng)
    if delay_s is None:
        return "failed", o.finished_at_s, "failed"
    return "pending", o.finished_at_s + delay_s, "retry_scheduled"


async def record_outcomes(
    tx: Tx, outcomes: Sequence[Outcome], *, rng: UniformRandom
) -> RecordSummary:
    """Store each attempt and move each delivery on; decide which endpoints to disable."""
    summary = RecordSummary()
    if not outcomes:
        return summary
    await tx.execute(insert(webhook_attempts), [
        {"delivery_id": o.delivery.id, "endpoint_id": o.delivery.endpoint_id,
         "attempted_at": o.sent_at_s, "status_code": o.result.status_code,
         "latency_ms": o.result.latency_ms,
         "error": None if o.result.error is None else o.result.error[:ERROR_CAP_CHARS],
         "response_excerpt": _excerpt(o.result.response_excerpt)}
        for o in outcomes])
    updates = []
    failing_at: dict[str, int] = {}
    healthy: set[str] = set()
    for o in outcomes:
        status, next_at, label = _next_state(o, rng)
        summary.outcomes[label] += 1
        updates.append({
            "b_id": o.delivery.id, "b_token": o.delivery.token, "b_status": status,
            "b_next": next_at, "b_code": o.result.status_code,
            "b_error": None if o.result.error is None else o.result.error[:ERROR_CAP_CHARS],
            "b_now": o.finished_at_s})
        endpoint_id = o.delivery.endpoint_id
        if o.result.ok:
            healthy.add(endpoint_id)
        else:
            failing_at[endpoint_id] = min(failing_at.get(endpoint_id, o.finished_at_s),
                                          o.finished_at_s)
            if o.result.gone:
                summary.disable[endpoint_id] = "endpoint_gone"
    await tx.execute(
        update(D).where(D.c.id == bindparam("b_id"), D.c.claimed_by == bindparam("b_token"))
        .values(status=bindparam("b_status"), next_attempt_at=bindparam("b_next"),
                last_status_code=bindparam("b_code"), last_error=bindparam("b_error"),
                locked_until=None, claimed_by=None, updated=bindparam("b_now"),
                version=D.c.version + 1),
        updates)
    await _track_endpoint_health(tx, failing_at, healthy, summary)
    return summary


async def _track_endpoint_health(
    tx: Tx, failing_at: dict[str, int], healthy: set[str], summary: RecordSummary
) -> None:
    """``failing_since``: set by the first failure after a success, cleared by a success."""
    for endpoint_id in sorted(failing_at):  # a fixed order: no lock-order deadlock between workers
        await tx.execute(
            update(E).where(E.c.id == endpoint_id, E.c.failing_since.is_(None))
            .values(failing_since=failing_at[endpoint_id]))
    if healthy:
        await tx.execute(
            update(E).where(E.c.id.in_(sorted(healthy)), E.c.failing_since.is_not(None))
            .values(failing_since=None))
    still_failing = sorted(set(failing_at) - healthy - set(summary.disable))
    if not still_failing:
        return
    rows = (await tx.execute(
        select(E.c.id, E.c.failing_since).where(E.c.id.in_(still_failing),
                                                E.c.status == "enabled"))).all()
    for r in rows:
        if endpoint_should_be_disabled(r.failing_since, now_s=failing_at[r.id]):
            summary.disable[r.id] = "failing"


# --- observing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointQueue:
    endpoint_id: str
    depth: int
    """Pending deliveries, due or scheduled."""
    oldest_due_at: int | None
    """``next_attempt_at`` of the longest-waiting due delivery, if any is due."""


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    endpoints: list[EndpointQueue]
    """The ``limit`` endpoints with the deepest queues."""
    total_depth: int
    oldest_due_at: int | None


async def queue_stats(conn: Tx, *, now_s: int, limit: int) -> QueueSnapshot:
    """Pending deliveries per endpoint (the ``limit`` deepest) and over all, oldest due."""
    depth = func.count()
    pending = (await conn.execute(
        select(D.c.endpoint_id, depth.label("depth")).where(D.c.status == "pending")
        .group_by(D.c.endpoint_id).order_by(depth.desc()).limit(limit))).all()
    due = {r.endpoint_id: r.due_at for r in (await conn.execute(
        select(D.c.endpoint_id, func.min(D.c.next_attempt_at).label("due_at"))
        .where(D.c.status == "pending", D.c.next_attempt_at <= now_s)
        .group_by(D.c.endpoint_id))).all()}
    total = (await conn.execute(
        select(func.count()).select_from(D).where(D.c.status == "pending"))).scalar_one()
    return QueueSnapshot(
        endpoints=[EndpointQueue(r.endpoint_id, int(r.depth), due.get(r.endpoint_id))
                   for r in pending],
        total_depth=int(total),
        oldest_due_at=min(due.values(), default=None),
    )
