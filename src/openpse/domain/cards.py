"""Card numbers: normalisation, the Luhn checksum, brand detection and request validation.

A full card number (PAN) never appears in an exception message or a ``repr``: messages name
the problem, ``CardDetails`` shows only the last four digits.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from openpse.domain.errors import InvalidRequest

__all__ = [
    "CVC_DIGITS",
    "CVC_DIGITS_AMEX",
    "MAX_EXPIRY_YEAR",
    "MAX_NUMBER_DIGITS",
    "MIN_EXPIRY_YEAR",
    "MIN_NUMBER_DIGITS",
    "PARAM_CVC",
    "PARAM_EXP_MONTH",
    "PARAM_EXP_YEAR",
    "PARAM_NUMBER",
    "SANDBOX_BIN_COUNTRIES",
    "Brand",
    "CardDetails",
    "card_country",
    "detect_brand",
    "luhn_check_digit",
    "luhn_valid",
    "normalize_number",
    "validate_card",
]

Brand = Literal["visa", "mastercard", "amex", "jcb", "unionpay", "discover", "diners", "unknown"]

MIN_NUMBER_DIGITS: Final = 12
MAX_NUMBER_DIGITS: Final = 19
CVC_DIGITS: Final = 3
CVC_DIGITS_AMEX: Final = 4
_MAX_RAW_NUMBER_CHARS: Final = 64  # refuse absurd input before scanning it
_MONTHS_PER_YEAR: Final = 12
MIN_EXPIRY_YEAR: Final = 1000  # exp_year is the 4-digit year; 34 for 2034 is a common mistake
MAX_EXPIRY_YEAR: Final = 9999
_JSON_KINDS: Final[Mapping[type, str]] = MappingProxyType(
    {str: "a string", int: "an integer", list: "an array", dict: "an object"}
)

PARAM_NUMBER: Final = "payment_method[card][number]"
PARAM_EXP_MONTH: Final = "payment_method[card][exp_month]"
PARAM_EXP_YEAR: Final = "payment_method[card][exp_year]"
PARAM_CVC: Final = "payment_method[card][cvc]"

# (first digits as an inclusive integer range, prefix length, brand), most specific first.
_IIN_RANGES: Final[tuple[tuple[int, int, int, Brand], ...]] = (
    (2221, 2720, 4, "mastercard"),
    (3528, 3589, 4, "jcb"),
    (6011, 6011, 4, "discover"),
    (300, 305, 3, "diners"),
    (644, 649, 3, "discover"),
    (34, 34, 2, "amex"),
    (37, 37, 2, "amex"),
    (36, 36, 2, "diners"),
    (38, 38, 2, "diners"),
    (51, 55, 2, "mastercard"),
    (62, 62, 2, "unionpay"),
    (65, 65, 2, "discover"),
    (4, 4, 1, "visa"),
)

# Sandbox issuing-country table: BIN prefixes -> ISO 3166 country. It is a display guess for
# the sandbox, not a real BIN database; add longer prefixes to override a brand default.
SANDBOX_BIN_COUNTRIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "356600": "JP",  # the JCB sandbox test card
    }
)
_BRAND_COUNTRIES: Final[Mapping[Brand, str]] = MappingProxyType({"jcb": "JP", "unionpay": "CN"})
_DEFAULT_COUNTRY: Final = "US"


@dataclass(frozen=True, repr=False)
class CardDetails:
    """A validated card. ``number`` is digits only; ``repr`` shows only ``last4``."""

    number: str = field(repr=False)
    brand: Brand
    last4: str
    bin6: str
    exp_month: int
    exp_year: int

    def __repr__(self) -> str:
        return (
            f"CardDetails(brand={self.brand!r}, last4={self.last4!r}, "
            f"exp_month={self.exp_month}, exp_year={self.exp_year})"
        )

    __str__ = __repr__


def _json_kind(value: object) -> str:
    """The JSON type of a decoded value with its article ("a string"), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number with a fraction"
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _luhn_sum(digits: str, *, double_first: bool) -> int:
    """Luhn sum of ``digits`` read from the right; ``double_first`` doubles the rightmost one."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - ord("0")
        if (position % 2 == 0) == double_first:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total


def _is_ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def luhn_valid(number: str) -> bool:
    """True when ``number`` (ASCII digits only) passes the Luhn mod-10 checksum."""
    if not number or not _is_ascii_digits(number):
        return False
    return _luhn_sum(number, double_first=False) % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload + digit`` pass :func:`luhn_valid` (for test numbers)."""
    if not _is_ascii_digits(payload):
        raise ValueError("payload must be ASCII digits")
    return str(-_luhn_sum(payload, double_first=True) % 10)


def _invalid_number(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_number", param=PARAM_NUMBER)


def normalize_number(raw: object) -> str:
    """Strip spaces and dashes; require 12-19 ASCII digits. Does not check the Luhn digit."""
    if not isinstance(raw, str):
        raise _invalid_number(
            f"the card number must be a JSON string of digits, not {_json_kind(raw)}"
        )
    if len(raw) > _MAX_RAW_NUMBER_CHARS:
        raise _invalid_number(
            f"the card number must have {MIN_NUMBER_DIGITS}-{MAX_NUMBER_DIGITS} digits"
        )
    digits = raw.replace(" ", "").replace("-", "")
    if not _is_ascii_digits(digits):
        raise _invalid_number(
            "the card number may contain only digits (spaces and dashes are ignored)"
        )
    if not MIN_NUMBER_DIGITS <= len(digits) <= MAX_NUMBER_DIGITS:
        raise _invalid_number(
            f"the card number has {len(digits)} digits; it must have "
            f"{MIN_NUMBER_DIGITS}-{MAX_NUMBER_DIGITS}"
        )
    return digits


def detect_brand(number: str) -> Brand:
    """The card brand from its issuer identification number (leading digits)."""
    for low, high, length, brand in _IIN_RANGES:
        head = number[:length]
        if len(head) == length and _is_ascii_digits(head) and low <= int(head) <= high:
            return brand
    return "unknown"


def card_country(number: str) -> str:
    """A deterministic two-letter issuing country for sandbox display (see the BIN table)."""
    for length in range(min(len(number), MAX_NUMBER_DIGITS), 0, -1):
        country = SANDBOX_BIN_COUNTRIES.get(number[:length])
        if country is not None:
            return country
    return _BRAND_COUNTRIES.get(detect_brand(number), _DEFAULT_COUNTRY)


def _json_int(value: object, *, param: str, code: str, what: str, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"{what} must be a JSON integer such as {example}, not {_json_kind(value)}",
            code=code,
            param=param,
        )
    return value


def _check_month(value: object) -> int:
    month = _json_int(
        value, param=PARAM_EXP_MONTH, code="invalid_expiry_month", what="exp_month", example="12"
    )
    if not 1 <= month <= _MONTHS_PER_YEAR:
        raise InvalidRequest(
            f"exp_month must be between 1 and 12; got {month}",
            code="invalid_expiry_month",
            param=PARAM_EXP_MONTH,
        )
    return month


def _check_year(value: object) -> int:
    year = _json_int(
        value, param=PARAM_EXP_YEAR, code="invalid_expiry_year", what="exp_year", example="2034"
    )
    if not MIN_EXPIRY_YEAR <= year <= MAX_EXPIRY_YEAR:
        raise InvalidRequest(
            f"exp_year must be the 4-digit year, e.g. 2034 (not 34); got {year}",
            code="invalid_expiry_year",
            param=PARAM_EXP_YEAR,
        )
    return year


def _check_not_expired(month: int, year: int, today: datetime.date) -> None:
    """A card is valid through the last day of its expiry month."""
    if (year, month) >= (today.year, today.month):
        return
    in_past_year = year < today.year
    raise InvalidRequest(
        f"the card expired in {month:02d}/{year}; ask the customer for a card that has not expired",
        code="invalid_expiry_year" if in_past_year else "invalid_expiry_month",
        param=PARAM_EXP_YEAR if in_past_year else PARAM_EXP_MONTH,
    )


def _check_cvc(value: object, brand: Brand) -> str:
    digits = CVC_DIGITS_AMEX if brand == "amex" else CVC_DIGITS
    if isinstance(value, str) and len(value) == digits and _is_ascii_digits(value):
        return value
    kind = "a JSON string" if isinstance(value, str) else f"a JSON string (not {_json_kind(value)})"
    card = "an Amex card" if brand == "amex" else "this card"
    raise InvalidRequest(
        f"cvc must be {kind} of exactly {digits} digits for {card}, such as "
        f"{'1234' if brand == 'amex' else '123'}; keep leading zeros",
        code="invalid_cvc",
        param=PARAM_CVC,
    )


def validate_card(
    number: object,
    exp_month: object,
    exp_year: object,
    cvc: object,
    *,
    today: datetime.date,
) -> CardDetails:
    """Validate raw card fields from a request; raise ``InvalidRequest`` naming the bad param.

    Checks, in order: number (digits, length, Luhn), expiry month, expiry year, expiry not in the
    past relative to ``today``, then the CVC (4 digits for Amex, else 3). The CVC is checked but
    not kept.
    """
    digits = normalize_number(number)
    if not luhn_valid(digits):
        raise _invalid_number("the card number fails the checksum (Luhn); check it for typos")
    month = _check_month(exp_month)
    year = _check_year(exp_year)
    _check_not_expired(month, year, today)
    brand = detect_brand(digits)
    _check_cvc(cvc, brand)
    return CardDetails(
        number=digits,
        brand=brand,
        last4=digits[-4:],
        bin6=digits[:6],
        exp_month=month,
        exp_year=year,
    )
