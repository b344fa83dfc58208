"""Money: integer amounts in a currency's minor unit, ISO 4217 currencies, display, fees.

An amount is always an ``int`` counted in the currency's minor unit (CONTRACT §1): 1000 JPY is
``1000``, 10.50 USD is ``1050``, 1.050 KWD is ``1050``. No float ever holds money here; display
and fee arithmetic use integer division only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from openpse.domain.errors import InvalidRequest

__all__ = [
    "CURRENCY_EXPONENTS",
    "MAX_AMOUNT_MINOR",
    "MIN_AMOUNT_MINOR",
    "exponent",
    "format_amount",
    "is_supported",
    "parse_amount",
    "parse_currency",
    "percent_of",
]

# Largest amount we accept in any currency, in minor units (999,999,999.99 USD; 99.9 bn JPY).
# It keeps every sum of a few amounts far below 2**63 so database BIGINT columns never overflow.
MAX_AMOUNT_MINOR: Final = 99_999_999_999
MIN_AMOUNT_MINOR: Final = 1
BASIS_POINTS_PER_UNIT: Final = 10_000
_REPR_LIMIT_CHARS: Final = 40
_CURRENCY_RE: Final = re.compile(r"\A[A-Z]{3}\Z")
_JSON_KINDS: Final[Mapping[type, str]] = MappingProxyType(
    {str: "a string", int: "an integer", list: "an array", dict: "an object"}
)

# ISO 4217 minor-unit exponents. Extend freely; an unlisted code is rejected as unsupported.
CURRENCY_EXPONENTS: Final[Mapping[str, int]] = MappingProxyType(
    {
        # exponent 0: the major unit is the smallest unit
        **dict.fromkeys(
            "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF".split(), 0
        ),
        # exponent 3
        **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
        # exponent 2
        **dict.fromkeys(
            (
                "AED ARS AUD BDT BGN BRL CAD CHF CNY COP CZK DKK EGP EUR GBP GHS HKD HUF IDR ILS"
                " INR KES KZT LKR MAD MXN MYR NGN NOK NZD PEN PHP PKR PLN QAR RON SAR SEK SGD THB"
                " TRY TWD UAH USD ZAR"
            ).split(),
            2,
        ),
    }
)


def is_supported(currency: str) -> bool:
    """True when ``currency`` is an upper-case code in :data:`CURRENCY_EXPONENTS`."""
    return currency in CURRENCY_EXPONENTS


def exponent(currency: str) -> int:
    """The ISO 4217 minor-unit exponent of ``currency`` (JPY 0, USD 2, KWD 3).

    Raises ``KeyError`` for an unsupported code: callers validate with :func:`parse_currency`.
    """
    return CURRENCY_EXPONENTS[currency]


def _json_kind(value: object) -> str:
    """The JSON type of a decoded value with its article ("a string"), for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number with a fraction"
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _echo(value: object) -> str:
    """A received value for a message, shortened: strings as repr, others as JSON text."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)
    if len(text) <= _REPR_LIMIT_CHARS:
        return text
    return text[: _REPR_LIMIT_CHARS - 3] + "..."


def parse_currency(value: object, param: str = "currency") -> str:
    """Validate a currency from a request; return it unchanged.

    Raises ``InvalidRequest(code="invalid_currency")`` unless ``value`` is a supported upper-case
    ISO 4217 code.
    """
    if isinstance(value, str) and _CURRENCY_RE.match(value):
        if is_supported(value):
            return value
        supported = ", ".join(sorted(CURRENCY_EXPONENTS))
        raise InvalidRequest(
            f"currency {value!r} is not supported; send one of {supported}",
            code="invalid_currency",
            param=param,
        )
    hint = ""
    if isinstance(value, str) and is_supported(value.strip().upper()):
        hint = f" (did you mean {value.strip().upper()!r}?)"
    raise InvalidRequest(
        f"{param} must be an upper-case ISO 4217 code such as JPY or USD; got {_echo(value)}{hint}",
        code="invalid_currency",
        param=param,
    )


def _amount_example(currency: str) -> str:
    """How to write an amount: 'USD has 2 decimals: send 1050 for 10.50 USD'."""
    if not is_supported(currency):
        return "e.g. send 1000 for 1,000 JPY or 1050 for 10.50 USD"
    places = exponent(currency)
    if places == 0:
        return f"{currency} has no minor unit: send 1000 for {format_amount(1000, currency)}"
    return f"{currency} has {places} decimals: send 1050 for {format_amount(1050, currency)}"


def parse_amount(
    value: object,
    currency: str,
    param: str = "amount",
    *,
    minimum: int = MIN_AMOUNT_MINOR,
    maximum: int = MAX_AMOUNT_MINOR,
) -> int:
    """Validate an amount from a request: an ``int`` (never bool or float) in the minor unit.

    Raises ``InvalidRequest`` with ``invalid_amount`` for a wrong type and
    ``amount_out_of_range`` outside ``[minimum, maximum]``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"{param} must be a JSON integer counted in the currency's minor unit, not "
            f"{_json_kind(value)} ({_amount_example(currency)}); got {_echo(value)}",
            code="invalid_amount",
            param=param,
        )
    if not minimum <= value <= maximum:
        raise InvalidRequest(
            f"{param} must be between {minimum} and {maximum} in the minor unit of {currency} "
            f"({_amount_example(currency)}); got {value}",
            code="amount_out_of_range",
            param=param,
        )
    return value


def _group_thousands(digits: str) -> str:
    head = len(digits) % 3 or 3
    groups = [digits[:head]] + [digits[i : i + 3] for i in range(head, len(digits), 3)]
    return ",".join(groups)


def format_amount(amount: int, currency: str) -> str:
    """Display text for an amount: ``format_amount(1050, "USD") == "10.50 USD"``.

    Thousands are grouped with commas (``"1,000 JPY"``); negative amounts get a leading ``-``.
    Integer arithmetic only.
    """
    places = exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**places)
    text = _group_thousands(str(major))
    if places:
        text += "." + str(minor).zfill(places)
    return f"{sign}{text} {currency}"


def percent_of(amount: int, basis_points: int) -> int:
    """``amount * basis_points / 10000`` rounded half-up, in integers (a 3.6% fee is 360 bp).

    Both arguments must be non-negative: a fee is never negative. Raises ``ValueError`` otherwise.
    """
    if amount < 0 or basis_points < 0:
        raise ValueError(f"percent_of needs non-negative inputs; got {amount}, {basis_points}")
    return (amount * basis_points + BASIS_POINTS_PER_UNIT // 2) // BASIS_POINTS_PER_UNIT
