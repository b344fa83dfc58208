"""Payment use cases: create, confirm, 3-D Secure, capture, cancel, and applying acquirer answers.

Every flow that talks to an acquirer has the same three steps (after hyperswitch's core flows):

1. one transaction: lock the payment, check the transition, persist the attempt (``pending``)
   and move the payment to ``processing`` — so a crash after this point is visible;
2. the connector call, with the attempt id as the acquirer's idempotency reference;
3. one transaction: lock the payment again and apply the answer — status, amounts, ledger
   journal and event together.

A crash between 2 and 3 leaves ``processing`` + a pending attempt; a retry with the same
Idempotency-Key, or the worker's ``sync`` job, asks the acquirer about that same reference
and finishes the work exactly once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Table, insert, select

from openpse.connectors.base import AuthorizeRequest, CardData, ConnectorResult, Outcome
from openpse.domain import cards as card_rules
from openpse.domain import ledger
from openpse.domain import local_methods as local_rules
from openpse.domain.errors import CardDeclined, Conflict, InvalidRequest, NotFound
from openpse.domain.ids import new_id
from openpse.domain.money import parse_amount, parse_currency
from openpse.domain.payments import (
    CANCELLATION_REASONS,
    EVENT_FOR_STATUS,
    TERMINAL,
    Amounts,
    Status,
    assert_transition,
)
from openpse.domain.risk import RISK_BLOCK_CODE, risk_blocks
from openpse.services.clock import clock_at, merchant_now
from openpse.services.context import MERCHANT_TERMS, Caller, Services
from openpse.services.events import Held, changed_fields, flush, record_event
from openpse.services.views import payment_view
from openpse.storage.db import TX_SCOPED_INFO, Tx
from openpse.storage.direct import (
    Direct,
    GuardMissed,
    Write,
    decode,
    direct,
    prefixed,
    unprefixed,
)
from openpse.storage.ledger import post_journal
from openpse.storage.repos import in_scope, load_scoped, missing, update_versioned
from openpse.storage.tables import (
    idempotency_keys,
    merchants,
    payment_attempts,
    payment_methods,
    payments,
    review_items,
)

__all__ = [
    "CardInput",
    "cancel_payment",
    "capture_payment",
    "complete_3ds",
    "confirm_payment",
    "create_payment",
    "get_payment",
    "resolve_attempt",
]

MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LEN = 40
MAX_METADATA_VALUE_LEN = 500
DEFAULT_CONNECTOR = "simulator"


@dataclass(frozen=True, repr=False)
class CardInput:
    """A raw card from a request: lives in memory for one request, never stored as is."""

    number: Any
    exp_month: Any
    exp_year: Any
    cvc: Any
    holder_name: str | None = None

    def __repr__(self) -> str:
        return "CardInput(<redacted>)"


# ---- validation ---------------------------------------------------------------------------

def validate_metadata(md: Any, param: str = "metadata") -> dict[str, str]:
    if md is None:
        return {}
    if not isinstance(md, dict):
        raise InvalidRequest("metadata must be an object of string keys and values", param=param)
    if len(md) > MAX_METADATA_KEYS:
        raise InvalidRequest(f"metadata takes at most {MAX_METADATA_KEYS} keys, got {len(md)}",
                             param=param)
    for k, v in md.items():
        if not isinstance(k, str) or not 1 <= len(k) <= MAX_METADATA_KEY_LEN:
            raise InvalidRequest(f"metadata keys must be 1-{MAX_METADATA_KEY_LEN} characters",
                                 param=f"{param}[{k}]")
        if not isinstance(v, str) or len(v) > MAX_METADATA_VALUE_LEN:
            raise InvalidRequest(
                f"metadata values must be strings of at most {MAX_METADATA_VALUE_LEN} characters",
                param=f"{param}[{k}]")
    return dict(md)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


# ---- vault --------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class _Vaulted:
    pm_id: str
    card: CardData  # no CVC: that is never stored, and is passed along on its own
    card_key: str  # BIN6:last4, what the risk rules match on


# The card this request has just vaulted: its number is in the request's memory anyway, so the
# risk check and the acquirer call use it instead of reading back (and decrypting) the row
# written moments before. Any other payment method id reads the vault.
_just_vaulted: ContextVar[_Vaulted | None] = ContextVar("just_vaulted", default=None)


def _vaulted_now(pm_id: str) -> _Vaulted | None:
    """``pm_id``'s card, when this request vaulted it."""
    vaulted = _just_vaulted.get()
    return vaulted if vaulted is not None and vaulted.pm_id == pm_id else None


async def vault_card(svc: Services, tx: Tx, caller: Caller, card: CardInput, *,
                     writes: list[Write] | None = None
                     ) -> dict[str, Any]:
    """Validate and store a card; returns the safe view. The number is encrypted; no CVC.
    With ``writes``, its row is added there for the caller's next statement to write."""
    details = card_rules.validate_card(card.number, card.exp_month, card.exp_year, card.cvc,
                                       today=_today())
    pm_id = new_id("pm_")
    _just_vaulted.set(_Vaulted(pm_id, CardData(details.number, details.exp_month,
                                               details.exp_year, None, card.holder_name),
                               f"{details.bin6}:{details.last4}"))
    fingerprint = svc.fingerprints.fingerprint(details.number)
    country = card_rules.card_country(details.number)
    pm_row = {
        "id": pm_id, "merchant_id": caller.merchant_id, "livemode": caller.livemode,
        "type": "card", "brand": details.brand, "last4": details.last4, "bin6": details.bin6,
        "exp_month": details.exp_month, "exp_year": details.exp_year, "country": country,
        "holder_name": card.holder_name, "fingerprint": fingerprint,
        "number_enc": svc.secrets.encrypt(details.number, context=f"pan:{pm_id}"),
        "created": svc.now()}
    if writes is None:
        await direct(tx).insert(payment_methods, pm_row)
    else:
        writes.append((payment_methods, pm_row))
    return _pm_view(pm_id, details.brand, details.last4, details.exp_month, details.exp_year,
                    fingerprint, country)


def _pm_view(pm_id: str, brand: str, last4: str, exp_month: int, exp_year: int,
             fingerprint: str, country: str | None) -> dict[str, Any]:
    return {"id": pm_id, "type": "card", "card": {
        "brand": brand, "last4": last4, "exp_month": exp_month, "exp_year": exp_year,
        "fingerprint": fingerprint, "country": country}}


async def _token_card(tx: Tx, caller: Caller, token: str) -> dict[str, Any]:
    try:
        row = await load_scoped(tx, payment_methods, token, merchant_id=caller.merchant_id,
                                livemode=caller.livemode)
    except NotFound:
        raise NotFound(f"no such payment method token: {token!r}", code="resource_missing",
                       param="payment_method[token]") from None
    return _pm_view(row["id"], row["brand"], row["last4"], row["exp_month"], row["exp_year"],
                    row["fingerprint"], row["country"])


async def _card_data(svc: Services, pm_id: str, cvc: str | None) -> CardData:
    vaulted = _vaulted_now(pm_id)
    if vaulted is not None:
        return replace(vaulted.card, cvc=cvc)
    async with svc.db.read() as conn:
        row = await direct(conn).fetchone(
            "SELECT number_enc, exp_month, exp_year, holder_name FROM payment_methods "
            "WHERE id = :id", {"id": pm_id})
    if row is None:
        raise RuntimeError(f"payment method {pm_id} vanished")
    number = svc.secrets.decrypt(row["number_enc"], context=f"pan:{pm_id}")
    return CardData(number, row["exp_month"], row["exp_year"], cvc, row["holder_name"])


async def _resolve_payment_method(
    svc: Services, tx: Tx, caller: Caller, pm: dict[str, Any] | None, card: CardInput | None,
    *, payment: dict[str, Any], writes: list[Write] | None = None,
) -> dict[str, Any] | None:
    """The payment's method columns for ``pm``, validated against ``payment`` (its id, amount,
    currency, customer and capture method); None when no method was sent. ``writes``: see
    ``vault_card``."""
    if pm is None:
        return None
    kind = pm.get("type")
    for other in ("card", "token", *local_rules.LOCAL_METHODS):
        given = card if other == "card" else pm.get(other)
        if other != kind and given is not None and not (other == "token" and kind == "card"):
            raise InvalidRequest(f"payment_method[{other}] does not go with type {kind}",
                                 param=f"payment_method[{other}]")
    if kind in local_rules.LOCAL_METHODS:
        return _local_method(svc, str(kind), pm.get(str(kind)), payment)
    if kind != "card":
        raise InvalidRequest(
            f"payment method type {kind!r} is not available on this server; use card or one of "
            f"{', '.join(local_rules.LOCAL_METHODS)}",
            code="payment_method_unavailable", param="payment_method[type]")
    if pm.get("token"):
        if card is not None:
            raise InvalidRequest("send either payment_method[card] or payment_method[token]",
                                 param="payment_method[token]")
        view = await _token_card(tx, caller, pm["token"])
    elif card is None:
        raise InvalidRequest("payment_method[card] (or a pm_ token) is required for type card",
                             code="parameter_missing", param="payment_method[card]")
    else:
        view = await vault_card(svc, tx, caller, card, writes=writes)
    return {"payment_method": view, "payment_method_id": view["id"], "payment_method_type": "card",
            "payment_method_enc": None}


def _local_method(svc: Services, kind: str, details: Any, payment: dict[str, Any]
                  ) -> dict[str, Any]:
    if payment.get("capture_method") == "manual":
        raise InvalidRequest(f"{kind} payments are captured when the shopper pays: use "
                             "capture_method automatic", param="capture_method")
    m = local_rules.validate_method(kind, details, amount=payment["amount"],
                                    currency=payment["currency"], customer=payment.get("customer"))
    enc = None
    if m.secret is not None:  # a debit's IBAN: encrypted, bound to the payment; fingerprinted
        enc = svc.secrets.encrypt(m.secret, context=f"pm_secret:{payment['id']}")
        m.view[kind]["fingerprint"] = svc.fingerprints.fingerprint(f"iban:{m.secret}")
    return {"payment_method": m.view, "payment_method_id": None, "payment_method_type": kind,
            "payment_method_enc": enc}


def voucher_url(svc: Services, caller: Caller | None, payment_id: str) -> str:
    """The shopper's page for a payment's voucher or transfer details (``/vouchers/...``)."""
    token = svc.page_token(f"voucher:{payment_id}")
    return svc.public_url(caller, f"/vouchers/{payment_id}?token={token}")


# ---- create -------------------------------------------------------------------------------

async def create_payment(svc: Services, caller: Caller, p: dict[str, Any],
                         card: CardInput | None) -> tuple[dict[str, Any], int]:
    """Create (and with ``confirm`` confirm) a payment. Returns (view, HTTP status hint)."""
    if caller.resume_resource_id:  # a retry of a request whose first attempt crashed
        return await _resume_create(svc, caller, caller.resume_resource_id, p, card)
    currency = parse_currency(p["currency"])
    amount = parse_amount(p["amount"], currency)
    metadata = validate_metadata(p.get("metadata"))
    capture_method = p.get("capture_method") or "automatic"
    now = svc.now()
    payment_id = new_id("pay_")
    caller.plan_resource(payment_id)
    async with svc.db.transaction() as tx:
        # The card's row, the payment's and payment.created are held back (``keep``) and
        # written together at the end (with a confirmation, with payment.processing and the
        # attempt): one statement (one round trip) on PostgreSQL, which also carries the
        # request's deferred idempotency claim and commits alone (``flush(last=True)``), and
        # the payment inserted once, in the state it commits in.
        held = Held(keep=True)
        pm_cols = await _resolve_payment_method(svc, tx, caller, p.get("payment_method"), card,
                                                payment={**p, "id": payment_id, "amount": amount,
                                                         "currency": currency,
                                                         "capture_method": capture_method},
                                                writes=held.writes)
        pm_view = pm_cols["payment_method"] if pm_cols else None
        row = {
            "id": payment_id, "merchant_id": caller.merchant_id, "livemode": caller.livemode,
            "status": Status.REQUIRES_CONFIRMATION if pm_view else Status.REQUIRES_PAYMENT_METHOD,
            "amount": amount, "currency": currency, "amount_capturable": 0,
            "amount_received": 0, "amount_refunded": 0, "fee": 0,
            "capture_method": capture_method, "merchant_order_id": p.get("merchant_order_id"),
            "description": p.get("description"), "customer": p.get("customer"),
            "billing_address": p.get("billing_address"), "device": p.get("device"),
            "return_url": p.get("return_url"), "metadata": metadata,
            "payment_method_type": pm_cols["payment_method_type"] if pm_cols else None,
            "payment_method": pm_view,
            "payment_method_id": pm_cols["payment_method_id"] if pm_cols else None,
            "payment_method_enc": pm_cols["payment_method_enc"] if pm_cols else None,
            "amount_overpaid": 0, "amount_overpaid_refunded": 0, "settles_at": None,
            "expiry_warned_at": None,
            "failure_code": None, "failure_message": None, "cancellation_reason": None,
            "next_action": None, "expires_at": None, "connector": None,
            "connector_reference": None, "checkout_session_id": p.get("checkout_session_id"),
            "captured_at": None, "canceled_at": None, "created": now, "updated": now,
            "version": 1,
        }
        held.writes.append((payments, row))
        await record_event(tx, caller=caller, merchant_id=caller.merchant_id,
                           livemode=caller.livemode, type="payment.created",
                           obj=payment_view(row), previous=None, now=now, held=held, hold=True)
        await _recovery_point(tx, caller, payment_id)
        # With a method, confirmation's first step commits with the creation (one
        # transaction fewer); a crash after it resumes from ``processing`` like any confirm.
        confirm_now = bool(p.get("confirm")) and pm_view is not None
        attempt = None
        if confirm_now:
            row, attempt = await _begin_confirm(svc, tx, caller, row, None, None, None, now,
                                                held=held)
        await flush(tx, held, last=True)  # nothing follows it (Direct.defer)
    cvc = card.cvc if card and isinstance(card.cvc, str) else None
    if confirm_now:
        return await _finish_confirm(svc, caller, row, attempt, cvc=cvc, three_ds=None,
                                     respond_status=201), 201
    if p.get("confirm"):  # no method: confirm refuses, naming what is missing
        return await confirm_payment(svc, caller, payment_id, cvc=cvc), 201
    return payment_view(row), 201


async def _recovery_point(tx: Tx, caller: Caller, resource_id: str) -> None:
    if caller.resource_recorded(resource_id):
        return  # the key was claimed in this transaction, with the id
    record_id = caller.key_record_id()
    if record_id is not None:
        await direct(tx).update(idempotency_keys, {"resource_id": resource_id},
                                {"id": record_id})


async def _resume_create(svc: Services, caller: Caller, payment_id: str, p: dict[str, Any],
                         card: CardInput | None) -> tuple[dict[str, Any], int]:
    row = await _load(svc, caller, payment_id)
    resumable = row["status"] == Status.REQUIRES_CONFIRMATION or (
        row["status"] == Status.PROCESSING and row["payment_method_type"] == "card")
    if p.get("confirm") and resumable:  # a local method's confirmation is one transaction
        cvc = card.cvc if card and isinstance(card.cvc, str) else None
        return await confirm_payment(svc, caller, payment_id, cvc=cvc), 201
    _raise_if_declined(row)
    return payment_view(row), 201


async def _load(svc: Services, caller: Caller, payment_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        return await load_scoped(conn, payments, payment_id, merchant_id=caller.merchant_id,
                                 livemode=caller.livemode, what="payment")


async def get_payment(svc: Services, caller: Caller, payment_id: str) -> dict[str, Any]:
    return payment_view(await _load(svc, caller, payment_id))


# ---- state changes ------------------------------------------------------------------------

async def change_status(
    tx: Tx, caller: Caller | None, row: dict[str, Any], new_status: str, values: dict[str, Any],
    *, now: int, action: str, event_type: str | None = "default",
    writes: list[Write] | None = None, held: Held | None = None,
) -> dict[str, Any]:
    """The one way a payment's status changes: check the table, write, emit the event.
    ``writes``: writes of other tables made with the event (one round trip on PostgreSQL).
    ``held``: what the caller holds back (``Held``), written with the event; when it holds
    the payment's insert, the insert takes the new row instead of an update following it
    (the same row and version in the end); otherwise the version-checked update is held as a
    guard (checked when written). With no event it all stays held."""
    if new_status != row["status"]:
        assert_transition(row["id"], row["status"], new_status, action=action)
    before = payment_view(row)
    if held is None:
        new = await update_versioned(tx, payments, row, {**values, "status": new_status},
                                     now=now)
    else:
        new = held.update(payments, row, {**values, "status": new_status}, now=now)
    Amounts(new["amount"], new["amount_capturable"], new["amount_received"],
            new["amount_refunded"]).check()
    etype = EVENT_FOR_STATUS.get(new_status) if event_type == "default" else event_type
    if etype:
        after = payment_view(new)
        await record_event(tx, caller=caller, merchant_id=row["merchant_id"],
                           livemode=bool(row["livemode"]), type=etype, obj=after,
                           previous=changed_fields(before, after), now=now,
                           writes=writes or (), held=held)
    elif held is not None:
        held.writes.extend(writes or ())
    else:
        await direct(tx).write_all(writes or ())
    return new


async def _lock(tx: Tx, caller: Caller, payment_id: str) -> dict[str, Any]:
    return await load_scoped(tx, payments, payment_id, merchant_id=caller.merchant_id,
                             livemode=caller.livemode, lock=True, what="payment")


async def _new_attempt(tx: Tx, row: dict[str, Any], operation: str, amount: int, now: int,
                       *, refund_id: str | None = None, raw: dict[str, Any] | None = None) -> str:
    attempt = _attempt_row(row, operation, amount, now, refund_id=refund_id, raw=raw)
    await direct(tx).insert(payment_attempts, attempt)
    return str(attempt["id"])


def _attempt_row(row: dict[str, Any], operation: str, amount: int, now: int, *,
                 refund_id: str | None = None, raw: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """A new pending attempt's row (``payment_attempts``)."""
    return {"id": new_id("att_"), "payment_id": row["id"], "refund_id": refund_id,
            "operation": operation, "connector": row["connector"] or DEFAULT_CONNECTOR,
            "amount": amount, "currency": row["currency"], "status": "pending", "raw": raw,
            "created": now, "updated": now}


async def _lock_with_pending(tx: Tx, caller: Caller, payment_id: str, operation: str
                             ) -> tuple[dict[str, Any], Any]:
    """``_lock`` and, in the same statement, the payment's newest pending ``operation``
    attempt (attribute access, or None): what a confirm or a capture resumes after a crash."""
    d = direct(tx)
    sql = _LOCK_WITH_PENDING + ("" if d.is_sqlite else " FOR UPDATE OF p")
    row = await d.fetchone(sql, {"id": payment_id, "op": operation}, carry=True)
    if row is None or not in_scope(row, caller.merchant_id, caller.livemode):
        raise missing("payment", payment_id)
    attempt = unprefixed(row, "a", _ATTEMPT_COLUMNS, payment_attempts)
    pending = attempt["status"] == "pending"
    return decode(row, payments), SimpleNamespace(**attempt) if pending else None


async def _lock_with_attempt(tx: Tx, caller: Caller, payment_id: str, attempt_id: str
                             ) -> tuple[dict[str, Any], Any]:
    """``_lock`` and, in the same statement (one round trip instead of three), the attempt
    (attribute access, or None) and the merchant's terms (kept for ``merchant_terms``)."""
    d = direct(tx)
    found = await _with_attempt(d, caller, payment_id, attempt_id, lock=not d.is_sqlite)
    if found is None:
        raise missing("payment", payment_id)
    row, attempt, terms = found
    _terms_cache(tx)[row["merchant_id"]] = terms
    return row, attempt


async def _with_attempt(d: Direct, caller: Caller, payment_id: str, attempt_id: str, *,
                        lock: bool) -> tuple[dict[str, Any], Any, dict[str, Any]] | None:
    """The payment (None if missing or out of ``caller``'s scope), the attempt (attribute
    access, or None) and the merchant's terms, in one statement; ``lock``: the payment's row
    (PostgreSQL, in a transaction)."""
    sql = _LOCK_WITH_ATTEMPT + " FOR UPDATE OF p" if lock else _LOCK_WITH_ATTEMPT
    row = await d.fetchone(sql, {"id": payment_id, "att": attempt_id})
    if row is None or not in_scope(row, caller.merchant_id, caller.livemode):
        return None
    attempt = unprefixed(row, "a", _ATTEMPT_COLUMNS, payment_attempts)
    terms = unprefixed(row, "m", MERCHANT_TERMS, merchants)
    return (decode(row, payments),
            None if attempt["id"] is None else SimpleNamespace(**attempt), terms)


_ATTEMPT_COLUMNS = tuple(c.name for c in payment_attempts.columns)
_LOCK_WITH_ATTEMPT = (
    f"SELECT p.*, {prefixed('a', _ATTEMPT_COLUMNS)}, {prefixed('m', MERCHANT_TERMS)}"
    + " FROM payments p JOIN merchants m ON m.id = p.merchant_id"
    " LEFT JOIN payment_attempts a ON a.id = :att"
    " WHERE p.id = :id")  # the scope: ``in_scope`` (its docstring says why)


# The payment and its newest attempt of the operation (``_lock_with_pending`` keeps it only if
# pending): a new attempt is made only when none of its operation is pending (the payment is
# ``processing`` while one is), so a pending one is always the newest. ``status = 'pending'``
# is not in the statement: it lets the planner walk the partial index of every pending attempt
# (``ix_attempts_pending_created``) instead of the payment's few (test_query_plans.py).
_LOCK_WITH_PENDING = (
    f"SELECT p.*, {prefixed('a', _ATTEMPT_COLUMNS)} FROM payments p"
    " LEFT JOIN payment_attempts a ON a.id = (SELECT x.id FROM payment_attempts x"
    " WHERE x.payment_id = p.id AND x.operation = :op ORDER BY x.id DESC LIMIT 1)"
    " WHERE p.id = :id")  # the scope: ``in_scope``


_TERMS_SQL = f"SELECT {', '.join(MERCHANT_TERMS)} FROM merchants WHERE id = :id"


def _terms_cache(tx: Tx) -> dict[str, dict[str, Any]]:
    scoped: dict[str, Any] = tx.info.setdefault(TX_SCOPED_INFO, {})
    found: dict[str, dict[str, Any]] = scoped.setdefault("merchant_terms", {})
    return found


def _raise_if_declined(row: dict[str, Any]) -> None:
    if row["status"] == Status.FAILED and row["failure_code"]:
        raise CardDeclined(row["failure_message"] or "the card was declined",
                           code=row["failure_code"], extra={"payment": payment_view(row)})


async def merchant_terms(svc: Services, tx: Tx, row: dict[str, Any]
                         ) -> tuple[dict[str, Any] | None, int]:
    """The merchant's fee plan and clock (``captured_at`` is on it, for refund windows)."""
    found = _terms_cache(tx).get(row["merchant_id"]) or await direct(tx).fetchone(
        _TERMS_SQL, {"id": row["merchant_id"]}, table=merchants)
    if found is None:
        return None, svc.now()
    return found["pricing"], clock_at(svc.now(), bool(row["livemode"]),
                                      found["sandbox_clock_offset_s"])


# ---- confirm ------------------------------------------------------------------------------

async def confirm_payment(
    svc: Services, caller: Caller, payment_id: str, *, cvc: str | None = None,
    payment_method: dict[str, Any] | None = None, card: CardInput | None = None,
    return_url: str | None = None,
) -> dict[str, Any]:
    now = svc.now()
    async with svc.db.transaction() as tx:
        row, pending = await _lock_with_pending(tx, caller, payment_id, "authorize")
        three_ds = None
        attempt: dict[str, Any] | None
        if row["status"] == Status.PROCESSING and pending is not None:
            attempt, three_ds = vars(pending), (pending.raw or {}).get("three_ds")
        else:
            row, attempt = await _begin_confirm(svc, tx, caller, row, payment_method, card,
                                                return_url, now)
        if card is not None and isinstance(card.cvc, str):
            cvc = card.cvc
    return await _finish_confirm(svc, caller, row, attempt, cvc=cvc, three_ds=three_ds,
                                 respond_status=200)


async def _begin_confirm(
    svc: Services, tx: Tx, caller: Caller, row: dict[str, Any],
    payment_method: dict[str, Any] | None, card: CardInput | None, return_url: str | None,
    now: int, *, held: Held | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Step 1 of a confirmation, inside the caller's transaction: checks, risk, then the
    pending attempt and ``processing`` (a card), or the voucher (a local method). Returns the
    row and the attempt's row (None when no acquirer call follows). ``held``: what the caller
    holds back (the new payment's insert, say): the caller flushes it, unless a step here
    must write it first (a risk block's hooks, a local method's voucher)."""
    row = await _prepare_confirm(svc, tx, caller, row, payment_method, card, return_url, now,
                                 held=held)
    if row["status"] == Status.FAILED:  # blocked by risk: no acquirer call
        if held is not None:  # the hooks read the payment
            await flush(tx, held)
        await _after_payment_change(tx, caller, row, now)
        return row, None
    if row["payment_method_type"] in local_rules.LOCAL_METHODS:
        if held is not None:  # the local path reads and writes more than a status change
            await flush(tx, held)
        return await _issue_local(svc, tx, caller, row, now), None
    attempt = _attempt_row(row, "authorize", row["amount"], now)
    row = await change_status(tx, caller, row, Status.PROCESSING,
                              {"connector": DEFAULT_CONNECTOR}, now=now, action="confirm",
                              writes=[(payment_attempts, attempt)], held=held)
    return row, attempt


async def _finish_confirm(svc: Services, caller: Caller, row: dict[str, Any],
                          attempt: dict[str, Any] | None, *, cvc: str | None,
                          three_ds: str | None, respond_status: int | None = None
                          ) -> dict[str, Any]:
    """Steps 2 and 3: the acquirer call and its answer (nothing to do without an attempt).
    ``row`` and ``attempt`` are as the caller's committed transaction left them."""
    if attempt is None:
        _raise_if_declined(row)
        return payment_view(row)
    return await _authorize(svc, caller, row, str(attempt["id"]), cvc=cvc, three_ds=three_ds,
                            respond_status=respond_status, known_attempt=attempt)


async def _prepare_confirm(
    svc: Services, tx: Tx, caller: Caller, row: dict[str, Any],
    payment_method: dict[str, Any] | None, card: CardInput | None, return_url: str | None,
    now: int, *, held: Held | None = None,
) -> dict[str, Any]:
    if row["status"] not in (Status.REQUIRES_CONFIRMATION, Status.REQUIRES_PAYMENT_METHOD):
        # requires_action/requires_capture -> processing are legal edges (3-D Secure, capture,
        # void), but confirming such a payment again would authorise it a second time.
        raise Conflict(f"cannot confirm payment {row['id']}: it is {row['status']}"
                       + (" (a final state)" if row["status"] in TERMINAL else ""),
                       code="payment_invalid_state")
    values: dict[str, Any] = {}
    if payment_method is not None:
        pm_cols = await _resolve_payment_method(svc, tx, caller, payment_method, card,
                                                payment=row)
        assert pm_cols is not None
        values.update(pm_cols)
    elif row["payment_method"] is None:
        raise Conflict(f"payment {row['id']} has no payment method: confirm with "
                       "payment_method", code="payment_invalid_state")
    if return_url is not None:
        values["return_url"] = return_url
    if values:
        row = await change_status(tx, caller, row, Status.REQUIRES_CONFIRMATION, values, now=now,
                                  action="update", event_type=None, held=held)
    if row["payment_method_type"] in local_rules.LOCAL_METHODS:
        return row  # no card, no risk check of one: _issue_local hands out the voucher
    pm = row["payment_method"] or {}
    card_key = await _risk_card_key(tx, row["payment_method_id"])
    fingerprint = pm.get("card", {}).get("fingerprint")
    if risk_blocks(card_key=card_key, fingerprint=fingerprint, amount=row["amount"]):
        row = await change_status(tx, caller, row, Status.FAILED, {
            "failure_code": RISK_BLOCK_CODE,
            "failure_message": "The payment was blocked as likely fraudulent by risk checks."},
            now=now, action="confirm", held=held)
    return row


async def _issue_local(svc: Services, tx: Tx, caller: Caller, row: dict[str, Any],
                       now: int) -> dict[str, Any]:
    """Confirm a local method in the same transaction: the sandbox issuer hands out the voucher,
    the account to transfer to, or the debit's mandate (no external call, so no crash window)."""
    m, cur, lm = row["merchant_id"], row["currency"], bool(row["livemode"])
    clock = await merchant_now(svc, tx, m, lm)
    issued = local_rules.issue(local_rules.from_view(row["payment_method"]), seed=row["id"],
                               now=clock, amount=row["amount"], currency=cur,
                               voucher_url=voucher_url(svc, caller, row["id"]),
                               device=row["device"])
    if issued.status == Status.PROCESSING:  # a debit submitted: a memo until the bank answers
        await post_journal(tx, merchant_id=m, livemode=lm, kind="debit_submitted",
                           reference_id=row["id"],
                           entries=ledger.debit_submitted(m, cur, row["amount"]), now=now)
    new = await change_status(tx, caller, row, issued.status, {
        "next_action": issued.next_action, "expires_at": issued.expires_at,
        "settles_at": issued.settles_at, "payment_method": issued.method_view,
        "connector": DEFAULT_CONNECTOR}, now=now, action="confirm")
    await _after_payment_change(tx, caller, new, now)
    return new


async def release_part_payments(tx: Tx, row: dict[str, Any], now: int, why: str) -> None:
    """A bank transfer canceled (or expired) after part payments: that money is the shopper's;
    it moves to the suspense account and is raised for review, to be returned."""
    held = int(row["amount_received"])
    if held <= 0 or row["status"] != Status.REQUIRES_ACTION:
        return
    m, cur, lm = row["merchant_id"], row["currency"], bool(row["livemode"])
    await post_journal(tx, merchant_id=m, livemode=lm, kind="unapplied_funds",
                       reference_id=row["id"], entries=ledger.move(
                           m, cur, held, "shopper_funds_held", "unapplied_funds"), now=now)
    await _review(tx, row, "part_payment_unapplied", {
        "amount": held, "currency": cur, "reason": why,
        "note": "part payments of a transfer that will not complete; return them to the shopper"},
        now)


async def _risk_card_key(tx: Tx, pm_id: str) -> str:
    """``BIN6:last4`` of a vaulted card, what the risk rules match on."""
    vaulted = _vaulted_now(pm_id)
    if vaulted is not None:
        return vaulted.card_key
    row = await direct(tx).fetchone("SELECT bin6, last4 FROM payment_methods WHERE id = :id",
                                    {"id": pm_id})
    return f"{row['bin6']}:{row['last4']}" if row else ""


async def _authorize(svc: Services, caller: Caller | None, row: dict[str, Any], attempt_id: str,
                     *, cvc: str | None, three_ds: str | None,
                     respond_status: int | None = None,
                     known_attempt: dict[str, Any] | None = None) -> dict[str, Any]:
    """The acquirer call and its answer. ``known_attempt``: the attempt's row as committed
    with ``row`` in this request (the answer then needs no read of them, ``apply_result``)."""
    connector = svc.connectors[row["connector"] or DEFAULT_CONNECTOR]
    card = await _card_data(svc, row["payment_method_id"], cvc)
    req = AuthorizeRequest(reference=attempt_id, payment_id=row["id"], amount=row["amount"],
                           currency=row["currency"], method="card",
                           capture=row["capture_method"] == "automatic", card=card,
                           three_ds=three_ds, return_url=row["return_url"])
    try:
        result = await connector.authorize(req)
    except Exception as exc:  # no answer: leave it processing; sync resolves it
        result = ConnectorResult(Outcome.PENDING, message=f"connector error: {type(exc).__name__}")
    final = await apply_result(svc, caller, row["id"], attempt_id, "authorize", result,
                               merchant_id=row["merchant_id"], livemode=bool(row["livemode"]),
                               respond_status=respond_status,
                               known=None if known_attempt is None else (row, known_attempt))
    _raise_if_declined(final)
    return payment_view(final)


# ---- applying acquirer answers -------------------------------------------------------------

async def apply_result(
    svc: Services, caller: Caller | None, payment_id: str, attempt_id: str, operation: str,
    result: ConnectorResult, *, merchant_id: str, livemode: bool,
    respond_status: int | None = None,
    known: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Step 3 of every flow: apply one acquirer answer in one transaction. With
    ``respond_status``, the request's answer (the payment, unless declined) is stored with its
    idempotency key in the same transaction (``Caller.respond``). ``known``: the payment and
    attempt rows as this request committed them just before the acquirer call (the
    statement's guards find out if either changed since)."""
    now = svc.now()
    scope = Caller(merchant_id, livemode) if caller is None else caller
    at_hand = None  # the rows and the terms, when all are known: the answer reads nothing
    if (known is not None and caller is not None and caller.merchant_terms is not None
            and known[1]["id"] == attempt_id):
        at_hand = (*known, caller.merchant_terms)
    done = await unlocked_first(svc, result, lambda: _apply_unlocked(
        svc, caller, scope, payment_id, attempt_id, operation, result, now, respond_status,
        at_hand), sqlite=at_hand is not None)
    if done is not None:
        return done
    async with svc.db.transaction() as tx:
        row, attempt = await _lock_with_attempt(tx, scope, payment_id, attempt_id)
        if attempt is None or attempt.status != "pending":
            return row  # already applied (a retry raced us): nothing to do twice
        finished = _finished_attempt(attempt_id, result, now)
        if result.outcome == Outcome.PENDING or row["status"] != Status.PROCESSING:
            await direct(tx).write(finished)  # no status change for it to ride with
            if result.outcome != Outcome.PENDING:
                await _review(tx, row, "late_acquirer_answer", {
                    "attempt": attempt_id, "operation": operation, "outcome": result.outcome,
                    "status_at_arrival": row["status"]}, now)
            return row
        return await _apply_to(svc, tx, caller, row, attempt, operation, result, now,
                               respond_status, Held(keep=True, writes=[finished]))


async def unlocked_first(svc: Services, result: ConnectorResult,
                         unlocked: Callable[[], Awaitable[dict[str, Any] | None]], *,
                         sqlite: bool = False) -> dict[str, Any] | None:
    """An acquirer's final answer on PostgreSQL: ``unlocked`` (read without a lock, written as
    one statement that checks its guards itself) first. None when the locked path must decide:
    SQLite (unless ``sqlite``: ``unlocked`` reads nothing, so it saves a read there too), a
    pending outcome, not the common case, or a guard that missed (the row changed since it was
    read; nothing was written)."""
    if (svc.db.is_sqlite and not sqlite) or result.outcome == Outcome.PENDING:
        return None
    try:
        return await unlocked()
    except GuardMissed:
        return None


async def _apply_unlocked(
    svc: Services, caller: Caller | None, scope: Caller, payment_id: str, attempt_id: str,
    operation: str, result: ConnectorResult, now: int, respond_status: int | None,
    known: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """PostgreSQL, the common case (a payment ``processing`` with its attempt pending): read
    without a lock, then make the whole answer one statement that commits by itself
    (``Database.transaction(alone=True)``), its balances included, with the payment's update
    checked against the version read and the attempt's against ``pending``. Two round trips
    instead of BEGIN, the lock, the answer, the balances and COMMIT; one when the request
    itself just committed both rows and read the merchant's terms with its key (``known``:
    payment, attempt, terms; ``Caller.merchant_terms``): the guards check that nothing changed
    since. With ``known``
    SQLite comes here too (an ordinary transaction under its write lock, its guards checked
    as they are written): the locked path's read saved. ``GuardMissed`` (nothing written)
    when either changed in between; None when the case is not the common one (the locked
    path decides)."""
    if known is not None:
        row, terms = dict(known[0]), known[2]
        attempt: Any = SimpleNamespace(**(dict.fromkeys(_ATTEMPT_COLUMNS) | known[1]))
    else:
        async with svc.db.read() as conn:
            found = await _with_attempt(direct(conn), scope, payment_id, attempt_id, lock=False)
        if found is None:
            return None
        row, attempt, terms = found
    if attempt is None or attempt.status != "pending" or row["status"] != Status.PROCESSING:
        return None
    table, values, where = _finished_attempt(attempt_id, result, now)
    guard: Write = (table, values, {**where, "status": "pending"})
    async with svc.db.transaction(alone=True) as tx:
        _terms_cache(tx)[row["merchant_id"]] = terms
        return await _apply_to(svc, tx, caller, row, attempt, operation, result, now,
                               respond_status, Held(keep=True, guards=[guard]), last=True)


async def _apply_to(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                    attempt: Any, operation: str, result: ConnectorResult, now: int,
                    respond_status: int | None, held: Held, *, last: bool = False
                    ) -> dict[str, Any]:
    """The answer to a payment ``processing`` with its attempt pending: the attempt's update
    (in ``held``), the payment's (version-checked), its event and journal and the request's
    stored answer are held and made together: one statement on PostgreSQL. Until the flush
    the database holds the payment as it was: the hooks that run in between (checkout) work
    on the new row they are given, and read no payment."""
    handler = _APPLY[operation]
    new: dict[str, Any] = await handler(svc, tx, caller, row, result, attempt, now, held)
    if respond_status is not None and caller is not None and new["status"] != Status.FAILED:
        await caller.store_answer(tx, respond_status, payment_view(new), held.writes)
    held.guard_first(payments, row["id"])  # the locked path's order: payment, then attempt
    await flush(tx, held, last=last)
    return new


def _finished_attempt(attempt_id: str, result: ConnectorResult, now: int
                      ) -> tuple[Table, dict[str, Any], dict[str, Any]]:
    """The attempt's update for the acquirer's answer (a ``Direct`` write)."""
    status = {Outcome.PENDING: "pending", Outcome.REQUIRES_ACTION: "action_required",
              Outcome.DECLINED: "failed", Outcome.ERROR: "failed",
              Outcome.FAILED: "failed"}.get(result.outcome, "succeeded")
    return (payment_attempts, {
        "status": status, "connector_reference": result.connector_reference,
        "error_code": result.decline_code, "updated": now,
        "raw": {"outcome": result.outcome, **(result.raw or {})}}, {"id": attempt_id})


async def _review(tx: Tx, row: dict[str, Any], kind: str, details: dict[str, Any],
                  now: int) -> str:
    review_id = new_id("rev_")
    await tx.execute(insert(review_items).values(
        id=review_id, merchant_id=row["merchant_id"], livemode=row["livemode"],
        object_id=row["id"], kind=kind, details=details, status="open", created=now))
    return review_id


# The handlers of an answer: the journal's rows and the status change join the attempt's update
# in ``held``, which ``apply_result`` writes in one statement.
async def _apply_authorize(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                           result: ConnectorResult, attempt: Any, now: int,
                           held: Held) -> dict[str, Any]:
    m, cur, amt = row["merchant_id"], row["currency"], row["amount"]
    ref = result.connector_reference
    if result.outcome == Outcome.CAPTURED:
        pricing, clock = await merchant_terms(svc, tx, row)
        fee = ledger.fee_for(pricing, "card", cur, amt)
        await post_journal(tx, merchant_id=m, livemode=bool(row["livemode"]), kind="capture",
                           reference_id=row["id"], entries=ledger.capture(m, cur, amt, fee,
                                                                          held=False), now=now,
                           writes=held.writes)
        new = await change_status(tx, caller, row, Status.SUCCEEDED, {
            "amount_received": amt, "amount_capturable": 0, "fee": fee,
            "connector_reference": ref, "captured_at": clock, "next_action": None}, now=now,
            action="capture", held=held)
    elif result.outcome == Outcome.AUTHORIZED:
        await post_journal(tx, merchant_id=m, livemode=bool(row["livemode"]),
                           kind="authorization", reference_id=row["id"],
                           entries=ledger.authorization(m, cur, amt), now=now, writes=held.writes)
        new = await change_status(tx, caller, row, Status.REQUIRES_CAPTURE, {
            "amount_capturable": amt, "connector_reference": ref, "next_action": None},
            now=now, action="authorize", held=held)
    elif result.outcome == Outcome.REQUIRES_ACTION:
        url = svc.public_url(caller, f"/sandbox/3ds/{row['id']}?token={svc.page_token(row['id'])}")
        new = await change_status(tx, caller, row, Status.REQUIRES_ACTION, {
            "connector_reference": ref,
            "next_action": {"type": "redirect_to_url", "url": url,
                            "return_url": row["return_url"]}}, now=now, action="authenticate",
            held=held)
    else:  # declined, or an acquirer fault
        new = await change_status(tx, caller, row, Status.FAILED, {
            "failure_code": result.decline_code or "processing_error",
            "failure_message": result.message or "The acquirer could not process the card.",
            "connector_reference": ref, "next_action": None}, now=now, action="fail",
            held=held)
    await _after_payment_change(tx, caller, new, now)
    return new


async def _apply_capture(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                         result: ConnectorResult, attempt: Any, now: int,
                         held: Held) -> dict[str, Any]:
    m, cur = row["merchant_id"], row["currency"]
    if result.outcome != Outcome.CAPTURED:  # capture refused: the hold stays, capture again
        return await change_status(tx, caller, row, Status.REQUIRES_CAPTURE, {
            "failure_code": result.decline_code, "failure_message": result.message}, now=now,
            action="capture", event_type="payment.capture_failed", held=held)
    amount = int(attempt.amount)
    on_hold = row["amount_capturable"]
    pricing, clock = await merchant_terms(svc, tx, row)
    fee = ledger.fee_for(pricing, "card", cur, amount)
    entries = ledger.capture(m, cur, amount, fee, held=True)
    if on_hold > amount:
        entries += ledger.release(m, cur, on_hold - amount)
    await post_journal(tx, merchant_id=m, livemode=bool(row["livemode"]), kind="capture",
                       reference_id=row["id"], entries=entries, now=now, writes=held.writes)
    new = await change_status(tx, caller, row, Status.SUCCEEDED, {
        "amount_received": amount, "amount_capturable": 0, "fee": fee, "captured_at": clock},
        now=now, action="capture", held=held)
    await _after_payment_change(tx, caller, new, now)
    return new


async def _apply_void(svc: Services, tx: Tx, caller: Caller | None, row: dict[str, Any],
                      result: ConnectorResult, attempt: Any, now: int,
                      held: Held) -> dict[str, Any]:
    m, cur = row["merchant_id"], row["currency"]
    if result.outcome != Outcome.SUCCEEDED:
        return await change_status(tx, caller, row, Status.REQUIRES_CAPTURE, {}, now=now,
                                   action="cancel", event_type=None, held=held)
    if row["amount_capturable"]:
        await post_journal(tx, merchant_id=m, livemode=bool(row["livemode"]), kind="release",
                           reference_id=row["id"],
                           entries=ledger.release(m, cur, row["amount_capturable"]), now=now,
                           writes=held.writes)
    reason = (attempt.raw or {}).get("cancellation_reason")
    new = await change_status(tx, caller, row, Status.CANCELED, {
        "amount_capturable": 0, "cancellation_reason": reason, "canceled_at": now,
        "next_action": None}, now=now, action="cancel", held=held)
    await _after_payment_change(tx, caller, new, now)
    return new


_APPLY = {"authorize": _apply_authorize, "capture": _apply_capture, "void": _apply_void}


async def _after_payment_change(tx: Tx, caller: Caller | None, row: dict[str, Any],
                                now: int) -> None:
    """Hooks of other resources (a checkout session completes with its payment)."""
    for hook in PAYMENT_HOOKS:
        await hook(tx, caller, row, now)


PAYMENT_HOOKS: list[Any] = []


# ---- 3-D Secure, capture, cancel -----------------------------------------------------------

async def complete_3ds(svc: Services, caller: Caller, payment_id: str, outcome: str
                       ) -> dict[str, Any]:
    if outcome not in ("succeed", "fail"):
        raise InvalidRequest("outcome must be succeed or fail", param="outcome")
    now = svc.now()
    async with svc.db.transaction() as tx:
        row = await _lock(tx, caller, payment_id)
        if row["status"] != Status.REQUIRES_ACTION or (row["next_action"] or {}).get(
                "type") != "redirect_to_url":
            raise Conflict(f"payment {payment_id} is not waiting for 3-D Secure (it is "
                           f"{row['status']})", code="payment_invalid_state")
        three_ds = "succeeded" if outcome == "succeed" else "failed"
        attempt_id = await _new_attempt(tx, row, "authorize", row["amount"], now,
                                        raw={"three_ds": three_ds})
        row = await change_status(tx, caller, row, Status.PROCESSING, {"next_action": None},
                                  now=now, action="authenticate")
    return await _authorize(svc, caller, row, attempt_id, cvc=None, three_ds=three_ds)


async def capture_payment(svc: Services, caller: Caller, payment_id: str,
                          amount: int | None = None) -> dict[str, Any]:
    now = svc.now()
    async with svc.db.transaction() as tx:
        row, pending = await _lock_with_pending(tx, caller, payment_id, "capture")
        if row["status"] == Status.PROCESSING and pending is not None:  # resume after a crash
            attempt = vars(pending)
        else:
            assert_transition(payment_id, row["status"], Status.SUCCEEDED, action="capture")
            if row["status"] != Status.REQUIRES_CAPTURE:
                raise Conflict(f"cannot capture payment {payment_id}: it is {row['status']}",
                               code="payment_invalid_state")
            amt = row["amount_capturable"] if amount is None else parse_amount(
                amount, row["currency"])
            if amt > row["amount_capturable"]:
                raise InvalidRequest(
                    f"amount {amt} is more than the {row['amount_capturable']} authorized",
                    code="amount_too_large", param="amount")
            row, attempt = await _to_processing(tx, caller, row, "capture", amt, now,
                                                action="capture")
    return await _run_simple(svc, caller, row, attempt, "capture", respond_status=200)


async def _to_processing(tx: Tx, caller: Caller, row: dict[str, Any], operation: str,
                         amount: int, now: int, *, action: str,
                         raw: dict[str, Any] | None = None
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A capture's or a void's first step on a locked payment: its pending attempt inserted
    and the payment ``processing`` (no event), one statement on PostgreSQL. Returns both
    rows as committed with the transaction (``_run_simple`` applies the answer to them)."""
    attempt = _attempt_row(row, operation, amount, now, raw=raw)
    held = Held(keep=True)
    row = await change_status(tx, caller, row, Status.PROCESSING, {}, now=now, action=action,
                              event_type=None, writes=[(payment_attempts, attempt)], held=held)
    await flush(tx, held)
    return row, attempt


async def _run_simple(svc: Services, caller: Caller | None, row: dict[str, Any],
                      attempt: dict[str, Any], operation: str, *,
                      respond_status: int | None = None, known: bool = True
                      ) -> dict[str, Any]:
    """A capture's or a void's acquirer call and its answer (with ``respond_status``, the
    request's answer stored with its key in the answer's transaction, as ``apply_result``).
    ``known``: ``row`` and ``attempt`` are as the caller's transaction committed them (the
    answer then reads neither again; its guards check that neither changed since)."""
    attempt_id, amount = str(attempt["id"]), int(attempt["amount"])
    connector = svc.connectors[row["connector"] or DEFAULT_CONNECTOR]
    try:
        if operation == "capture":
            result = await connector.capture(attempt_id, row["connector_reference"] or "",
                                             amount, row["currency"])
        else:
            result = await connector.void(attempt_id, row["connector_reference"] or "")
    except Exception as exc:
        result = ConnectorResult(Outcome.PENDING, message=f"connector error: {type(exc).__name__}")
    final = await apply_result(svc, caller, row["id"], attempt_id, operation, result,
                               merchant_id=row["merchant_id"], livemode=bool(row["livemode"]),
                               respond_status=respond_status,
                               known=(row, attempt) if known else None)
    return payment_view(final)


async def cancel_payment(svc: Services, caller: Caller, payment_id: str,
                         reason: str | None = None) -> dict[str, Any]:
    if reason is not None and reason not in CANCELLATION_REASONS:
        raise InvalidRequest(
            f"cancellation_reason must be one of {', '.join(CANCELLATION_REASONS)}",
            param="cancellation_reason")
    now = svc.now()
    async with svc.db.transaction() as tx:
        row = await _lock(tx, caller, payment_id)
        assert_transition(payment_id, row["status"], Status.CANCELED, action="cancel")
        if row["status"] == Status.PROCESSING:  # processing -> canceled is for a void's answer
            raise Conflict(f"cannot cancel payment {payment_id}: it is processing (the acquirer "
                           "is being asked); retry once it has answered",
                           code="payment_invalid_state")
        if row["status"] != Status.REQUIRES_CAPTURE:  # nothing held at the acquirer
            await release_part_payments(tx, row, now, reason or "canceled")
            new = await change_status(tx, caller, row, Status.CANCELED, {
                "cancellation_reason": reason, "canceled_at": now, "next_action": None},
                now=now, action="cancel")
            await _after_payment_change(tx, caller, new, now)
            view = payment_view(new)
            await caller.store_answer(tx, 200, view)  # the answer commits with the cancellation
            return view
        row, attempt = await _to_processing(tx, caller, row, "void", 0, now, action="cancel",
                                            raw={"cancellation_reason": reason})
    return await _run_simple(svc, caller, row, attempt, "void", respond_status=200)


# ---- recovery -----------------------------------------------------------------------------

async def resolve_attempt(svc: Services, attempt: Any) -> None:
    """Finish an attempt left pending by a crash: ask the acquirer what happened to it."""
    async with svc.db.read() as conn:
        row = (await conn.execute(select(payments).where(
            payments.c.id == attempt.payment_id))).first()
    if row is None:
        return
    prow = dict(row._mapping)
    connector = svc.connectors[attempt.connector]
    result = await connector.sync(attempt.id)
    if result is None and attempt.operation == "authorize":
        # The call never reached the acquirer: make it now, with the same reference.
        three_ds = (attempt.raw or {}).get("three_ds")
        try:
            await _authorize(svc, None, prow, attempt.id, cvc=None, three_ds=three_ds)
        except CardDeclined:
            pass
        return
    if result is None:
        await _run_simple(svc, None, prow, {"id": attempt.id, "amount": attempt.amount},
                          attempt.operation, known=False)
        return
    await apply_result(svc, None, prow["id"], attempt.id, attempt.operation, result,
                       merchant_id=prow["merchant_id"], livemode=bool(prow["livemode"]))
