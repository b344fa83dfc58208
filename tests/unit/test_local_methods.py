"""The pure rules of the local payment methods (domain.local_methods, domain.bank_details) and
their ledger journals: validation with the offending ``param``, check digits, deadlines, the
sandbox issuer's formats, and balanced postings."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openpse.domain import bank_details as bank
from openpse.domain import ledger
from openpse.domain import local_methods as lm
from openpse.domain.errors import InvalidRequest

GOOD_IBAN = "DE89370400440532013000"
KONBINI_CUSTOMER = {"name": "山田 花子", "email": "hanako@example.jp"}
NOW = int(dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC).timestamp())  # 12:00 JST


def _err(fn: Any, *args: Any, **kw: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        fn(*args, **kw)
    return info.value


# ---- IBAN ---------------------------------------------------------------------------------

@pytest.mark.parametrize("iban", [
    GOOD_IBAN, "DE89 3704 0044 0532 0130 00", "de89370400440532013000", "GB82WEST12345698765432",
    "NL91ABNA0417164300", "FR1420041010050500013M02606", "NO9386011117947",
])
def test_valid_ibans(iban: str) -> None:
    out = bank.validate_iban(iban, "p")
    assert out == iban.replace(" ", "").upper()
    assert bank.iban_mod97(out) == 1


@pytest.mark.parametrize(("iban", "why"), [
    ("DE89370400440532013001", "check digits"),  # one digit changed
    ("DE8937040044053201300", "22 characters"),  # one short
    ("BR1800360305000010009795493C1", "not a SEPA country"),
    ("DE89-3704-0044-0532-0130-0!", "letters and digits"),
    ("89370400440532013000", "country code"),
    (12345, "IBAN"),
    (None, "IBAN"),
])
def test_invalid_ibans_name_the_param(iban: Any, why: str) -> None:
    err = _err(bank.validate_iban, iban, "payment_method[sepa_debit][iban]")
    assert err.code == "invalid_iban" and err.param == "payment_method[sepa_debit][iban]"
    assert why in err.message
    if isinstance(iban, str):
        assert iban not in err.message  # never echo an account number


@given(st.sampled_from(sorted(bank.IBAN_LENGTHS)), st.data())
def test_build_iban_is_always_valid(country: str, data: st.DataObject) -> None:
    n = bank.IBAN_LENGTHS[country] - 4
    bban = data.draw(st.text("0123456789", min_size=n, max_size=n))
    iban = bank.build_iban(country, bban)
    assert bank.validate_iban(iban, "p") == iban


def test_bank_code_per_country() -> None:
    assert bank.iban_bank_code(GOOD_IBAN) == "37040044"
    assert bank.iban_bank_code("NL91ABNA0417164300") == "ABNA"
    assert bank.iban_bank_code("FR1420041010050500013M02606") == "20041"


# ---- CPF / CNPJ -----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "kind", "masked"), [
    ("123.456.789-09", "cpf", "***.456.789-**"),
    ("52998224725", "cpf", "***.982.247-**"),
    ("11.222.333/0001-81", "cnpj", "**.222.333/0001-**"),
    ("12.ABC.345/01DE-35", "cnpj", "**.ABC.345/01DE-**"),  # alphanumeric CNPJ (2026)
])
def test_valid_tax_ids(value: str, kind: str, masked: str) -> None:
    tax = bank.validate_tax_id(value, "p")
    assert tax.kind == kind and tax.masked() == masked
    assert tax.value not in repr(tax)


@pytest.mark.parametrize("value", [
    "123.456.789-00", "111.111.111-11", "00000000000", "11.222.333/0001-82",
    "11111111111111", "1234567890", "12.ABC.345/01DE-36", "", None, 12345678909,
])
def test_invalid_tax_ids(value: Any) -> None:
    err = _err(bank.validate_tax_id, value, "payment_method[boleto][tax_id]")
    assert err.code == "invalid_tax_id" and err.param == "payment_method[boleto][tax_id]"


# ---- phone and e-mail -----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "digits"), [
    ("090-1234-5678", "09012345678"), ("03 1234 5678", "0312345678"),
    ("+81 90 1234 5678", "09012345678"), ("(03)1234-5678", "0312345678"),
])
def test_japanese_phones(value: str, digits: str) -> None:
    assert bank.validate_jp_phone(value, "customer[phone]") == digits


@pytest.mark.parametrize("value", ["12345", "090-1234-56789", "+1 415 555 0100", "abc", 9012345])
def test_bad_japanese_phones(value: Any) -> None:
    assert _err(bank.validate_jp_phone, value, "customer[phone]").param == "customer[phone]"


@pytest.mark.parametrize("value", ["no-at", "a@b", "a b@c.de", "@example.jp", "x" * 400])
def test_bad_emails(value: str) -> None:
    assert _err(bank.validate_email, value, "customer[email]").param == "customer[email]"


# ---- method validation --------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "details", "amount", "currency", "customer", "code", "param"), [
    ("konbini", None, 1000, "USD", KONBINI_CUSTOMER, "currency_not_supported", "currency"),
    ("konbini", None, 119, "JPY", KONBINI_CUSTOMER, "amount_out_of_range", "amount"),
    ("konbini", None, 300_001, "JPY", KONBINI_CUSTOMER, "amount_out_of_range", "amount"),
    ("konbini", None, 1000, "JPY", {"name": "Hanako"}, "parameter_missing", "customer[phone]"),
    ("konbini", None, 1000, "JPY", {"email": "h@example.jp"}, "parameter_missing",
     "customer[name]"),
    ("konbini", None, 1000, "JPY", {**KONBINI_CUSTOMER, "phone": "12"}, "parameter_invalid",
     "customer[phone]"),
    ("konbini", {"expires_after_days": 4}, 1000, "JPY", KONBINI_CUSTOMER, "parameter_invalid",
     "payment_method[konbini][expires_after_days]"),
    ("konbini", {"expires_after_days": True}, 1000, "JPY", KONBINI_CUSTOMER,
     "parameter_invalid", "payment_method[konbini][expires_after_days]"),
    ("konbini", {"store": "lawson"}, 1000, "JPY", KONBINI_CUSTOMER, "parameter_unknown",
     "payment_method[konbini][store]"),
    ("pay_easy", None, 1000, "JPY", KONBINI_CUSTOMER, "parameter_missing", "customer[phone]"),
    ("boleto", {}, 1000, "BRL", {"name": "João", "email": "j@example.br"}, "parameter_missing",
     "payment_method[boleto][tax_id]"),
    ("boleto", {"tax_id": "123.456.789-00"}, 1000, "BRL", {"name": "João",
                                                           "email": "j@example.br"},
     "invalid_tax_id", "payment_method[boleto][tax_id]"),
    ("boleto", {"tax_id": "123.456.789-09"}, 1000, "JPY", {"name": "J", "email": "j@e.br"},
     "currency_not_supported", "currency"),
    ("boleto", {"tax_id": "123.456.789-09"}, 499, "BRL", {"name": "J", "email": "j@e.br"},
     "amount_out_of_range", "amount"),
    ("boleto", {"tax_id": "123.456.789-09"}, 1000, "BRL", {"name": "J"}, "parameter_missing",
     "customer[email]"),
    ("sepa_debit", {"iban": "DE89370400440532013001"}, 1000, "EUR",
     {"name": "Erika", "email": "e@example.de"}, "invalid_iban",
     "payment_method[sepa_debit][iban]"),
    ("sepa_debit", {}, 1000, "EUR", {"name": "Erika", "email": "e@example.de"},
     "parameter_missing", "payment_method[sepa_debit][iban]"),
    ("sepa_debit", {"iban": GOOD_IBAN}, 1000, "GBP", {"name": "E", "email": "e@example.de"},
     "currency_not_supported", "currency"),
    ("sepa_debit", {"iban": GOOD_IBAN, "account_holder_name": ""}, 1000, "EUR",
     {"name": "E", "email": "e@example.de"}, "parameter_invalid",
     "payment_method[sepa_debit][account_holder_name]"),
    ("bank_transfer", None, 1000, "USD", {}, "currency_not_supported", "currency"),
    ("bank_transfer", [], 1000, "JPY", {}, "parameter_invalid", "payment_method[bank_transfer]"),
])
def test_validation_names_the_param(kind: str, details: Any, amount: int, currency: str,
                                    customer: dict[str, str], code: str, param: str) -> None:
    err = _err(lm.validate_method, kind, details, amount=amount, currency=currency,
               customer=customer)
    assert (err.code, err.param) == (code, param), err


def test_valid_methods_and_their_views() -> None:
    k = lm.validate_method("konbini", {"expires_after_days": 1}, amount=120, currency="JPY",
                           customer={"name": "花子", "phone": "090-1234-5678"})
    assert k.view == {"type": "konbini", "konbini": {"expires_after_days": 1}}
    b = lm.validate_method("boleto", {"tax_id": "11.222.333/0001-81"}, amount=500,
                           currency="BRL", customer={"name": "Empresa", "email": "f@e.com.br"})
    assert b.view["boleto"] == {"expires_after_days": 3, "tax_id_type": "cnpj",
                                "tax_id": "**.222.333/0001-**"}
    s = lm.validate_method("sepa_debit", {"iban": "DE89 3704 0044 0532 0130 00"}, amount=50,
                           currency="EUR", customer={"name": "Erika", "email": "e@example.de"})
    assert s.secret == GOOD_IBAN and GOOD_IBAN not in repr(s)
    assert s.view["sepa_debit"] == {"country": "DE", "bank_code": "37040044", "last4": "3000",
                                    "account_holder_name": "Erika"}
    assert lm.accepts("konbini", 120, "JPY") and not lm.accepts("konbini", 120, "USD")
    assert not lm.accepts("konbini", 300_001, "JPY")


# ---- deadlines and what the issuer hands out ----------------------------------------------------

def test_deadline_is_end_of_the_local_day() -> None:
    # 2026-11-22 12:00 JST + 3 days -> 2026-11-25 23:59:59 JST = 14:59:59Z
    assert lm.deadline(NOW, 3, "JPY") == int(dt.datetime(2026, 11, 25, 14, 59, 59,
                                                         tzinfo=dt.UTC).timestamp())
    late = int(dt.datetime(2026, 11, 22, 15, 30, tzinfo=dt.UTC).timestamp())  # 00:30 JST 23rd
    assert lm.deadline(late, 1, "JPY") == int(dt.datetime(2026, 11, 24, 14, 59, 59,
                                                          tzinfo=dt.UTC).timestamp())
    assert lm.deadline(NOW, 1, "BRL") == int(dt.datetime(2026, 11, 24, 2, 59, 59,
                                                         tzinfo=dt.UTC).timestamp())


def _issue(kind: str, details: Any, amount: int, currency: str, customer: dict[str, str],
           seed: str = "pay_seed") -> lm.Issued:
    m = lm.validate_method(kind, details, amount=amount, currency=currency, customer=customer)
    return lm.issue(lm.from_view(m.view), seed=seed, now=NOW, amount=amount, currency=currency,
                    voucher_url="https://pse.example/v")


def test_konbini_voucher_formats_and_determinism() -> None:
    a = _issue("konbini", None, 1000, "JPY", KONBINI_CUSTOMER)
    na = a.next_action
    assert a.status == "requires_action" and na is not None
    assert na["type"] == "display_voucher" and na["hosted_voucher_url"] == "https://pse.example/v"
    assert re.fullmatch(r"\d{11}", na["payment_number"])
    assert re.fullmatch(r"\d{6}", na["confirmation_number"])
    assert set(na["stores"]) == set(lm.KONBINI_STORES)
    assert re.fullmatch(r"\d{13}", na["stores"]["seven_eleven"]["payment_code"])
    assert na["stores"]["lawson"]["terminal"] == "loppi"
    assert na["expires_at"] == "2026-11-25T14:59:59Z" and a.expires_at == lm.deadline(NOW, 3,
                                                                                       "JPY")
    assert _issue("konbini", None, 1000, "JPY", KONBINI_CUSTOMER).next_action == na
    other = _issue("konbini", None, 1000, "JPY", KONBINI_CUSTOMER, seed="pay_other")
    assert other.next_action is not None
    assert other.next_action["payment_number"] != na["payment_number"]


def test_pay_easy_and_transfer_formats() -> None:
    pe = _issue("pay_easy", None, 1000, "JPY", {"name": "花子", "phone": "0312345678"})
    assert pe.next_action is not None
    assert pe.next_action["institution_number"] == lm.PAY_EASY_INSTITUTION
    assert re.fullmatch(r"\d{20}", pe.next_action["customer_number"])
    jp = _issue("bank_transfer", None, 5000, "JPY", {}).next_action
    assert jp is not None and jp["amount_remaining"] == 5000
    fa = jp["financial_address"]
    assert fa["type"] == "zengin" and re.fullmatch(r"\d{7}", fa["account_number"])
    assert re.fullmatch(r"\d{3}", fa["branch_code"]) and fa["bank_code"] == "0999"
    eu = _issue("bank_transfer", None, 5000, "EUR", {}).next_action
    assert eu is not None and eu["financial_address"]["type"] == "iban"
    assert bank.validate_iban(eu["financial_address"]["iban"], "p")


def _mod10(digits: str) -> int:
    total = 0
    for i, d in enumerate(reversed(digits)):
        p = int(d) * (2 if i % 2 == 0 else 1)
        total += p // 10 + p % 10
    return (10 - total % 10) % 10


def test_boleto_line_check_digits() -> None:
    b = _issue("boleto", {"tax_id": "123.456.789-09"}, 12345, "BRL",
               {"name": "João", "email": "j@example.br"})
    na = b.next_action
    assert na is not None and na["type"] == "display_boleto_details"
    line = re.sub(r"\D", "", na["number"])
    assert len(line) == 47 and len(na["barcode"]) == 44
    for field in (line[0:10], line[10:21], line[21:32]):  # each printed field's own DV
        assert _mod10(field[:-1]) == int(field[-1])
    assert na["barcode"][9:19] == "0000012345"  # the amount, in centavos
    assert na["barcode"][:3] == lm.BOLETO_BANK and na["barcode"][4] == line[32]
    assert na["due_date"] == "2026-11-25"
    # the due factor restarted at 1000 on 2025-02-22
    assert lm.boleto_line("001", 0, dt.date(2025, 2, 22), "0" * 25)[0][5:9] == "1000"
    assert lm.boleto_line("001", 0, dt.date(2025, 2, 21), "0" * 25)[0][5:9] == "9999"


def test_sepa_mandate() -> None:
    s = _issue("sepa_debit", {"iban": GOOD_IBAN}, 1000, "EUR",
               {"name": "Erika", "email": "e@example.de"})
    assert s.status == "processing" and s.next_action is None and s.expires_at is None
    assert s.settles_at == NOW + lm.SEPA_SETTLEMENT_S
    mandate = s.method_view["sepa_debit"]["mandate"]
    assert re.fullmatch(r"OPSE-[0-9A-Z]{16}", mandate["reference"])
    assert mandate["creditor_id"] == lm.SEPA_CREDITOR_ID and mandate["type"] == "single_use"
    assert lm.sandbox_debit_failure("3001") == lm.SANDBOX_DEBIT_FAILURES["3001"]
    assert lm.sandbox_debit_failure("3000") is None


# ---- refund destinations ------------------------------------------------------------------

JP_ACCOUNT = {"type": "jp_bank_account", "bank_code": "0005", "branch_code": "123",
              "account_type": "futsu", "account_number": "1234567",
              "account_holder_name": "ヤマダ ハナコ"}


def test_destinations() -> None:
    assert lm.refund_destination_type("konbini", "JPY") == "jp_bank_account"
    assert lm.refund_destination_type("bank_transfer", "EUR") == "iban"
    assert lm.refund_destination_type("boleto", "BRL") == "br_bank_account"
    assert lm.refund_destination_type("sepa_debit", "EUR") is None
    acct = bank.validate_destination(JP_ACCOUNT, "jp_bank_account")
    assert acct.secret == "1234567" and acct.view["last4"] == "4567"
    assert "1234567" not in repr(acct) and "account_number" not in acct.view
    br = bank.validate_destination({
        "type": "br_bank_account", "bank_code": "001", "branch_code": "1234-5",
        "account_type": "checking", "account_number": "12345678-9",
        "account_holder_name": "João", "tax_id": "123.456.789-09"}, "br_bank_account")
    assert br.view["tax_id"] == "***.456.789-**" and br.view["last4"] == "6789"


@pytest.mark.parametrize(("change", "param", "code"), [
    ({"bank_code": "05"}, "destination[bank_code]", "parameter_invalid"),
    ({"branch_code": None}, "destination[branch_code]", "parameter_missing"),
    ({"account_type": "checking"}, "destination[account_type]", "parameter_invalid"),
    ({"account_number": "12345678"}, "destination[account_number]", "parameter_invalid"),
    ({"account_holder_name": ""}, "destination[account_holder_name]", "parameter_invalid"),
    ({"type": "iban"}, "destination[type]", "parameter_invalid"),
    ({"swift": "X"}, "destination[swift]", "parameter_unknown"),
])
def test_bad_destinations(change: dict[str, Any], param: str, code: str) -> None:
    dest = {k: v for k, v in {**JP_ACCOUNT, **change}.items() if v is not None}
    err = _err(bank.validate_destination, dest, "jp_bank_account")
    assert (err.param, err.code) == (param, code)


# ---- ledger journals of the local methods -------------------------------------------------------

@given(st.integers(1, 10**9), st.integers(0, 10**9), st.integers(1, 10**9), st.data())
def test_completing_funds_balance(incoming: int, held: int, amount: int,
                                  data: st.DataObject) -> None:
    if incoming + held < amount:
        with pytest.raises(ValueError):
            ledger.funds_completing("m", "JPY", incoming=incoming, held=held, amount=amount, fee=0)
        return
    fee = data.draw(st.integers(0, amount))
    entries = ledger.funds_completing("m", "JPY", incoming=incoming, held=held, amount=amount,
                                      fee=fee)
    ledger.check_balanced(entries)
    excess = sum(-p.amount for p in entries if p.kind == "overpayments_payable")
    assert excess == incoming + held - amount


@given(st.integers(1, 10**9), st.integers(0, 10**6), st.sampled_from(["payment", "overpayment"]))
def test_debit_and_bank_refund_journals_balance(amount: int, fee: int, source: str) -> None:
    fee = min(fee, amount)
    for entries in (ledger.debit_submitted("m", "EUR", amount),
                    ledger.debit_settled("m", "EUR", amount, fee),
                    ledger.debit_failed("m", "EUR", amount),
                    ledger.bank_refund_accepted("m", "EUR", amount, source),
                    ledger.bank_refund_paid("m", "EUR", amount),
                    ledger.bank_refund_failed("m", "EUR", amount, source)):
        ledger.check_balanced(entries)
    # submit then settle leaves no memo behind; submit then fail leaves nothing at all
    memo = ledger.debit_submitted("m", "EUR", amount) + ledger.debit_failed("m", "EUR", amount)
    assert sum(p.amount for p in memo if p.kind == "direct_debits_submitted") == 0
    with pytest.raises(ValueError):
        ledger.move("m", "EUR", 0, "a", "b")


def test_issued_numbers_never_look_like_card_numbers():
    """A 13-19 digit voucher code that passed the Luhn check would be masked in logs as a PAN."""
    import re

    from openpse.domain.cards import luhn_valid
    from openpse.domain.local_methods import _digits

    codes = [_digits(f"pay_{i}", "seven", 13) for i in range(3000)]
    assert all(len(c) == 13 and c.isdigit() for c in codes)
    assert not [c for c in codes if luhn_valid(c)]
    assert len(set(codes)) > 2990  # still spread out
    assert re.fullmatch(r"\d{11}", _digits("pay_x", "konbini", 11))
