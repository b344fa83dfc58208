"""Double-entry bookkeeping: which accounts move when money moves, and the balance invariant.

Every journal is a list of postings ``(owner, account kind, currency, amount)`` with debits
positive and credits negative; per currency they sum to zero. Accounts:

==========================  ======================================================================
``card_authorizations``     memo asset: amounts the shopper's bank has put on hold for us
``authorization_holds``     memo liability: the other side of that hold
``acquirer_receivable``     asset: captured money the acquirer owes us
``merchant_pending``        liability: captured money we owe the merchant, not yet settled
``merchant_available``      liability: settled money the merchant may be paid out
``platform_fees``           revenue: fees we charged (one account per merchant, so that no
                            single row is shared by every merchant's captures)
``refunds_payable``         liability: refunds accepted but not yet paid back to the shopper
``direct_debits_submitted`` memo asset: SEPA debits sent to the shopper's bank, not yet confirmed
``direct_debit_holds``      memo liability: the other side of that memo
``shopper_funds_held``      liability: part payments (bank transfers) of a payment not yet fully
                            paid: the shopper's money until the payment completes
``overpayments_payable``    liability: money received beyond a payment's amount, owed back to the
                            shopper (refundable)
``unapplied_funds``         liability (suspense): money that arrived for a payment that could no
                            longer take it (expired, canceled); held for review and return
==========================  ======================================================================

The memo pairs record authorisations and submitted debits (promises, not money) so that
authorise, capture, release, submit, settle and return each post a balanced journal the finance
team can follow. Money received for asynchronous methods (vouchers, transfers, debits) is owed
to us by the collecting network until it settles with us: ``acquirer_receivable`` as for cards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from openpse.domain.money import percent_of

__all__ = [
    "DEFAULT_PRICING",
    "PLATFORM",
    "Posting",
    "authorization",
    "bank_refund_accepted",
    "bank_refund_failed",
    "bank_refund_paid",
    "capture",
    "check_balanced",
    "debit_failed",
    "debit_settled",
    "debit_submitted",
    "fee_for",
    "funds_completing",
    "move",
    "refund",
    "refund_reversal",
    "release",
]

PLATFORM = None  # owner of platform accounts (fees)

# Default pricing: percent in basis points plus a fixed part per currency (minor units).
DEFAULT_PRICING: dict[str, dict[str, Any]] = {
    "card": {"percent_bps": 290, "fixed": {"USD": 30, "EUR": 25, "GBP": 20, "JPY": 0}},
    "konbini": {"percent_bps": 275, "fixed": {"JPY": 190}},
    "pay_easy": {"percent_bps": 275, "fixed": {"JPY": 190}},
    "bank_transfer": {"percent_bps": 100, "fixed": {}},
    "boleto": {"percent_bps": 350, "fixed": {"BRL": 345}},
    "sepa_debit": {"percent_bps": 80, "fixed": {"EUR": 25}},
}


@dataclass(frozen=True)
class Posting:
    owner: str | None  # merchant id, or None for a platform account
    kind: str
    currency: str
    amount: int  # > 0 debit, < 0 credit


def fee_for(pricing: dict[str, Any] | None, method: str, currency: str, amount: int) -> int:
    """The fee on a captured ``amount``: percent (half-up) plus fixed, never above the amount."""
    plan = (pricing or {}).get(method) or DEFAULT_PRICING.get(method) or {"percent_bps": 0}
    fee = percent_of(amount, int(plan.get("percent_bps", 0)))
    fee += int((plan.get("fixed") or {}).get(currency, 0))
    return max(0, min(fee, amount))


def authorization(merchant: str, currency: str, amount: int) -> list[Posting]:
    return [
        Posting(merchant, "card_authorizations", currency, amount),
        Posting(merchant, "authorization_holds", currency, -amount),
    ]


def release(merchant: str, currency: str, amount: int) -> list[Posting]:
    """The hold (or what is left of it) goes away without money moving."""
    return [
        Posting(merchant, "authorization_holds", currency, amount),
        Posting(merchant, "card_authorizations", currency, -amount),
    ]


def capture(merchant: str, currency: str, amount: int, fee: int, *, held: bool) -> list[Posting]:
    """Money is taken: the acquirer owes us ``amount``; we owe the merchant ``amount - fee``."""
    out = release(merchant, currency, amount) if held else []
    out += [Posting(merchant, "acquirer_receivable", currency, amount)]
    out += [Posting(merchant, "merchant_pending", currency, -(amount - fee))]
    if fee:
        out += [Posting(merchant, "platform_fees", currency, -fee)]
    return out


def refund(merchant: str, currency: str, amount: int) -> list[Posting]:
    """Money goes back to the shopper out of the merchant's balance (fees are not returned)."""
    return [
        Posting(merchant, "merchant_pending", currency, amount),
        Posting(merchant, "acquirer_receivable", currency, -amount),
    ]


def refund_reversal(merchant: str, currency: str, amount: int) -> list[Posting]:
    """A refund that failed after it was booked: the money is the merchant's again."""
    return [Posting(p.owner, p.kind, p.currency, -p.amount) for p in refund(merchant, currency,
                                                                             amount)]


def check_balanced(postings: Iterable[Posting]) -> None:
    """Raise unless debits equal credits in every currency (runs under ``python -O`` too)."""
    sums: dict[str, int] = defaultdict(int)
    count = 0
    for p in postings:
        if not isinstance(p.amount, int) or isinstance(p.amount, bool):
            raise TypeError(f"posting amount must be int minor units, got {p.amount!r}")
        sums[p.currency] += p.amount
        count += 1
    if count == 0:
        raise ValueError("a journal needs postings")
    bad = {c: s for c, s in sums.items() if s != 0}
    if bad:
        raise ValueError(f"unbalanced journal, per-currency sums: {bad}")


# ---- asynchronous methods (vouchers, transfers, debits) and refunds by bank transfer ----------

def move(owner: str | None, currency: str, amount: int, debit: str, credit: str) -> list[Posting]:
    """``amount`` from the ``credit`` account to the ``debit`` account (one debit, one credit)."""
    if amount <= 0:
        raise ValueError(f"a move needs a positive amount, got {amount}")
    return [Posting(owner, debit, currency, amount), Posting(owner, credit, currency, -amount)]


def funds_completing(merchant: str, currency: str, *, incoming: int, held: int, amount: int,
                     fee: int) -> list[Posting]:
    """The transfer that completes a payment: ``incoming`` arrives, ``held`` part payments are
    applied; the merchant is owed ``amount - fee`` and the rest is owed back to the shopper."""
    excess = incoming + held - amount
    if excess < 0 or incoming <= 0 or held < 0:
        raise ValueError(f"funds do not complete the payment: {incoming} + {held} < {amount}")
    out = [Posting(merchant, "acquirer_receivable", currency, incoming)]
    if held:
        out.append(Posting(merchant, "shopper_funds_held", currency, held))
    out.append(Posting(merchant, "merchant_pending", currency, -(amount - fee)))
    if fee:
        out.append(Posting(merchant, "platform_fees", currency, -fee))
    if excess:
        out.append(Posting(merchant, "overpayments_payable", currency, -excess))
    return out


def debit_submitted(merchant: str, currency: str, amount: int) -> list[Posting]:
    return move(merchant, currency, amount, "direct_debits_submitted", "direct_debit_holds")


def debit_failed(merchant: str, currency: str, amount: int) -> list[Posting]:
    """The shopper's bank returned the debit: the memo is reversed, no money moved."""
    return move(merchant, currency, amount, "direct_debit_holds", "direct_debits_submitted")


def debit_settled(merchant: str, currency: str, amount: int, fee: int) -> list[Posting]:
    return debit_failed(merchant, currency, amount) + capture(merchant, currency, amount, fee,
                                                              held=False)


# Refunds by bank transfer are booked when accepted (the money stops being the merchant's) and
# paid out later; ``source`` is where the money comes from: the merchant's balance, or an
# over-payment the shopper is owed anyway.
_REFUND_SOURCES = {"payment": "merchant_pending", "overpayment": "overpayments_payable"}


def bank_refund_accepted(merchant: str, currency: str, amount: int,
                         source: str = "payment") -> list[Posting]:
    return move(merchant, currency, amount, _REFUND_SOURCES[source], "refunds_payable")


def bank_refund_paid(merchant: str, currency: str, amount: int) -> list[Posting]:
    return move(merchant, currency, amount, "refunds_payable", "acquirer_receivable")


def bank_refund_failed(merchant: str, currency: str, amount: int,
                       source: str = "payment") -> list[Posting]:
    return move(merchant, currency, amount, "refunds_payable", _REFUND_SOURCES[source])
