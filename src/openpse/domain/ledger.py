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
==========================  ======================================================================

The memo pair records authorisations (they are promises, not money) so that authorise, capture
and release each post a balanced journal the finance team can follow.
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
    "capture",
    "check_balanced",
    "fee_for",
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
