"""Checkout sessions: the merchant's resource behind the hosted payment page, and the
shopper-facing flows of that page and of the sandbox 3-D Secure challenge.

A session is ``open`` until its payment succeeds (``complete``, set by a ``PAYMENT_HOOKS`` hook in
the same transaction as the payment's change) or it expires (``expired``: asked by the merchant,
or by the ``expire_sessions`` job once ``expires_at`` has passed). Both are final.

Local methods (konbini, Pay-easy, bank transfer, boleto, SEPA debit) are paid on the same page:
the shopper's details are taken, the voucher or account details are shown, and the session stays
``open`` until the money arrives. Issuing a voucher (or submitting a debit) extends the session's
``expires_at`` to the voucher's deadline (or the debit's settlement date) in the same
transaction, so the session never expires while its voucher can still be paid; the voucher's own
expiry cancels it (``expired``). A listed method that cannot take the session's currency or
amount (konbini in USD) is not offered on the page.

Completing at most once. The page creates the payment unconfirmed, then *claims* the session
for it in a transaction that locks the session row: the claim is refused while the session's
current payment (``payment_id``) is anything but failed or canceled, so only one payment is ever
confirmed at a time and a double submit is shown the payment already under way. Only the
claimed payment is confirmed; a refused one is canceled (``duplicate``) without reaching the
acquirer. A failed payment frees the session for another try; after ``MAX_CARD_DECLINES`` failed
card payments the page takes no more cards (card testing through one link), its other methods stay.

``payment_id`` is the session's current payment; the API shows it as ``payment`` once the
session is complete (the payment that paid it). ``url`` is shown only while the session is open.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, insert, select, update

from openpse.domain import local_methods as local_rules
from openpse.domain.errors import CardDeclined, Conflict, DomainError, InvalidRequest, NotFound
from openpse.domain.ids import new_id
from openpse.domain.money import parse_amount, parse_currency
from openpse.domain.payments import Status
from openpse.logs import get_logger
from openpse.services import payments as svc_payments
from openpse.services.clock import merchant_now, offset_sql
from openpse.services.context import Caller, Services
from openpse.services.events import changed_fields, record_event
from openpse.storage.db import Tx
from openpse.storage.direct import direct
from openpse.storage.repos import list_page, load_scoped, update_versioned
from openpse.storage.rows import page_result, rfc3339, row_dict
from openpse.storage.tables import (
    checkout_sessions,
    merchants,
    payments,
    review_items,
)

__all__ = [
    "CHALLENGE_OUTCOMES",
    "Challenge",
    "PageSession",
    "PayResult",
    "card_attempts_exhausted",
    "check_form_nonce",
    "complete_challenge",
    "create_session",
    "expire_due_sessions",
    "expire_session",
    "form_nonce",
    "get_session",
    "list_sessions",
    "load_challenge",
    "load_page",
    "offered_methods",
    "page_url",
    "pay_session",
    "session_view",
    "success_redirect_url",
]

PAYMENT_METHOD_TYPES = ("card", "konbini", "pay_easy", "bank_transfer", "boleto", "sepa_debit")
LOCALES = ("ja", "en", "pt-BR", "auto")
STATUSES = ("open", "complete", "expired")
MIN_EXPIRES_IN_S = 1800
MAX_EXPIRES_IN_S = 7 * 86400
DEFAULT_EXPIRES_IN_S = 86400
MAX_URL_CHARS = 2048
EXPIRE_BATCH = 100
# A claimed payment still unconfirmed after this long was left by a crash between the claim
# and the confirmation: the next submit cancels it (``abandoned``) and starts afresh.
STALE_CLAIM_S = 120
# A page's form is accepted for this long after it was rendered.
FORM_NONCE_TTL_S = 86400
FORM_NONCE_SKEW_S = 60
# The session's current payment blocks a new one unless it ended without money moving.
RETRYABLE = frozenset({Status.FAILED, Status.CANCELED})
PAID = frozenset({Status.SUCCEEDED, Status.REQUIRES_CAPTURE})
CHALLENGE_OUTCOMES = ("succeed", "fail")
# Card testing through one payment link: after this many failed card payments (declined, or
# blocked by risk) the session's page stops taking cards (its local methods stay) and the
# operator gets a review item. A shopper with a genuinely declined card needs far fewer.
MAX_CARD_DECLINES = 5

log = get_logger("openpse.checkout")


# ---- views and validation -----------------------------------------------------------------

def session_view(row: dict[str, Any], url: str | None) -> dict[str, Any]:
    complete = row["status"] == "complete"
    return {
        "id": row["id"],
        "object": "checkout_session",
        "livemode": bool(row["livemode"]),
        "status": row["status"],
        "amount": row["amount"],
        "currency": row["currency"],
        "merchant_order_id": row["merchant_order_id"],
        "payment_method_types": list(row["payment_method_types"]),
        "success_url": row["success_url"],
        "cancel_url": row["cancel_url"],
        "locale": row["locale"],
        "customer": row["customer"],
        "metadata": row["metadata"] or {},
        "url": url if row["status"] == "open" else None,
        "payment": row["payment_id"] if complete else None,
        "expires_at": rfc3339(row["expires_at"]),
        "completed_at": rfc3339(row["completed_at"]),
        "created": rfc3339(row["created"]),
        "updated": rfc3339(row["updated"]),
        "version": row["version"],
    }


def page_url(svc: Services, caller: Caller | None, row: dict[str, Any]) -> str:
    return svc.public_url(caller, f"/pay/{row['id']}?token={row['page_token']}")


def _view(svc: Services, caller: Caller | None, row: dict[str, Any]) -> dict[str, Any]:
    return session_view(row, page_url(svc, caller, row))


def success_redirect_url(row: dict[str, Any]) -> str:
    url: str = row["success_url"]
    return f"{url}{'&' if '?' in url else '?'}session_id={row['id']}"


def offered_methods(session: dict[str, Any]) -> list[str]:
    """The session's methods that can take its currency and amount, in the merchant's order
    (cards no more once the session has had ``MAX_CARD_DECLINES`` failed card payments)."""
    return [k for k in session["payment_method_types"]
            if (k == "card" and not card_attempts_exhausted(session))
            or (k != "card" and local_rules.accepts(k, session["amount"], session["currency"]))]


def card_attempts_exhausted(session: dict[str, Any]) -> bool:
    """The session lists cards but its page takes no more of them (``MAX_CARD_DECLINES``)."""
    return "card" in session["payment_method_types"] and \
        int(session.get("card_declines") or 0) >= MAX_CARD_DECLINES


def _payment_method_types(value: Any) -> list[str]:
    param = "payment_method_types"
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{param} must be a non-empty array of payment method types, "
                             f"e.g. [\"card\"]", param=param)
    for i, kind in enumerate(value):
        if kind not in PAYMENT_METHOD_TYPES:
            raise InvalidRequest(f"{param}[{i}] must be one of {', '.join(PAYMENT_METHOD_TYPES)}"
                                 f"; got {kind!r}", param=f"{param}[{i}]")
        if kind in value[:i]:
            raise InvalidRequest(f"{param}[{i}]: {kind!r} is listed twice", param=f"{param}[{i}]")
    return list(value)


def _absolute_url(value: Any, param: str) -> str:
    ok = isinstance(value, str) and 0 < len(value) <= MAX_URL_CHARS and value.isprintable() \
        and " " not in value
    if ok:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    if not ok:
        raise InvalidRequest(f"{param} must be an absolute http(s) URL of at most {MAX_URL_CHARS}"
                             " characters, such as https://shop.example/thanks", param=param)
    return str(value)


def _locale(value: Any) -> str | None:
    if value is None or value in LOCALES:
        return value
    raise InvalidRequest(f"locale must be one of {', '.join(LOCALES)}", param="locale")


def _expires_in(value: Any) -> int:
    if value is None:
        return DEFAULT_EXPIRES_IN_S
    if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_EXPIRES_IN_S <= value <= MAX_EXPIRES_IN_S):
        raise InvalidRequest(f"expires_in_seconds must be an integer from {MIN_EXPIRES_IN_S} "
                             f"(30 minutes) to {MAX_EXPIRES_IN_S} (7 days)",
                             param="expires_in_seconds")
    return value


# ---- merchant API -------------------------------------------------------------------------

async def create_session(svc: Services, caller: Caller, p: dict[str, Any]) -> dict[str, Any]:
    if caller.resume_resource_id:  # a retry of a request whose first attempt crashed
        return await get_session(svc, caller, caller.resume_resource_id)
    currency = parse_currency(p.get("currency"))
    amount = parse_amount(p.get("amount"), currency)
    session_id = new_id("cs_")
    row: dict[str, Any] = {
        "id": session_id, "merchant_id": caller.merchant_id, "livemode": caller.livemode,
        "status": "open", "amount": amount, "currency": currency,
        "merchant_order_id": p.get("merchant_order_id"),
        "payment_method_types": _payment_method_types(p.get("payment_method_types")),
        "success_url": _absolute_url(p.get("success_url"), "success_url"),
        "cancel_url": _absolute_url(p.get("cancel_url"), "cancel_url"),
        "locale": _locale(p.get("locale")), "customer": p.get("customer"),
        "metadata": svc_payments.validate_metadata(p.get("metadata")),
        "payment_id": None, "completed_at": None, "version": 1,
    }
    expires_in_s = _expires_in(p.get("expires_in_seconds"))
    now = svc.now()
    # The request's claim, written in this transaction (the route's claim is deferred into
    # it), records the session at once: a retry after a crash finds it.
    caller.plan_resource(session_id)
    async with svc.db.transaction() as tx:
        clock = await merchant_now(svc, tx, caller.merchant_id, caller.livemode)
        row.update(page_token=svc.page_token(session_id), expires_at=clock + expires_in_s,
                   created=now, updated=now)
        await direct(tx).insert(checkout_sessions, row)
        await svc_payments._recovery_point(tx, caller, session_id)  # if not recorded yet
        view = _view(svc, caller, row)
        await caller.store_answer(tx, 201, view)  # the answer commits with the session
    return view


async def get_session(svc: Services, caller: Caller, session_id: str) -> dict[str, Any]:
    async with svc.db.read() as conn:
        row = await load_scoped(conn, checkout_sessions, session_id,
                                merchant_id=caller.merchant_id, livemode=caller.livemode,
                                what="checkout session")
    return _view(svc, caller, row)


async def list_sessions(svc: Services, caller: Caller, *, status: str | None,
                        merchant_order_id: str | None, limit: int, cursor: str | None,
                        created_gte: int | None, created_lt: int | None) -> dict[str, Any]:
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}", param="status")
    async with svc.db.read() as conn:
        rows = [_view(svc, caller, r) for r in await list_page(
            conn, checkout_sessions, merchant_id=caller.merchant_id, livemode=caller.livemode,
            equal={"status": status, "merchant_order_id": merchant_order_id}, limit=limit,
            cursor=cursor, created_gte=created_gte, created_lt=created_lt)]
    return page_result(rows, limit)


async def expire_session(svc: Services, caller: Caller, session_id: str) -> dict[str, Any]:
    now = svc.now()
    async with svc.db.transaction() as tx:
        row = await load_scoped(tx, checkout_sessions, session_id,
                                merchant_id=caller.merchant_id, livemode=caller.livemode,
                                lock=True, what="checkout session")
        if row["status"] != "open":
            raise Conflict(f"checkout session {session_id} is {row['status']}: only an open "
                           "session can be expired", code="session_invalid_state")
        new = await update_versioned(tx, checkout_sessions, row, {"status": "expired"}, now=now)
        await _session_event(tx, caller, row, new, "checkout.session.expired", now)
    await _abandon_current_payment(svc, caller, new)
    return _view(svc, caller, new)


async def _session_event(tx: Tx, caller: Caller | None, before: dict[str, Any],
                         after: dict[str, Any], etype: str, now: int) -> None:
    # ``url`` is left out of both sides: it needs the request's base, and is null once closed.
    old, new = session_view(before, None), session_view(after, None)
    await record_event(tx, caller=caller, merchant_id=after["merchant_id"],
                       livemode=bool(after["livemode"]), type=etype, obj=new,
                       previous=changed_fields(old, new), now=now)


async def _abandon_current_payment(svc: Services, caller: Caller | None,
                                   session: dict[str, Any], *, by_deadline: bool = False) -> None:
    """After expiry: cancel a payment still waiting for the shopper, so it cannot succeed late.

    One already at the acquirer (``processing``) is left to finish; if it succeeds, the hook
    records it for review. At the session's deadline (``by_deadline``), a voucher with a
    deadline of its own is left to it: it expires as ``expired`` by the payments' job.
    """
    if not session["payment_id"]:
        return
    async with svc.db.read() as conn:
        found = (await conn.execute(select(payments.c.status, payments.c.expires_at).where(
            payments.c.id == session["payment_id"]))).first()
    if found is None or found.status not in (Status.REQUIRES_CONFIRMATION,
                                             Status.REQUIRES_ACTION):
        return
    if by_deadline and found.expires_at is not None:
        return
    scope = caller or Caller(session["merchant_id"], bool(session["livemode"]))
    try:
        await svc_payments.cancel_payment(svc, scope, session["payment_id"], "abandoned")
    except DomainError as exc:  # it moved on meanwhile: nothing to cancel
        log.info("checkout payment not canceled", payment=session["payment_id"], code=exc.code)


# ---- completion with the payment (same transaction) ---------------------------------------

async def complete_on_payment(tx: Tx, caller: Caller | None, payment: dict[str, Any],
                              now: int) -> None:
    """A ``PAYMENT_HOOKS`` hook: the session completes when its payment is paid (or authorized),
    and stays open while its voucher can be paid or its debit is being settled."""
    session_id = payment.get("checkout_session_id")
    if session_id and payment["status"] in (Status.REQUIRES_ACTION, Status.PROCESSING):
        await _hold_open_for(tx, payment, now)
        return
    if session_id and payment["status"] == Status.FAILED and \
            payment["payment_method_type"] == "card":
        await _count_card_decline(tx, payment, now)
        return
    if not session_id or payment["status"] not in PAID:
        return
    row = await load_scoped(tx, checkout_sessions, session_id, merchant_id=payment["merchant_id"],
                            livemode=bool(payment["livemode"]), lock=True,
                            what="checkout session")
    if row["status"] == "complete" and row["payment_id"] == payment["id"]:
        return  # authorized earlier, captured now: completed already
    if row["status"] != "open":
        # Money moved for a session that cannot take it (expired, or paid by another payment):
        # never overwrite the final state; a person decides (refund, or fulfil anyway).
        await tx.execute(insert(review_items).values(
            id=new_id("rev_"), merchant_id=row["merchant_id"], livemode=row["livemode"],
            object_id=payment["id"], kind="checkout_session_paid_when_closed",
            details={"checkout_session": row["id"], "session_status": row["status"],
                     "session_payment": row["payment_id"], "payment_status": payment["status"]},
            status="open", created=now))
        log.warning("payment succeeded for a closed checkout session", payment=payment["id"],
                    checkout_session=row["id"], session_status=row["status"])
        return
    new = await update_versioned(tx, checkout_sessions, row, {
        "status": "complete", "payment_id": payment["id"], "completed_at": now}, now=now)
    await _session_event(tx, caller, row, new, "checkout.session.completed", now)


async def _count_card_decline(tx: Tx, payment: dict[str, Any], now: int) -> None:
    """One more failed card payment for the payment's session (a counter, not a change the
    merchant sees: no version, no event); at the limit, a review item for card testing."""
    t = checkout_sessions
    count = (await tx.execute(update(t).where(t.c.id == payment["checkout_session_id"]).values(
        card_declines=t.c.card_declines + 1).returning(t.c.card_declines))).scalar()
    if count != MAX_CARD_DECLINES:
        return
    await tx.execute(insert(review_items).values(
        id=new_id("rev_"), merchant_id=payment["merchant_id"], livemode=payment["livemode"],
        object_id=payment["checkout_session_id"], kind="checkout_card_declines_exhausted",
        details={"checkout_session": payment["checkout_session_id"],
                 "card_declines": count, "last_payment": payment["id"],
                 "last_failure_code": payment["failure_code"],
                 "note": "the hosted page takes no more cards for this session: a run of "
                         "declines on one payment link is how card testing looks"},
        status="open", created=now))
    log.warning("checkout session stops taking cards after repeated declines",
                checkout_session=payment["checkout_session_id"], card_declines=count)


async def _hold_open_for(tx: Tx, payment: dict[str, Any], now: int) -> None:
    deadline = payment.get("expires_at") or payment.get("settles_at")
    if not deadline:
        return  # 3-D Secure, or a card at the acquirer: no deadline of its own
    row = await load_scoped(tx, checkout_sessions, payment["checkout_session_id"],
                            merchant_id=payment["merchant_id"],
                            livemode=bool(payment["livemode"]), lock=True,
                            what="checkout session")
    if row["status"] == "open" and row["payment_id"] == payment["id"] and \
            row["expires_at"] < deadline:
        await update_versioned(tx, checkout_sessions, row, {"expires_at": deadline}, now=now)


if complete_on_payment not in svc_payments.PAYMENT_HOOKS:
    svc_payments.PAYMENT_HOOKS.append(complete_on_payment)


# ---- expiry job ---------------------------------------------------------------------------

async def expire_due_sessions(svc: Services, now_s: int) -> int:
    """Expire open sessions past ``expires_at``; returns how many this call expired.

    Each session expires in its own transaction with a conditional update (``status='open'``),
    so of two workers racing for one session exactly one expires it and writes the event.
    """
    t = checkout_sessions
    offset = offset_sql(t.c.livemode)  # the merchant's clock (a sandbox test clock)
    async with svc.db.read() as conn:
        due = (await conn.execute(
            select(t.c.id, offset.label("offset_s"))
            .select_from(t.join(merchants, merchants.c.id == t.c.merchant_id))
            .where(t.c.status == "open", t.c.expires_at <= now_s + offset)
            .order_by(t.c.expires_at).limit(EXPIRE_BATCH))).all()
    done = 0
    for session_id, offset_s in due:
        clock = now_s + int(offset_s or 0)  # offsets only grow: still past, if it was
        async with svc.db.transaction() as tx:
            before = row_dict((await tx.execute(select(t).where(t.c.id == session_id))).one())
            res = await tx.execute(update(t).where(and_(
                t.c.id == session_id, t.c.status == "open", t.c.expires_at <= clock))
                .values(status="expired", updated=now_s, version=t.c.version + 1))
            if res.rowcount != 1:
                continue  # another worker (or the merchant, or a payment) got there first
            after = row_dict((await tx.execute(select(t).where(t.c.id == session_id))).one())
            await _session_event(tx, None, {**before, "status": "open"}, after,
                                 "checkout.session.expired", now_s)
        done += 1
        await _abandon_current_payment(svc, None, after, by_deadline=True)
    return done


# ---- the hosted page (authenticated by the page token, not by a signed request) -----------

@dataclass(frozen=True)
class PageSession:
    session: dict[str, Any]
    merchant_name: str
    payment: dict[str, Any] | None  # the session's current payment (the latest attempt)
    now: int  # the merchant's clock

    @property
    def payable(self) -> bool:
        return self.session["status"] == "open" and self.session["expires_at"] > self.now


@dataclass(frozen=True)
class PayResult:
    """What a submit of the page came to. ``outcome`` is one of:

    ``succeeded`` (go to success_url), ``requires_action`` (go to ``redirect_url``),
    ``pending`` (a local method's voucher, transfer details or debit: back to the page, which
    shows them),
    ``declined`` / ``invalid`` (show the form again with ``message``), ``in_progress`` (the
    session's current payment is under way: show it), ``closed`` (complete or expired).
    """

    outcome: str
    page: PageSession
    payment: dict[str, Any] | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    redirect_url: str | None = None


def _token_ok(given: str | None, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


async def load_page(svc: Services, session_id: str, token: str | None) -> PageSession:
    """The session behind a hosted page; ``NotFound`` unless ``token`` is its page token."""
    async with svc.db.read() as conn:
        found = (await conn.execute(select(checkout_sessions).where(
            checkout_sessions.c.id == session_id))).first()
        if found is None or not _token_ok(token, found.page_token):
            raise NotFound("no such checkout page", code="resource_missing")
        row = row_dict(found)
        merchant = (await conn.execute(select(
            merchants.c.name, merchants.c.sandbox_clock_offset_s).where(
            merchants.c.id == row["merchant_id"]))).first()
        payment = None
        if row["payment_id"]:
            payment = row_dict((await conn.execute(select(payments).where(
                payments.c.id == row["payment_id"]))).one())
    offset = 0 if merchant is None or row["livemode"] else int(merchant.sandbox_clock_offset_s)
    return PageSession(row, merchant.name if merchant else "", payment, svc.now() + offset)


def form_nonce(svc: Services, session_id: str, now: int) -> str:
    """A fresh per-render value for the form: the time, randomness and a keyed MAC of both."""
    rand = secrets.token_urlsafe(12)
    return f"{now}.{rand}.{svc.page_token(f'form:{session_id}:{now}:{rand}')[:32]}"


def check_form_nonce(svc: Services, session_id: str, nonce: str | None, now: int) -> bool:
    parts = (nonce or "").split(".")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return False
    issued, rand, mac = int(parts[0]), parts[1], parts[2]
    if not now - FORM_NONCE_TTL_S <= issued <= now + FORM_NONCE_SKEW_S:
        return False
    return _token_ok(mac, svc.page_token(f"form:{session_id}:{issued}:{rand}")[:32])


def _page_caller(page: PageSession, base_url: str | None, request_id: str | None) -> Caller:
    s = page.session
    return Caller(s["merchant_id"], bool(s["livemode"]), request_id=request_id, base_url=base_url)


def _blocking(payment: dict[str, Any] | None) -> bool:
    return payment is not None and payment["status"] not in RETRYABLE


def _stale(payment: dict[str, Any], now: int) -> bool:
    return payment["status"] == Status.REQUIRES_CONFIRMATION and \
        payment["updated"] <= now - STALE_CLAIM_S


@dataclass(frozen=True)
class LocalMethodForm:
    """What the page's form for a local method carries (the shopper's details)."""

    method: str
    customer: dict[str, str]
    details: dict[str, Any]
    device: dict[str, str]
    mandate_accepted: bool = False


async def pay_session(svc: Services, session_id: str, token: str | None,
                      card: svc_payments.CardInput | None, *, base_url: str | None,
                      request_id: str | None, local: LocalMethodForm | None = None) -> PayResult:
    """A submit of the hosted page (a card, or a local method's form): at most one payment ever
    succeeds."""
    page = await load_page(svc, session_id, token)
    caller = _page_caller(page, base_url, request_id)
    if page.payment is not None and _stale(page.payment, svc.now()):
        await _cancel_quietly(svc, caller, page.payment["id"], "abandoned")
        page = await load_page(svc, session_id, token)
    early = _refusal(page)
    if early is not None:
        return early
    s = page.session
    method = local.method if local is not None else "card"
    if method == "card" and card_attempts_exhausted(s):
        return PayResult("invalid", page, code="card_attempts_exhausted",
                         message=f"this checkout has had {MAX_CARD_DECLINES} declined card "
                                 "payments and takes no more cards")
    if method not in offered_methods(s):
        return PayResult("invalid", page, code="payment_method_unavailable",
                         message=f"{method} payments are not accepted for this checkout")
    if local is not None and method == "sepa_debit" and not local.mandate_accepted:
        return PayResult("invalid", page, code="mandate_not_accepted", param="mandate",
                         message="the SEPA Direct Debit mandate must be accepted")
    pm: dict[str, Any] = {"type": method}
    customer = dict(s["customer"] or {})
    params: dict[str, Any] = {}
    if local is not None:
        if local.details:
            pm[method] = local.details
        customer.update(local.customer)
        params["device"] = local.device or None
    try:
        created, _ = await svc_payments.create_payment(svc, caller, {
            "amount": s["amount"], "currency": s["currency"],
            "merchant_order_id": s["merchant_order_id"], "checkout_session_id": s["id"],
            "payment_method": pm, "customer": customer or None,
            "return_url": page_url(svc, caller, s), "confirm": False, **params}, card)
    except InvalidRequest as exc:  # the card's fields, or the shopper's details
        return PayResult("invalid", page, code=exc.code, message=exc.message, param=exc.param)
    refused = await _claim(svc, s["id"], created["id"])
    if refused is not None:  # another submit is ahead of us: this payment never runs
        outcome, ahead = refused
        # Ahead of us and under way, or already paid (a fast winner closes the session before
        # a concurrent submit claims): a duplicate. Closed otherwise (expired): abandoned.
        paid_by_other = ahead is not None and ahead["status"] in PAID
        await _cancel_quietly(svc, caller, created["id"],
                              "duplicate" if outcome == "in_progress" or paid_by_other
                              else "abandoned")
        page = await load_page(svc, session_id, token)
        return PayResult(outcome, page, payment=page.payment)
    return await _confirm(svc, caller, s["id"], token, created["id"], card)


def _refusal(page: PageSession) -> PayResult | None:
    if not page.payable:
        return PayResult("closed", page, payment=page.payment)
    if _blocking(page.payment):
        return PayResult("in_progress", page, payment=page.payment)
    return None


async def _claim(svc: Services, session_id: str, payment_id: str
                 ) -> tuple[str, dict[str, Any] | None] | None:
    """Make ``payment_id`` the session's current payment, unless one is under way or paid
    (then returns why not, ``in_progress`` or ``closed``, with the session's current
    payment)."""
    async with svc.db.transaction() as tx:
        scope = (await tx.execute(select(checkout_sessions.c.merchant_id,
                                         checkout_sessions.c.livemode).where(
            checkout_sessions.c.id == session_id))).one()  # sessions are never deleted
        row = await load_scoped(tx, checkout_sessions, session_id,
                                merchant_id=scope.merchant_id, livemode=scope.livemode,
                                lock=True, what="checkout session")
        current = None
        if row["payment_id"]:
            current = row_dict((await tx.execute(select(payments).where(
                payments.c.id == row["payment_id"]))).one())
        clock = await merchant_now(svc, tx, scope.merchant_id, bool(scope.livemode))
        page = PageSession(row, "", current, clock)
        refusal = _refusal(page)
        if refusal is not None:
            return refusal.outcome, current
        await update_versioned(tx, checkout_sessions, row, {"payment_id": payment_id},
                               now=svc.now())
    return None


async def _confirm(svc: Services, caller: Caller, session_id: str, token: str | None,
                   payment_id: str, card: svc_payments.CardInput | None) -> PayResult:
    cvc = card.cvc if card is not None and isinstance(card.cvc, str) else None
    try:
        view = await svc_payments.confirm_payment(svc, caller, payment_id, cvc=cvc)
    except DomainError as exc:  # a decline; or e.g. canceled by the merchant meanwhile
        page = await load_page(svc, session_id, token)
        return PayResult("declined", page, payment=page.payment, code=exc.code,
                         message=exc.message)
    page = await load_page(svc, session_id, token)
    if view["status"] in PAID:
        return PayResult("succeeded", page, payment=view,
                         redirect_url=success_redirect_url(page.session))
    if view["status"] == Status.REQUIRES_ACTION and (view["next_action"] or {}).get("url"):
        return PayResult("requires_action", page, payment=view,
                         redirect_url=view["next_action"]["url"])
    if view["payment_method"] and view["payment_method"]["type"] != "card":
        # A voucher, transfer details or a submitted debit: the page shows them (GET after POST,
        # so reloading never submits again).
        return PayResult("pending", page, payment=view, redirect_url=page_url(svc, caller,
                                                                             page.session))
    return PayResult("in_progress", page, payment=view)


async def _cancel_quietly(svc: Services, caller: Caller, payment_id: str, reason: str) -> None:
    try:
        await svc_payments.cancel_payment(svc, caller, payment_id, reason)
    except DomainError as exc:
        log.info("checkout payment not canceled", payment=payment_id, code=exc.code)


# ---- the sandbox 3-D Secure challenge page ------------------------------------------------

@dataclass(frozen=True)
class Challenge:
    payment: dict[str, Any]
    merchant_name: str

    @property
    def pending(self) -> bool:
        return self.payment["status"] == Status.REQUIRES_ACTION and (
            self.payment["next_action"] or {}).get("type") == "redirect_to_url"

    @property
    def return_url(self) -> str | None:
        url = (self.payment["next_action"] or {}).get("return_url") or self.payment["return_url"]
        return str(url) if url else None


async def load_challenge(svc: Services, payment_id: str, token: str | None) -> Challenge:
    """The sandbox payment behind a challenge page; ``NotFound`` for a bad token or live mode."""
    if not _token_ok(token, svc.page_token(payment_id)):
        raise NotFound("no such authentication page", code="resource_missing")
    async with svc.db.read() as conn:
        found = (await conn.execute(select(payments).where(payments.c.id == payment_id))).first()
        if found is None or found.livemode:
            raise NotFound("no such authentication page", code="resource_missing")
        name = (await conn.execute(select(merchants.c.name).where(
            merchants.c.id == found.merchant_id))).scalar()
    return Challenge(row_dict(found), name or "")


async def complete_challenge(svc: Services, payment_id: str, token: str | None, outcome: str,
                             *, base_url: str | None, request_id: str | None
                             ) -> tuple[Challenge, str | None]:
    """The shopper's answer to the challenge. Returns the challenge as it was (for its
    ``return_url``) and the failure message, if the payment failed."""
    if outcome not in CHALLENGE_OUTCOMES:
        raise InvalidRequest("outcome must be succeed or fail", param="outcome")
    challenge = await load_challenge(svc, payment_id, token)
    p = challenge.payment
    caller = Caller(p["merchant_id"], False, request_id=request_id, base_url=base_url)
    message = None
    try:
        await svc_payments.complete_3ds(svc, caller, payment_id, outcome)
    except CardDeclined as exc:
        message = exc.message
    except Conflict:  # answered already (a double click): show where it stands
        pass
    return challenge, message
