"""Bookkeeping rules of domain/ledger.py: fees (integer, half-up, capped), and every journal
(authorisation, capture, release, refund, reversal) balanced per currency."""

from __future__ import annotations

from collections import defaultdict

import pytest

from openpse.domain import ledger
from openpse.domain.ledger import Posting, check_balanced, fee_for

M = "mch_test"


def _sums(postings: list[Posting]) -> dict[tuple[str | None, str], int]:
    out: dict[tuple[str | None, str], int] = defaultdict(int)
    for p in postings:
        out[(p.owner, p.kind)] += p.amount
    return dict(out)


@pytest.mark.parametrize(("currency", "amount", "fee"), [
    ("USD", 1000, 29 + 30),  # 2.9 % + 30
    ("USD", 500, 15 + 30),  # 14.5 rounds half-up to 15
    ("USD", 150, 4 + 30),  # 4.35 rounds down
    ("USD", 10, 10),  # 0.29 + 30 is more than the amount: capped at the amount
    ("JPY", 1000, 29),  # no fixed part in JPY
    ("JPY", 1, 0),  # 0.029 rounds to nothing
    ("EUR", 10_000, 290 + 25),
    ("KWD", 10_000, 290),  # no fixed part defined for this currency
])
def test_default_card_fee(currency: str, amount: int, fee: int) -> None:
    got = fee_for(None, "card", currency, amount)
    assert got == fee and isinstance(got, int)


def test_fee_from_a_merchant_plan_and_unknown_methods():
    plan = {"card": {"percent_bps": 100, "fixed": {"USD": 10}}}
    assert fee_for(plan, "card", "USD", 1050) == 11 + 10  # 10.5 half-up
    assert fee_for(plan, "konbini", "JPY", 1000) == 28 + 190  # falls back to the default plan
    assert fee_for(None, "nonexistent", "USD", 1000) == 0
    assert fee_for({"card": {"percent_bps": 0}}, "card", "USD", 1000) == 0


def test_fee_is_never_negative_nor_above_the_amount():
    for amount in (0, 1, 29, 31, 99, 12345, 10**12):
        fee = fee_for(None, "card", "USD", amount)
        assert 0 <= fee <= amount


def test_authorization_and_release_balance_and_cancel_out():
    auth = ledger.authorization(M, "USD", 1000)
    rel = ledger.release(M, "USD", 1000)
    check_balanced(auth)
    check_balanced(rel)
    total = _sums(auth + rel)
    assert all(v == 0 for v in total.values())


@pytest.mark.parametrize("held", [True, False])
def test_capture_balances_and_splits_the_fee(held: bool) -> None:
    entries = ledger.capture(M, "USD", 1000, 59, held=held)
    check_balanced(entries)
    s = _sums(entries)
    assert s[(M, "acquirer_receivable")] == 1000
    assert s[(M, "merchant_pending")] == -(1000 - 59)
    assert s[(M, "platform_fees")] == -59  # one fee account per merchant
    if held:
        assert s[(M, "authorization_holds")] == 1000 and s[(M, "card_authorizations")] == -1000


def test_capture_without_fee_has_no_fee_posting():
    entries = ledger.capture(M, "JPY", 1, 0, held=False)
    check_balanced(entries)
    assert all(p.kind != "platform_fees" for p in entries)


def test_partial_capture_with_release_of_the_rest():
    entries = ledger.authorization(M, "USD", 1000)
    entries += ledger.capture(M, "USD", 600, 47, held=True) + ledger.release(M, "USD", 400)
    check_balanced(entries)
    s = _sums(entries)
    assert s[(M, "card_authorizations")] == 0 and s[(M, "authorization_holds")] == 0
    assert s[(M, "acquirer_receivable")] == 600


def test_refund_and_its_reversal():
    ref = ledger.refund(M, "USD", 300)
    check_balanced(ref)
    s = _sums(ref)
    assert s[(M, "merchant_pending")] == 300 and s[(M, "acquirer_receivable")] == -300
    rev = ledger.refund_reversal(M, "USD", 300)
    check_balanced(rev)
    assert all(v == 0 for v in _sums(ref + rev).values())


def test_full_lifecycle_leaves_only_the_fee_with_the_merchant():
    entries = (ledger.authorization(M, "USD", 1000) + ledger.capture(M, "USD", 1000, 59, held=True)
               + ledger.refund(M, "USD", 1000))
    s = _sums(entries)
    assert s[(M, "merchant_pending")] == 59  # the merchant owes the fee back
    assert s[(M, "acquirer_receivable")] == 0
    assert sum(s.values()) == 0


def test_check_balanced_rejects_unbalanced_journals():
    with pytest.raises(ValueError, match="unbalanced"):
        check_balanced([Posting(M, "a", "USD", 100), Posting(M, "b", "USD", -99)])
    # balanced in total but not per currency
    with pytest.raises(ValueError, match="unbalanced"):
        check_balanced([Posting(M, "a", "USD", 100), Posting(M, "b", "EUR", -100)])
    with pytest.raises(ValueError, match="needs postings"):
        check_balanced([])


@pytest.mark.parametrize("bad", [100.0, 0.5, True, "100", None])
def test_check_balanced_rejects_non_integer_amounts(bad: object) -> None:
    with pytest.raises(TypeError, match="int minor units"):
        check_balanced([Posting(M, "a", "USD", bad), Posting(M, "b", "USD", -100)])  # type: ignore[arg-type]


def test_check_balanced_accepts_multi_currency_journals():
    check_balanced([Posting(M, "a", "USD", 100), Posting(M, "b", "USD", -100),
                    Posting(M, "a", "JPY", 5), Posting(None, "c", "JPY", -5)])
