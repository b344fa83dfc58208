"""Local and asynchronous payment methods (CONTRACT §6): Konbini, Pay-easy, bank transfer, Boleto
and SEPA Direct Debit. Pure rules: which currencies and amounts each takes, what it needs from the
shopper, and what the sandbox issuer hands out (voucher numbers, virtual accounts, boleto lines,
mandates), deterministically from a seed so the same payment always gets the same numbers.

Flows (the transition table in ``domain.payments`` is the only one):

    konbini | pay_easy | boleto  requires_action (display_voucher, display_boleto_details)
                                 -> succeeded (paid) | canceled (expired)
    bank_transfer                requires_action (display_bank_transfer_instructions)
                                 -> succeeded (funded, perhaps over) | canceled (expired)
    sepa_debit                   processing (mandate) -> succeeded (settled) | failed (returned)

Deadlines are the end of a local day, as the networks set them: a konbini voucher with
``expires_after_days: 3`` can be paid until 23:59:59 JST on the third day after today.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from openpse.domain import bank_details as bank
from openpse.domain.cards import luhn_valid
from openpse.domain.errors import InvalidRequest

__all__ = [
    "BANK_REFUND_METHODS",
    "LOCAL_METHODS",
    "REFUND_WINDOW_DAYS",
    "VOUCHER_METHODS",
    "Issued",
    "MethodInput",
    "accepts",
    "boleto_line",
    "deadline",
    "from_view",
    "issue",
    "refund_destination_type",
    "sandbox_debit_failure",
    "sandbox_refund_failure",
    "validate_method",
]

LOCAL_METHODS: Final = ("konbini", "pay_easy", "bank_transfer", "boleto", "sepa_debit")
VOUCHER_METHODS: Final = frozenset({"konbini", "pay_easy", "boleto"})  # paid by pay_voucher
# No card network to send money back through: refunds are bank transfers to the shopper's account.
BANK_REFUND_METHODS: Final = frozenset({"konbini", "pay_easy", "bank_transfer", "boleto"})

# Amounts each method takes, per currency, in minor units (inclusive). Konbini: what the chains
# accept at the register; boleto: R$ 5.00 .. R$ 49,999.99; SEPA: our risk limit per debit.
AMOUNT_LIMITS: Final[Mapping[str, Mapping[str, tuple[int, int]]]] = MappingProxyType({
    "konbini": {"JPY": (120, 300_000)},
    "pay_easy": {"JPY": (1, 999_999)},
    "bank_transfer": {"JPY": (1, 99_999_999), "EUR": (1, 99_999_999)},
    "boleto": {"BRL": (500, 4_999_999)},
    "sepa_debit": {"EUR": (50, 1_000_000)},
})
# expires_after_days: (minimum, maximum, default). SEPA has no shopper deadline.
EXPIRY_DAYS: Final[Mapping[str, tuple[int, int, int]]] = MappingProxyType({
    "konbini": (1, 3, 3),
    "pay_easy": (1, 14, 3),
    "bank_transfer": (1, 14, 7),
    "boleto": (1, 30, 3),
})
# The local time zone of each currency's networks (fixed offsets; deadlines are end of day there).
ZONE_OFFSET_S: Final[Mapping[str, int]] = MappingProxyType(
    {"JPY": 9 * 3600, "BRL": -3 * 3600, "EUR": 1 * 3600})
# How long after capture a refund may be asked for, per method (days).
REFUND_WINDOW_DAYS: Final[Mapping[str, int]] = MappingProxyType({
    "card": 180, "konbini": 180, "pay_easy": 180, "bank_transfer": 365, "boleto": 90,
    "sepa_debit": 180,
})
# A SEPA debit is confirmed (or returned) by the shopper's bank this long after submission.
SEPA_SETTLEMENT_S: Final = 5 * 86400
# A refund by bank transfer arrives this long after it was accepted.
BANK_REFUND_DELAY_S: Final = 86400

_DETAIL_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "konbini": frozenset({"expires_after_days"}),
    "pay_easy": frozenset({"expires_after_days"}),
    "bank_transfer": frozenset({"expires_after_days"}),
    "boleto": frozenset({"tax_id", "expires_after_days"}),
    "sepa_debit": frozenset({"iban", "account_holder_name"}),
})
MAX_CUSTOMER_NAME_CHARS: Final = 200

# The sandbox issuer: its institution, bank and creditor identifiers (not real ones).
KONBINI_STORES: Final = ("seven_eleven", "familymart", "lawson", "ministop", "seicomart")
_STORE_TERMINALS: Final[Mapping[str, str]] = MappingProxyType({
    "seven_eleven": "register", "familymart": "multimedia_terminal",
    "lawson": "loppi", "ministop": "loppi", "seicomart": "register",
})
PAY_EASY_INSTITUTION: Final = "58091"
JP_BANK: Final[Mapping[str, str]] = MappingProxyType({
    "bank_name": "OpenPSE Sandbox Bank", "bank_code": "0999",
    "account_holder_name": "オープンピーエスイー(カ"})
EU_BANK: Final[Mapping[str, str]] = MappingProxyType({
    "bank_name": "OpenPSE Sandbox Bank", "bic": "OPSEDEFFXXX", "bank_code": "99999999",
    "account_holder_name": "OpenPSE Sandbox"})
BOLETO_BANK: Final = "999"
SEPA_CREDITOR_ID: Final = "DE98ZZZ09999999999"
_BOLETO_BASE: Final = dt.date(1997, 10, 7)
# Sandbox SEPA debits whose IBAN ends in these digits are returned at settlement (late failure).
SANDBOX_DEBIT_FAILURES: Final[Mapping[str, tuple[str, str]]] = MappingProxyType({
    "3001": ("insufficient_funds", "The shopper's bank returned the debit: insufficient funds."),
    "3002": ("account_closed", "The shopper's bank returned the debit: the account is closed."),
    "3003": ("debit_not_authorized",
             "The shopper told their bank the debit was not authorised."),
})
# Sandbox refunds to an account ending in 9999 are rejected by the shopper's bank.
SANDBOX_REFUND_FAILURE: Final = ("9999", "account_closed",
                                 "The shopper's bank rejected the refund: the account is closed.")


@dataclass(frozen=True, repr=False)
class MethodInput:
    """A validated method: ``view`` is what responses show (``payment_method``); ``secret`` (the
    full IBAN of a debit) is only ever stored encrypted; ``options`` steer issuing."""

    kind: str
    view: dict[str, Any]
    secret: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"MethodInput({self.kind}, {self.view!r})"


@dataclass(frozen=True)
class Issued:
    """What confirming hands the shopper: the next status and its details."""

    status: str  # requires_action | processing
    next_action: dict[str, Any] | None
    expires_at: int | None
    settles_at: int | None
    method_view: dict[str, Any]


# ---- validation ---------------------------------------------------------------------------

def _param(kind: str, key: str) -> str:
    return f"payment_method[{kind}][{key}]"


def _check_amount(kind: str, amount: int, currency: str) -> None:
    limits = AMOUNT_LIMITS[kind]
    if currency not in limits:
        raise InvalidRequest(
            f"{kind} takes {' or '.join(sorted(limits))} only; got {currency}",
            code="currency_not_supported", param="currency")
    low, high = limits[currency]
    if not low <= amount <= high:
        raise InvalidRequest(
            f"{kind} takes amounts from {low} to {high} {currency} (minor units); got {amount}",
            code="amount_out_of_range", param="amount")


def _expiry_days(kind: str, details: Mapping[str, Any]) -> int:
    low, high, default = EXPIRY_DAYS[kind]
    value = details.get("expires_after_days", default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{_param(kind, 'expires_after_days')} must be an integer from {low}"
                             f" to {high}", param=_param(kind, "expires_after_days"))
    return value


def _customer_field(customer: Mapping[str, Any], key: str, kind: str) -> str | None:
    value = customer.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _require_name(customer: Mapping[str, Any], kind: str) -> str:
    name = _customer_field(customer, "name", kind)
    if name is None:
        raise InvalidRequest(f"{kind} needs the shopper's name in customer[name]",
                             code="parameter_missing", param="customer[name]")
    if len(name) > MAX_CUSTOMER_NAME_CHARS or not name.isprintable():
        raise InvalidRequest(f"customer[name] must be 1-{MAX_CUSTOMER_NAME_CHARS} printable "
                             "characters", param="customer[name]")
    return name.strip()


def _validate_customer(kind: str, customer: Mapping[str, Any]) -> dict[str, str]:
    """What each method needs from the shopper (the voucher or mandate is sent to them)."""
    out: dict[str, str] = {}
    email = _customer_field(customer, "email", kind)
    phone = _customer_field(customer, "phone", kind)
    if email is not None:
        out["email"] = bank.validate_email(email, "customer[email]")
    if kind in ("konbini", "pay_easy") and phone is not None:
        out["phone"] = bank.validate_jp_phone(phone, "customer[phone]")
    if kind == "konbini":
        out["name"] = _require_name(customer, kind)
        if email is None and phone is None:
            raise InvalidRequest("konbini needs customer[email] or customer[phone] to send the "
                                 "voucher to", code="parameter_missing", param="customer[phone]")
    elif kind == "pay_easy":
        out["name"] = _require_name(customer, kind)
        if phone is None:
            raise InvalidRequest("pay_easy needs the shopper's phone number in customer[phone]",
                                 code="parameter_missing", param="customer[phone]")
    elif kind in ("boleto", "sepa_debit"):
        out["name"] = _require_name(customer, kind)
        if email is None:
            raise InvalidRequest(f"{kind} needs the shopper's e-mail in customer[email]",
                                 code="parameter_missing", param="customer[email]")
    return out


def validate_method(kind: str, details: Any, *, amount: int, currency: str,
                    customer: Mapping[str, Any] | None) -> MethodInput:
    """Check a local method against the payment; raise ``InvalidRequest`` naming the ``param``."""
    if kind not in LOCAL_METHODS:
        raise InvalidRequest(f"unknown payment method type {kind!r}", param="payment_method[type]")
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise InvalidRequest(f"payment_method[{kind}] must be an object",
                             param=f"payment_method[{kind}]")
    unknown = sorted(set(details) - _DETAIL_FIELDS[kind])
    if unknown:
        raise InvalidRequest(f"{_param(kind, unknown[0])} is not a field of {kind}",
                             code="parameter_unknown", param=_param(kind, unknown[0]))
    _check_amount(kind, amount, currency)
    shopper = _validate_customer(kind, customer or {})
    view: dict[str, Any] = {}
    options: dict[str, Any] = {"customer": shopper}
    secret = None
    if kind in EXPIRY_DAYS:
        options["expires_after_days"] = view["expires_after_days"] = _expiry_days(kind, details)
    if kind == "boleto":
        if details.get("tax_id") is None:
            raise InvalidRequest("boleto needs the shopper's CPF or CNPJ in "
                                 f"{_param(kind, 'tax_id')}", code="parameter_missing",
                                 param=_param(kind, "tax_id"))
        tax = bank.validate_tax_id(details["tax_id"], _param(kind, "tax_id"))
        view.update(tax_id_type=tax.kind, tax_id=tax.masked())
    if kind == "sepa_debit":
        secret, view = _sepa_details(details, shopper)
    return MethodInput(kind, {"type": kind, kind: view}, secret, options)


def _sepa_details(details: Mapping[str, Any], shopper: Mapping[str, str]
                  ) -> tuple[str, dict[str, Any]]:
    if details.get("iban") is None:
        raise InvalidRequest("sepa_debit needs the shopper's IBAN", code="parameter_missing",
                             param=_param("sepa_debit", "iban"))
    iban = bank.validate_iban(details["iban"], _param("sepa_debit", "iban"))
    holder = details.get("account_holder_name", shopper.get("name"))
    p = _param("sepa_debit", "account_holder_name")
    if not isinstance(holder, str) or not holder.strip() or \
            len(holder) > bank.MAX_HOLDER_NAME_CHARS or not holder.isprintable():
        raise InvalidRequest(f"{p} must be 1-{bank.MAX_HOLDER_NAME_CHARS} printable characters",
                             param=p)
    return iban, {"country": iban[:2], "bank_code": bank.iban_bank_code(iban),
                  "last4": iban[-4:], "account_holder_name": holder.strip()}


def accepts(kind: str, amount: int, currency: str) -> bool:
    """Whether a local method can take this amount in this currency (the hosted page's offer)."""
    low_high = AMOUNT_LIMITS.get(kind, {}).get(currency)
    return low_high is not None and low_high[0] <= amount <= low_high[1]


def from_view(view: Mapping[str, Any]) -> MethodInput:
    """A method validated earlier, back from the payment's stored ``payment_method``."""
    kind = str(view["type"])
    details = dict(view.get(kind) or {})
    return MethodInput(kind, {"type": kind, kind: details}, None,
                       {"expires_after_days": details.get("expires_after_days")})


def refund_destination_type(kind: str, currency: str) -> str | None:
    """The kind of account a refund of this method is paid to (None: no destination taken)."""
    if kind not in BANK_REFUND_METHODS:
        return None
    if kind == "boleto":
        return "br_bank_account"
    return "iban" if currency == "EUR" else "jp_bank_account"


# ---- deadlines ----------------------------------------------------------------------------

def deadline(now: int, days: int, currency: str) -> int:
    """23:59:59 local time (the currency's networks' zone) ``days`` days after today there."""
    zone = ZONE_OFFSET_S.get(currency, 0)
    local = now + zone
    start_of_today = local - local % 86400
    return start_of_today + (days + 1) * 86400 - 1 - zone


def _local_date(ts: int, currency: str) -> dt.date:
    return dt.datetime.fromtimestamp(ts + ZONE_OFFSET_S.get(currency, 0), dt.UTC).date()


def _rfc3339(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- the sandbox issuer: numbers deterministic from a seed -------------------------------------

PAN_LENGTHS = (13, 19)


def _digits(seed: str, label: str, n: int) -> str:
    """``n`` decimal digits derived from ``seed`` (the payment id) and a label."""
    out = ""
    counter = 0
    while len(out) < n:
        h = hashlib.sha256(f"{label}:{counter}:{seed}".encode()).hexdigest()
        out += str(int(h, 16))[1:]  # drop the leading digit: it is biased
        counter += 1
    out = out[:n]
    if PAN_LENGTHS[0] <= n <= PAN_LENGTHS[1] and luhn_valid(out):
        # A voucher number must never look like a card number: log redaction would mask it and
        # card-data scans would flag it. Changing the last digit breaks the Luhn check.
        out = out[:-1] + str((int(out[-1]) + 1) % 10)
    return out


def _alnum(seed: str, label: str, n: int) -> str:
    alphabet = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    value = int(hashlib.sha256(f"{label}:{seed}".encode()).hexdigest(), 16)
    chars = []
    for _ in range(n):
        value, r = divmod(value, len(alphabet))
        chars.append(alphabet[r])
    return "".join(chars)


def _mod10(digits: str) -> int:
    total = 0
    for i, d in enumerate(reversed(digits)):
        p = int(d) * (2 if i % 2 == 0 else 1)
        total += p // 10 + p % 10
    return (10 - total % 10) % 10


def _mod11_boleto(digits: str) -> int:
    total = sum(int(d) * (2 + i % 8) for i, d in enumerate(reversed(digits)))
    dv = 11 - total % 11
    return 1 if dv in (0, 10, 11) else dv


def _due_factor(due: dt.date) -> int:
    days = (due - _BOLETO_BASE).days
    return days if days <= 9999 else (days - 10000) % 9000 + 1000  # reset on 2025-02-22


def boleto_line(bank_code: str, amount: int, due: dt.date, free_field: str) -> tuple[str, str]:
    """(barcode of 44 digits, linha digitável of 47 digits formatted as printed) of a boleto."""
    if len(bank_code) != 3 or len(free_field) != 25 or not 0 <= amount <= 9_999_999_999:
        raise ValueError("boleto: 3-digit bank, 25-digit free field, amount of 10 digits")
    tail = f"{_due_factor(due):04d}{amount:010d}"
    head = bank_code + "9"  # 9: real
    body = head + tail + free_field
    dv = _mod11_boleto(body)
    barcode = head + str(dv) + tail + free_field
    f1 = head + free_field[:5]
    f2 = free_field[5:15]
    f3 = free_field[15:]
    f1, f2, f3 = (f + str(_mod10(f)) for f in (f1, f2, f3))
    line = f"{f1[:5]}.{f1[5:]} {f2[:5]}.{f2[5:]} {f3[:5]}.{f3[5:]} {dv} {tail}"
    return barcode, line


def issue(m: MethodInput, *, seed: str, now: int, amount: int, currency: str,
          voucher_url: str, device: Mapping[str, Any] | None = None) -> Issued:
    """What confirming hands out: vouchers, account details or the mandate. ``now`` is the
    merchant's clock; ``seed`` the payment id (the same payment always gets the same numbers);
    ``device`` the shopper's (ip, user_agent) recorded as a mandate's acceptance."""
    if m.kind == "sepa_debit":
        return _issue_sepa(m, seed=seed, now=now, device=device or {})
    expires_at = deadline(now, int(m.options["expires_after_days"]), currency)
    common = {"expires_at": _rfc3339(expires_at), "hosted_voucher_url": voucher_url}
    action: dict[str, Any]
    if m.kind == "konbini":
        number, confirmation = _digits(seed, "konbini", 11), _digits(seed, "konbini-conf", 6)
        stores: dict[str, dict[str, Any]] = {
            s: {"payment_code": number, "confirmation_number": confirmation,
                "terminal": _STORE_TERMINALS[s]} for s in KONBINI_STORES}
        stores["seven_eleven"] = {"payment_code": _digits(seed, "seven", 13),
                                  "confirmation_number": None, "terminal": "register"}
        action = {"type": "display_voucher", "method": "konbini", "payment_number": number,
                  "confirmation_number": confirmation, "stores": stores, **common}
    elif m.kind == "pay_easy":
        action = {"type": "display_voucher", "method": "pay_easy",
                  "institution_number": PAY_EASY_INSTITUTION,
                  "customer_number": _digits(seed, "payeasy", 20),
                  "confirmation_number": _digits(seed, "payeasy-conf", 6), **common}
    elif m.kind == "boleto":
        due = _local_date(expires_at, currency)
        barcode, line = boleto_line(BOLETO_BANK, amount, due, _digits(seed, "boleto", 25))
        action = {"type": "display_boleto_details", "method": "boleto", "number": line,
                  "barcode": barcode, "due_date": due.isoformat(), **common}
    else:
        action = {"type": "display_bank_transfer_instructions", "method": "bank_transfer",
                  "amount_remaining": amount, "currency": currency,
                  "reference": _alnum(seed, "reference", 8),
                  "financial_address": _virtual_account(seed, currency), **common}
        action["hosted_instructions_url"] = action.pop("hosted_voucher_url")
    return Issued("requires_action", action, expires_at, None, m.view)


def _virtual_account(seed: str, currency: str) -> dict[str, Any]:
    """One account per payment, so every transfer to it is matched to its payment."""
    if currency == "EUR":
        iban = bank.build_iban("DE", EU_BANK["bank_code"] + _digits(seed, "vaccount", 10))
        return {"type": "iban", "iban": iban, "bic": EU_BANK["bic"],
                "bank_name": EU_BANK["bank_name"],
                "account_holder_name": EU_BANK["account_holder_name"]}
    branch = str(100 + int(_digits(seed, "branch", 3)) % 800)
    return {"type": "zengin", "bank_name": JP_BANK["bank_name"], "bank_code": JP_BANK["bank_code"],
            "branch_code": branch, "branch_name": f"Sandbox {branch}", "account_type": "futsu",
            "account_number": _digits(seed, "vaccount", 7),
            "account_holder_name": JP_BANK["account_holder_name"]}


def _issue_sepa(m: MethodInput, *, seed: str, now: int, device: Mapping[str, Any]) -> Issued:
    settles_at = now + SEPA_SETTLEMENT_S
    view = dict(m.view["sepa_debit"])
    acceptance = {"type": "online", "ip": device.get("ip"), "user_agent": device.get("user_agent")}
    view["mandate"] = {"reference": "OPSE-" + _alnum(seed, "mandate", 16), "type": "single_use",
                       "creditor_id": SEPA_CREDITOR_ID, "accepted_at": _rfc3339(now),
                       "customer_acceptance": acceptance}
    view["expected_settlement_at"] = _rfc3339(settles_at)
    return Issued("processing", None, None, settles_at, {"type": "sepa_debit", "sepa_debit": view})


# ---- sandbox outcomes ---------------------------------------------------------------------

def sandbox_debit_failure(last4: str) -> tuple[str, str] | None:
    """A sandbox debit's fate at settlement: (failure_code, message), or None for success."""
    return SANDBOX_DEBIT_FAILURES.get(last4)


def sandbox_refund_failure(last4: str) -> tuple[str, str] | None:
    suffix, code, message = SANDBOX_REFUND_FAILURE
    return (code, message) if last4 == suffix else None
