"""Load N succeeded card payments fast into an already-migrated OpenPSE database.

    python bench/bulk_load.py --database-url sqlite:////tmp/bench/openpse.db --payments 1000000
    python bench/bulk_load.py --database-url postgresql://postgres@127.0.0.1:5432/openpse_bench \
        --payments 1000000 [--merchant-id mch_...] [--currency JPY]

Each payment is written as a real create+confirm with the sandbox card 4242... writes it: the
vaulted card (``payment_methods``, number encrypted under the master key bound to its row),
the ``payments`` row (status ``succeeded``, version 3), its three events (``payment.created``,
``payment.processing``, ``payment.succeeded``, payloads built by the same ``payment_view`` and
``changed_fields`` the services use), the acquirer attempt and the sandbox acquirer's own
record of it, and one ``capture`` journal with its postings (``domain.ledger.capture`` and
``fee_for`` with the merchant's pricing). Ledger account balances move by exactly the sum of the
postings, in the same transaction, so ``openpse ledger verify`` passes after every chunk.
No idempotency keys, nonces or request-log rows (those belong to the HTTP layer), and no
webhook outbox rows: a merchant with enabled webhook endpoints in the mode is refused.

Ids follow ``openpse.domain.ids`` (prefix + 26 Crockford base32 characters: 48 bits of
milliseconds, 80 bits that are random here except for a per-object sequence in the top byte),
spread over the ``--span-days`` before now so ``created`` filters see a realistic range and
every object of one payment sorts in creation order: newest-first lists are creation order.

Fast paths. PostgreSQL: ``COPY`` (asyncpg ``copy_records_to_table``), ``synchronous_commit``
off for the session and, when the user may (superuser), ``session_replication_role = replica``
as ``pg_restore --disable-triggers`` does (no per-row foreign-key trigger; the rows are made
consistent here), then ``VACUUM (ANALYZE)`` of the loaded tables so the first reader does not
pay for hint bits and the visibility map. SQLite: ``executemany`` in large transactions on the
loader's own connection with ``synchronous=OFF``, a 1 GiB page cache and, when no other
connection has the file open, an in-memory rollback journal instead of WAL for the load (each
page written once; WAL is restored at the end; ``--sqlite-wal`` keeps WAL throughout, which is
safe if the loader is killed mid-chunk). Rows for the next chunk are generated on a helper
thread while the database writes the current one; each chunk (payments, events, journals,
postings and the balance update) is one transaction. The master key is the one ``openpse``
itself would use (``OPENPSE_MASTER_KEY``, else the data directory's key file).

Measured on the project's 2-core machine (1,000,000 payments, 11,000,000 rows, ~6.8 GB):
SQLite ~142 s, PostgreSQL 15 ~150 s (129 s COPY + 21 s VACUUM ANALYZE).

Prints one JSON line: ``{"payments", "seconds", "rows_per_s", "database", ...}`` where
``rows_per_s`` counts every row written (11 per payment with a fee).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

import orjson  # noqa: E402
from sqlalchemy import JSON  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from openpse.config import Settings, to_async_url  # noqa: E402
from openpse.connectors.base import AuthorizeRequest, CardData  # noqa: E402
from openpse.connectors.simulator.connector import _to_row as simulator_row  # noqa: E402
from openpse.connectors.simulator.transformers import authorize_outcome  # noqa: E402
from openpse.crypto import SecretBox  # noqa: E402
from openpse.domain import cards as card_rules  # noqa: E402
from openpse.domain import ledger  # noqa: E402
from openpse.domain.payments import Status  # noqa: E402
from openpse.services.events import API_VERSION, changed_fields  # noqa: E402
from openpse.services.views import payment_view  # noqa: E402
from openpse.storage import tables as t  # noqa: E402
from openpse.storage.db import asyncpg_dsn  # noqa: E402
from openpse.storage.direct import json_param  # noqa: E402
from openpse.storage.rows import rfc3339  # noqa: E402

CARD_NUMBER = "4242424242424242"
EXP_MONTH, EXP_YEAR = 12, 2034
CONNECTOR = "simulator"
DEFAULT_CHUNK = 20_000
MIN_STEP_MS = 8  # ms between two payments: one per object of a payment, so ids never collide

_CROCKFORD_STR = "0123456789abcdefghjkmnpqrstvwxyz"

# The order objects of one payment are created in by a real create+confirm (the sequence number
# in the id's first random byte keeps them in that order within one millisecond).
SEQ_PAY, SEQ_PM, SEQ_EVT_CREATED, SEQ_ATT, SEQ_EVT_PROCESSING, SEQ_JNL, SEQ_EVT_SUCCEEDED = range(7)


class LoadError(RuntimeError):
    """The load cannot run as asked (database not migrated, unknown merchant, ...)."""


_PAIRS = [_CROCKFORD_STR[i >> 5] + _CROCKFORD_STR[i & 31] for i in range(1024)]


def encode_id(prefix: str, value: int) -> str:
    """``prefix`` + the 26-character Crockford base32 form of a 128-bit ``value``, exactly as
    ``openpse.domain.ids`` writes it (13 table lookups of 10 bits instead of 26 of 5)."""
    p = _PAIRS
    return prefix + "".join([p[(value >> s) & 1023] for s in range(120, -1, -10)])


def _ms_part(ms: int) -> str:
    """The first 10 characters of every id made in millisecond ``ms`` (bits 129..80)."""
    p = _PAIRS
    return "".join([p[(ms >> s) & 1023] for s in (40, 30, 20, 10, 0)])


def _tail(seq: int, rnd: random.Random) -> str:
    """The last 16 characters: a sequence byte, then 72 random bits."""
    v = (seq << 72) | rnd.getrandbits(72)
    p = _PAIRS
    return (p[v >> 70] + p[(v >> 60) & 1023] + p[(v >> 50) & 1023] + p[(v >> 40) & 1023]
            + p[(v >> 30) & 1023] + p[(v >> 20) & 1023] + p[(v >> 10) & 1023] + p[v & 1023])


def object_id(prefix: str, ms: int, seq: int, rnd: random.Random) -> str:
    return prefix + _ms_part(ms) + _tail(seq, rnd)


# ---- templates: built once from the services' own view code, filled per payment -----------


def _column_json(value: Any) -> str | None:
    """A JSON column's value exactly as the hot path writes it (``storage.direct.json_param``)."""
    return json_param(value)


def _template(obj: Any, sentinels: dict[str, str], *, column: bool = False) -> str:
    """``obj`` as the JSON the services write (an event payload with orjson, a JSON column as
    SQLAlchemy does), as a ``str.format`` template: every sentinel becomes the named field."""
    text = str(_column_json(obj)) if column else orjson.dumps(obj).decode()
    if "\\" in text or "\t" in text or "\n" in text:
        raise AssertionError("template needs escaping; not expected for generated payments")
    text = text.replace("{", "{{").replace("}", "}}")
    for name, sentinel in sentinels.items():
        if sentinel not in text:
            raise AssertionError(f"sentinel for {name} not found in the template")
        text = text.replace(sentinel, "{" + name + "}")
    return text


@dataclass
class Templates:
    payment_method: str
    events: dict[str, str]  # type -> payload template
    attempt_raw: str
    simulator_result: str


def build_templates(merchant_id: str, livemode: bool, currency: str, pm_view: dict[str, Any]
                    ) -> Templates:
    """One payment's JSON, made by ``payment_view`` / ``changed_fields`` on sentinel values at
    each step of a create+confirm, turned into templates."""
    s = {
        "pay": "SENTINELPAY", "pm": "SENTINELPM", "order": "SENTINELORDER",
        "created": "SENTINELCREATED", "captured": "SENTINELCAPTURED", "evt": "SENTINELEVT",
        "amount": "918273645501", "fee": "918273645502", "ref": "SENTINELREF",
    }
    pm = {**pm_view, "id": s["pm"]}
    row: dict[str, Any] = {
        "id": s["pay"], "merchant_id": merchant_id, "livemode": livemode,
        "status": Status.REQUIRES_CONFIRMATION, "amount": int(s["amount"]), "currency": currency,
        "amount_capturable": 0, "amount_received": 0, "amount_refunded": 0, "fee": 0,
        "capture_method": "automatic", "merchant_order_id": s["order"], "description": None,
        "customer": None, "billing_address": None, "device": None, "return_url": None,
        "metadata": {}, "payment_method_type": "card", "payment_method": pm,
        "payment_method_id": s["pm"], "payment_method_enc": None, "amount_overpaid": 0,
        "amount_overpaid_refunded": 0, "settles_at": None, "expiry_warned_at": None,
        "failure_code": None, "failure_message": None, "cancellation_reason": None,
        "next_action": None, "expires_at": None, "connector": None,
        "connector_reference": None, "checkout_session_id": None, "captured_at": None,
        "canceled_at": None, "created": 0, "updated": 0, "version": 1,
    }
    steps: list[tuple[str, dict[str, Any]]] = [("payment.created", row)]
    processing = {**row, "status": Status.PROCESSING, "connector": CONNECTOR, "version": 2}
    steps.append(("payment.processing", processing))
    succeeded = {**processing, "status": Status.SUCCEEDED, "amount_received": int(s["amount"]),
                 "amount_capturable": 0, "fee": int(s["fee"]), "connector_reference": s["ref"],
                 "captured_at": 1, "next_action": None, "version": 3}
    steps.append(("payment.succeeded", succeeded))

    def view(r: dict[str, Any]) -> dict[str, Any]:
        v = payment_view(r)
        v["created"] = v["updated"] = s["created"]
        if v["captured_at"] is not None:
            v["captured_at"] = s["captured"]
        return v

    events: dict[str, str] = {}
    before: dict[str, Any] | None = None
    for etype, r in steps:
        after = view(r)
        previous = changed_fields(before, after) if before is not None else None
        if previous and previous.get("captured_at") is not None:
            raise AssertionError("unexpected previous captured_at")
        event = {
            "id": s["evt"], "object": "event", "type": etype, "created": s["created"],
            "livemode": livemode, "api_version": API_VERSION,
            "data": {"object": after, "previous_attributes": previous or {}},
            "request": None,
        }
        names = {k: s[k] for k in ("evt", "pay", "pm", "order", "created", "amount")}
        if etype == "payment.succeeded":
            names |= {"fee": s["fee"], "captured": s["captured"]}
        events[etype] = _template(event, names)
        before = after
    # What the sandbox acquirer answers to this card, and what the attempt keeps of it.
    card = CardData(CARD_NUMBER, EXP_MONTH, EXP_YEAR, "123")
    result = authorize_outcome(AuthorizeRequest(
        reference="att_x", payment_id="pay_x", amount=1000, currency=currency, method="card",
        capture=True, card=card), s["ref"])
    if result.outcome != "captured":
        raise AssertionError(f"the sandbox no longer captures {CARD_NUMBER[-4:]}")
    raw = {"outcome": result.outcome, **(result.raw or {})}
    return Templates(
        payment_method=_template(pm, {"pm": s["pm"]}, column=True),
        events=events,
        attempt_raw=str(_column_json(raw)),
        simulator_result=_template(simulator_row(result), {"ref": s["ref"]}, column=True),
    )


# ---- rows ----------------------------------------------------------------------------------

PM_COLUMNS = ["id", "merchant_id", "livemode", "type", "brand", "last4", "bin6", "exp_month",
              "exp_year", "country", "holder_name", "fingerprint", "number_enc", "created"]
PAYMENT_COLUMNS = [c.name for c in t.payments.c]
PAYMENT_JSON_COLUMNS = {c.name for c in t.payments.c if isinstance(c.type, JSON)}
EVENT_COLUMNS = ["id", "merchant_id", "livemode", "type", "object_id", "payload", "created"]
ATTEMPT_COLUMNS = ["id", "payment_id", "refund_id", "operation", "connector", "amount",
                   "currency", "status", "connector_reference", "error_code", "raw", "created",
                   "updated"]
SIM_COLUMNS = ["reference", "operation", "amount", "currency", "result", "created"]
JOURNAL_COLUMNS = ["id", "merchant_id", "livemode", "kind", "reference_id", "created"]
POSTING_COLUMNS = ["journal_id", "account_id", "currency", "amount"]  # id: the table's own

TABLE_ORDER = ["payment_methods", "payments", "events", "payment_attempts",
               "simulator_operations", "journals", "postings"]
COLUMNS = dict(zip(TABLE_ORDER, [PM_COLUMNS, PAYMENT_COLUMNS, EVENT_COLUMNS, ATTEMPT_COLUMNS,
                                 SIM_COLUMNS, JOURNAL_COLUMNS, POSTING_COLUMNS], strict=True))


@dataclass
class Chunk:
    rows: dict[str, list[tuple[Any, ...]]]
    deltas: dict[int, int]  # ledger account id -> sum of this chunk's postings

    @property
    def row_count(self) -> int:
        return sum(len(r) for r in self.rows.values())


@dataclass
class Plan:
    merchant_id: str
    livemode: bool
    currency: str
    n: int
    start_ms: int
    step_ms: int
    clock_offset_s: int
    pricing: dict[str, Any] | None
    accounts: dict[str, int]  # kind -> ledger account id
    secrets: SecretBox
    fingerprint: str
    fixed_amount: int | None = None
    seed: int = 0
    tag: str = "bulk"
    templates: Templates = field(init=False)
    card: card_rules.CardDetails = field(init=False)

    def __post_init__(self) -> None:
        self.card = card_rules.validate_card(CARD_NUMBER, EXP_MONTH, EXP_YEAR, "123",
                                             today=datetime.now(UTC).date())
        self.templates = build_templates(self.merchant_id, self.livemode, self.currency,
                                         self.pm_view("pm_x"))

    def pm_view(self, pm_id: str) -> dict[str, Any]:
        return {"id": pm_id, "type": "card", "card": {
            "brand": self.card.brand, "last4": self.card.last4, "exp_month": self.card.exp_month,
            "exp_year": self.card.exp_year, "fingerprint": self.fingerprint,
            "country": card_rules.card_country(CARD_NUMBER)}}

    def amount(self, i: int) -> int:
        if self.fixed_amount is not None:
            return self.fixed_amount
        return 500 + (i * 7919) % 99_500

    def fee(self, amount: int) -> int:
        return ledger.fee_for(self.pricing, "card", self.currency, amount)

    def chunk(self, first: int, count: int) -> Chunk:
        """Rows for payments ``first .. first+count-1`` (deterministic in ``seed`` and ``i``)."""
        rnd = random.Random(self.seed * 1_000_003 + first)
        m, lm, cur = self.merchant_id, self.livemode, self.currency
        tp = self.templates
        ev_created = tp.events["payment.created"]
        ev_processing = tp.events["payment.processing"]
        ev_succeeded = tp.events["payment.succeeded"]
        card, country, fp = self.card, card_rules.card_country(CARD_NUMBER), self.fingerprint
        encrypt = self.secrets.encrypt
        acct = self.accounts
        pm_rows: list[tuple[Any, ...]] = []
        pay_rows: list[tuple[Any, ...]] = []
        ev_rows: list[tuple[Any, ...]] = []
        att_rows: list[tuple[Any, ...]] = []
        sim_rows: list[tuple[Any, ...]] = []
        jnl_rows: list[tuple[Any, ...]] = []
        post_rows: list[tuple[Any, ...]] = []
        deltas: dict[int, int] = defaultdict(int)
        pay_base: dict[str, Any] = {c: None for c in PAYMENT_COLUMNS} | {
            "merchant_id": m, "livemode": lm, "status": Status.SUCCEEDED, "currency": cur,
            "amount_capturable": 0, "amount_refunded": 0, "capture_method": "automatic",
            "metadata": {}, "payment_method_type": "card", "connector": CONNECTOR,
            "version": 3, "amount_overpaid": 0, "amount_overpaid_refunded": 0,
        }
        base = [_column_json(pay_base[c]) if c in PAYMENT_JSON_COLUMNS else pay_base[c]
                for c in PAYMENT_COLUMNS]
        ix = {c: PAYMENT_COLUMNS.index(c) for c in PAYMENT_COLUMNS}
        i_id, i_amount, i_received, i_fee = ix["id"], ix["amount"], ix["amount_received"], ix["fee"]
        i_order, i_pmj, i_pmid = ix["merchant_order_id"], ix["payment_method"], \
            ix["payment_method_id"]
        i_ref, i_capt, i_created, i_updated = ix["connector_reference"], ix["captured_at"], \
            ix["created"], ix["updated"]
        last_sec, created_txt = -1, ""
        last_capt, captured_txt = -1, ""
        for i in range(first, first + count):
            ms = self.start_ms + i * self.step_ms
            sec = ms // 1000
            if sec != last_sec:
                last_sec, created_txt = sec, rfc3339(sec) or ""
            captured = sec + self.clock_offset_s
            if captured == sec:
                captured_txt = created_txt
            elif captured != last_capt:
                last_capt, captured_txt = captured, rfc3339(captured) or ""
            amount = self.amount(i)
            fee = self.fee(amount)
            head = _ms_part(ms)
            pay_id = "pay_" + head + _tail(SEQ_PAY, rnd)
            pm_id = "pm_" + head + _tail(SEQ_PM, rnd)
            att_id = "att_" + head + _tail(SEQ_ATT, rnd)
            jnl_id = "jnl_" + head + _tail(SEQ_JNL, rnd)
            e1 = "evt_" + head + _tail(SEQ_EVT_CREATED, rnd)
            e2 = "evt_" + head + _tail(SEQ_EVT_PROCESSING, rnd)
            e3 = "evt_" + head + _tail(SEQ_EVT_SUCCEEDED, rnd)
            ref = "sim_" + head[-4:] + _tail(0, rnd)
            order = f"{self.tag}-{i}"
            pm_rows.append((pm_id, m, lm, "card", card.brand, card.last4, card.bin6,
                            card.exp_month, card.exp_year, country, None, fp,
                            encrypt(card.number, context=f"pan:{pm_id}"), sec))
            row = base.copy()
            row[i_id] = pay_id
            row[i_amount] = row[i_received] = amount
            row[i_fee] = fee
            row[i_order] = order
            row[i_pmj] = tp.payment_method.format(pm=pm_id)
            row[i_pmid] = pm_id
            row[i_ref] = ref
            row[i_capt] = captured
            row[i_created] = row[i_updated] = sec
            pay_rows.append(tuple(row))
            common = {"pay": pay_id, "pm": pm_id, "order": order, "created": created_txt,
                      "amount": amount}
            ev_rows.append((e1, m, lm, "payment.created", pay_id,
                            ev_created.format(evt=e1, **common), sec))
            ev_rows.append((e2, m, lm, "payment.processing", pay_id,
                            ev_processing.format(evt=e2, **common), sec))
            ev_rows.append((e3, m, lm, "payment.succeeded", pay_id,
                            ev_succeeded.format(evt=e3, fee=fee, captured=captured_txt,
                                                **common), sec))
            att_rows.append((att_id, pay_id, None, "authorize", CONNECTOR, amount, cur,
                             "succeeded", ref, None, tp.attempt_raw, sec, sec))
            sim_rows.append((att_id, "sale", amount, cur, tp.simulator_result.format(ref=ref),
                             sec))
            jnl_rows.append((jnl_id, m, lm, "capture", pay_id, sec))
            for p in ledger.capture(m, cur, amount, fee, held=False):
                a = acct[p.kind]
                post_rows.append((jnl_id, a, p.currency, p.amount))
                deltas[a] += p.amount
        rows = dict(zip(TABLE_ORDER, [pm_rows, pay_rows, ev_rows, att_rows, sim_rows, jnl_rows,
                                      post_rows], strict=True))
        return Chunk(rows, dict(deltas))


def account_kinds(plan_fee_possible: bool) -> list[str]:
    kinds = ["acquirer_receivable", "merchant_pending"]
    return kinds + (["platform_fees"] if plan_fee_possible else [])


def chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for first in range(0, n, size):
        yield first, min(size, n - first)


# ---- the load ------------------------------------------------------------------------------


@dataclass
class Options:
    url: str
    n: int
    merchant_id: str | None
    livemode: bool
    currency: str
    chunk: int
    span_days: float
    amount: int | None
    seed: int | None
    vacuum: bool
    sqlite_wal: bool = False


@dataclass
class Outcome:
    merchant: dict[str, Any]
    rows: int
    phases: dict[str, Any] = field(default_factory=dict)


def _settings(url: str) -> Settings:
    s = Settings()
    s.database_url = url
    return s


async def _check_migrated(async_url: str) -> None:
    from openpse.storage import migrate

    try:
        current = await migrate.current_revision(async_url)
    except Exception as exc:
        raise LoadError(f"cannot open the database: {exc}") from exc
    head = migrate.head_revision()
    if current != head:
        raise LoadError(
            f"the database is not migrated (schema revision {current or 'none'}, this code needs "
            f"{head}): run `openpse migrate --database-url ...` first")


async def _merchant(opts: Options, settings: Settings) -> dict[str, Any]:
    """The merchant to load into (created with a sandbox key pair unless ``--merchant-id``);
    refuses a merchant with enabled webhook endpoints in the mode (no outbox rows written)."""
    from sqlalchemy import func, select

    from openpse.bootstrap import build_services
    from openpse.services import merchants as m

    svc = build_services(settings)
    try:
        out: dict[str, Any]
        if opts.merchant_id is None:
            merchant = await m.create_merchant(svc, name="Bulk load", kyc_approved=opts.livemode)
            issued = await m.create_access_key(svc, merchant["id"], livemode=opts.livemode)
            out = {"merchant_id": merchant["id"], "access_key": issued.key["id"],
                   "secret": issued.secret}
        else:
            out = {"merchant_id": opts.merchant_id}
        async with svc.db.read() as conn:
            row = (await conn.execute(select(t.merchants.c.pricing,
                                             t.merchants.c.sandbox_clock_offset_s)
                                      .where(t.merchants.c.id == out["merchant_id"]))).first()
            if row is None:
                raise LoadError(f"no merchant {out['merchant_id']!r} in this database")
            endpoints = (await conn.execute(
                select(func.count()).select_from(t.webhook_endpoints).where(
                    t.webhook_endpoints.c.merchant_id == out["merchant_id"],
                    t.webhook_endpoints.c.livemode == opts.livemode,
                    t.webhook_endpoints.c.status == "enabled"))).scalar_one()
        if endpoints:
            raise LoadError(
                f"merchant {out['merchant_id']} has {endpoints} enabled webhook endpoint(s) in "
                "this mode; the bulk load writes no webhook outbox rows: use another merchant")
        out["pricing"] = row.pricing
        out["clock_offset_s"] = 0 if opts.livemode else int(row.sandbox_clock_offset_s)
        out["fingerprint"] = svc.fingerprints.fingerprint(CARD_NUMBER)
        out["secrets"] = svc.secrets
        return out
    finally:
        await svc.db.dispose()


def _plan(opts: Options, merchant: dict[str, Any], accounts: dict[str, int]) -> Plan:
    now_ms = int(time.time() * 1000)
    step = max(MIN_STEP_MS, int(opts.span_days * 86_400_000) // max(opts.n, 1))
    seed = opts.seed if opts.seed is not None else random.SystemRandom().getrandbits(32)
    return Plan(
        merchant_id=merchant["merchant_id"], livemode=opts.livemode, currency=opts.currency,
        n=opts.n, start_ms=now_ms - 1000 - opts.n * step, step_ms=step,
        clock_offset_s=merchant["clock_offset_s"], pricing=merchant["pricing"],
        accounts=accounts, secrets=merchant["secrets"], fingerprint=merchant["fingerprint"],
        fixed_amount=opts.amount, seed=seed, tag=f"bulk{seed % 46656:03x}",
    )


def _fee_possible(opts: Options, merchant: dict[str, Any]) -> bool:
    if opts.amount is not None:
        amounts: Any = [opts.amount]
    else:
        amounts = (500 + (i * 7919) % 99_500 for i in range(min(opts.n, 99_500)))
    return any(ledger.fee_for(merchant["pricing"], "card", opts.currency, a) for a in amounts)


def _pipelined(plan: Plan, size: int) -> Iterator[Chunk]:
    """Chunks in order, the next one generated on a helper thread while the caller writes."""
    parts = list(chunks(plan.n, size))
    with ThreadPoolExecutor(1) as pool:
        pending: Future[Chunk] | None = pool.submit(plan.chunk, *parts[0]) if parts else None
        for k in range(len(parts)):
            assert pending is not None
            chunk = pending.result()
            pending = pool.submit(plan.chunk, *parts[k + 1]) if k + 1 < len(parts) else None
            yield chunk


# -- PostgreSQL


# A chunk's postings go to slot 0 of each account's balance (storage/ledger.py spreads a
# server's transactions over the slots; any slot sums the same).
ADD_TO_SLOT_0 = ("INSERT INTO ledger_balances (account_id, slot, balance) VALUES ({}, 0, {}) "
                 "ON CONFLICT (account_id, slot) DO UPDATE SET "
                 "balance = ledger_balances.balance + excluded.balance")


async def _load_pg(opts: Options, merchant: dict[str, Any], out: Outcome) -> None:
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(opts.url))
    try:
        await conn.execute("SET synchronous_commit = off")
        try:  # as pg_restore --disable-triggers: no per-row foreign-key checks (superuser only)
            await conn.execute("SET session_replication_role = replica")
            out.phases["fk_checks"] = "off"
        except asyncpg.InsufficientPrivilegeError:
            out.phases["fk_checks"] = "on"
        now = int(time.time())
        accounts: dict[str, int] = {}
        async with conn.transaction():
            for kind in account_kinds(_fee_possible(opts, merchant)):
                await conn.execute(
                    "INSERT INTO ledger_accounts (merchant_id, livemode, currency, kind, created)"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    merchant["merchant_id"], opts.livemode, opts.currency, kind, now)
                accounts[kind] = await conn.fetchval(
                    "SELECT id FROM ledger_accounts WHERE merchant_id = $1 AND livemode = $2 "
                    "AND currency = $3 AND kind = $4",
                    merchant["merchant_id"], opts.livemode, opts.currency, kind)
        plan = _plan(opts, merchant, accounts)
        t0 = time.perf_counter()
        for chunk in _pipelined(plan, opts.chunk):
            async with conn.transaction():
                for table in TABLE_ORDER:
                    await conn.copy_records_to_table(table, records=chunk.rows[table],
                                                     columns=COLUMNS[table])
                for acct, delta in sorted(chunk.deltas.items()):
                    await conn.execute(ADD_TO_SLOT_0.format("$1", "$2"), acct, delta)
            out.rows += chunk.row_count
        out.phases["copy_s"] = round(time.perf_counter() - t0, 2)
        if opts.vacuum:
            t1 = time.perf_counter()
            await conn.execute("VACUUM (ANALYZE) " + ", ".join([*TABLE_ORDER, "ledger_balances"]))
            out.phases["vacuum_analyze_s"] = round(time.perf_counter() - t1, 2)
    finally:
        await conn.close()


# -- SQLite


def _sqlite_path(url: str) -> str:
    path = make_url(url).database
    if not path:
        raise LoadError("an in-memory SQLite database cannot be bulk loaded")
    return path


def _load_sqlite(opts: Options, merchant: dict[str, Any], out: Outcome) -> None:
    db = sqlite3.connect(_sqlite_path(opts.url), isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA synchronous = OFF")  # this connection only
        db.execute("PRAGMA cache_size = -1048576")  # 1 GiB
        db.execute("PRAGMA temp_store = MEMORY")
        journal = "wal"
        if not opts.sqlite_wal:
            # Every page written once (no WAL copy + checkpoint): ~1.6x faster. Leaving WAL
            # needs the file to ourselves: with another connection open (a server, a reader)
            # SQLite says "locked" at once and the load stays in WAL.
            try:
                journal = db.execute("PRAGMA journal_mode = MEMORY").fetchone()[0]
            except sqlite3.OperationalError:
                journal = "wal"
        db.execute("PRAGMA busy_timeout = 30000")
        out.phases["sqlite_journal"] = journal
        now = int(time.time())
        accounts: dict[str, int] = {}
        db.execute("BEGIN IMMEDIATE")
        for kind in account_kinds(_fee_possible(opts, merchant)):
            db.execute("INSERT INTO ledger_accounts (merchant_id, livemode, currency, kind, "
                       "created) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (merchant["merchant_id"], opts.livemode, opts.currency, kind, now))
            accounts[kind] = db.execute(
                "SELECT id FROM ledger_accounts WHERE merchant_id = ? AND livemode = ? AND "
                "currency = ? AND kind = ?",
                (merchant["merchant_id"], opts.livemode, opts.currency, kind)).fetchone()[0]
        db.execute("COMMIT")
        plan = _plan(opts, merchant, accounts)
        sql = {tb: f"INSERT INTO {tb} ({', '.join(cols)}) VALUES "
                   f"({', '.join('?' * len(cols))})" for tb, cols in COLUMNS.items()}
        t0 = time.perf_counter()
        for chunk in _pipelined(plan, opts.chunk):
            db.execute("BEGIN IMMEDIATE")
            try:
                for table in TABLE_ORDER:
                    db.executemany(sql[table], chunk.rows[table])
                for acct, delta in sorted(chunk.deltas.items()):
                    db.execute(ADD_TO_SLOT_0.format("?", "?"), (acct, delta))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            out.rows += chunk.row_count
        out.phases["insert_s"] = round(time.perf_counter() - t0, 2)
    finally:
        t1 = time.perf_counter()
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")  # what OpenPSE runs with
            else:  # copy what we wrote into the file now, without waiting for anyone
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()
        out.phases["checkpoint_s"] = round(time.perf_counter() - t1, 2)


async def _prepare(opts: Options) -> tuple[str, dict[str, Any]]:
    async_url = to_async_url(opts.url)
    backend = make_url(async_url).get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise LoadError(f"unsupported database {backend!r}: sqlite:/// or postgresql:// only")
    await _check_migrated(async_url)
    return backend, await _merchant(opts, _settings(opts.url))


def run(opts: Options) -> dict[str, Any]:
    """Load and return the result line (raises ``LoadError`` if the load cannot run)."""
    if opts.n < 0 or opts.chunk < 1:
        raise LoadError("--payments must be >= 0 and --chunk >= 1")
    t0 = time.perf_counter()
    backend, merchant = asyncio.run(_prepare(opts))
    out = Outcome(merchant=merchant, rows=0)
    t1 = time.perf_counter()
    if backend == "postgresql":
        asyncio.run(_load_pg(opts, merchant, out))
    else:
        _load_sqlite(opts, merchant, out)
    seconds = time.perf_counter() - t1
    result: dict[str, Any] = {
        "payments": opts.n,
        "seconds": round(seconds, 2),
        "rows_per_s": round(out.rows / seconds) if seconds > 0 else 0,
        "database": backend,
        "rows": out.rows,
        "payments_per_s": round(opts.n / seconds) if seconds > 0 else 0,
        "setup_s": round(t1 - t0, 2),
        **out.phases,
        "merchant_id": merchant["merchant_id"],
        "livemode": opts.livemode,
        "currency": opts.currency,
    }
    if "access_key" in merchant:
        result["access_key"] = merchant["access_key"]
        result["secret"] = merchant["secret"]
    return result


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True,
                    help="sqlite:////path/openpse.db or postgresql://user@host/db (migrated)")
    ap.add_argument("--payments", type=int, required=True, help="how many payments to load")
    ap.add_argument("--merchant-id", help="load into this merchant (default: create one with a "
                                          "sandbox key pair, printed in the result)")
    ap.add_argument("--live", action="store_true", help="live-mode payments (default: test)")
    ap.add_argument("--currency", default="USD", help="ISO 4217 code (default USD)")
    ap.add_argument("--amount", type=int, help="every payment this amount (default: varied)")
    ap.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                    help=f"payments per transaction (default {DEFAULT_CHUNK})")
    ap.add_argument("--span-days", type=float, default=30.0,
                    help="spread creation times over this many days before now (default 30)")
    ap.add_argument("--seed", type=int, help="random seed for the ids (default: random)")
    ap.add_argument("--no-vacuum", action="store_true",
                    help="PostgreSQL: skip VACUUM (ANALYZE) of the loaded tables at the end")
    ap.add_argument("--sqlite-wal", action="store_true",
                    help="SQLite: stay in WAL mode during the load (a killed load cannot leave "
                         "a damaged file; ~1.6x slower). Default: an in-memory rollback journal "
                         "while loading, WAL again after")
    a = ap.parse_args(argv)
    return Options(url=a.database_url, n=a.payments, merchant_id=a.merchant_id, livemode=a.live,
                   currency=a.currency.upper(), chunk=a.chunk, span_days=a.span_days,
                   amount=a.amount, seed=a.seed, vacuum=not a.no_vacuum,
                   sqlite_wal=a.sqlite_wal)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        result = run(opts)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
