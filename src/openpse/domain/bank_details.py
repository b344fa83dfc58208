"""Bank and identity details of shoppers: IBAN, Brazilian tax ids, Japanese phone numbers and bank
accounts, e-mail addresses, and the refund destinations built from them. Pure rules, no I/O.

Every validator takes the request's value and the ``param`` it came from, and raises
``InvalidRequest`` naming that ``param``. A full IBAN or account number never appears in a
message: messages say what is wrong, views show only the last four characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from openpse.domain.errors import InvalidRequest

__all__ = [
    "DESTINATION_TYPES",
    "IBAN_LENGTHS",
    "BankAccount",
    "TaxId",
    "build_iban",
    "iban_bank_code",
    "iban_mod97",
    "validate_destination",
    "validate_email",
    "validate_iban",
    "validate_jp_phone",
    "validate_tax_id",
]

# IBAN lengths of the SEPA scheme countries (EPC list): a SEPA debit or refund needs one of these.
IBAN_LENGTHS: Final[Mapping[str, int]] = MappingProxyType({
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21, "HU": 28,
    "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31,
    "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "VA": 22,
})
# Where the bank identifier sits in the BBAN (start, end), for display; default: first 4.
_BANK_CODE_SLICES: Final[Mapping[str, tuple[int, int]]] = MappingProxyType({
    "DE": (0, 8), "AT": (0, 5), "CH": (0, 5), "FR": (0, 5), "MC": (0, 5), "IT": (1, 6),
    "SM": (1, 6), "BE": (0, 3), "LU": (0, 3), "FI": (0, 3), "NL": (0, 4), "ES": (0, 4),
    "PT": (0, 4), "GB": (0, 4), "IE": (0, 4), "PL": (0, 8), "SE": (0, 3), "NO": (0, 4),
    "DK": (0, 4),
})
_IBAN_CHARS: Final = re.compile(r"\A[A-Z]{2}[0-9]{2}[A-Z0-9]+\Z")
_IBAN_SEPARATORS: Final = re.compile(r"[ \-]")
MAX_IBAN_INPUT_CHARS: Final = 64
MAX_EMAIL_CHARS: Final = 320
MAX_HOLDER_NAME_CHARS: Final = 70  # SEPA's limit for a name
_EMAIL: Final = re.compile(r"\A[^@\s]{1,64}@[^@\s]+\.[^@\s.]{2,}\Z")
_JP_PHONE_SEPARATORS: Final = re.compile(r"[ \-()]")
_JP_PHONE: Final = re.compile(r"\A0[0-9]{9,10}\Z")  # 10 digits (landline) or 11 (mobile, 050)
_TAX_ID_SEPARATORS: Final = re.compile(r"[ .\-/]")
_CPF: Final = re.compile(r"\A[0-9]{11}\Z")
_CNPJ: Final = re.compile(r"\A[0-9A-Z]{12}[0-9]{2}\Z")  # alphanumeric CNPJ (from July 2026)


# ---- e-mail and phone --------------------------------------------------------------------------

def validate_email(value: Any, param: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_EMAIL_CHARS or not _EMAIL.match(value):
        raise InvalidRequest(f"{param} must be an e-mail address such as hanako@example.jp",
                             param=param)
    return value


def validate_jp_phone(value: Any, param: str) -> str:
    """A Japanese phone number, returned as its digits (``09012345678``); ``+81`` is accepted."""
    text = _JP_PHONE_SEPARATORS.sub("", value) if isinstance(value, str) else ""
    if text.startswith("+81"):
        text = "0" + text[3:].lstrip("0")
    if not _JP_PHONE.match(text):
        raise InvalidRequest(
            f"{param} must be a Japanese phone number of 10 or 11 digits such as 090-1234-5678 "
            "(or +81 90 1234 5678)", param=param)
    return text


# ---- IBAN ------------------------------------------------------------------------------------

def iban_mod97(iban: str) -> int:
    """ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97."""
    moved = iban[4:] + iban[:4]
    remainder = 0
    for ch in moved:
        digits = str(int(ch, 36))  # '0'..'9' -> 0..9, 'A'..'Z' -> 10..35
        for d in digits:
            remainder = (remainder * 10 + int(d)) % 97
    return remainder


def build_iban(country: str, bban: str) -> str:
    """An IBAN with correct check digits for ``country`` + ``bban`` (virtual accounts, tests)."""
    check = 98 - iban_mod97(f"{country}00{bban}")
    return f"{country}{check:02d}{bban}"


def validate_iban(value: Any, param: str) -> str:
    """A SEPA-zone IBAN, normalised (upper case, no spaces); raises ``invalid_iban``."""
    if not isinstance(value, str) or len(value) > MAX_IBAN_INPUT_CHARS:
        raise InvalidRequest(f"{param} must be an IBAN such as DE89 3704 0044 0532 0130 00",
                             code="invalid_iban", param=param)
    iban = _IBAN_SEPARATORS.sub("", value).upper()
    if not _IBAN_CHARS.match(iban):
        raise InvalidRequest(f"{param} is not an IBAN: it must start with a country code and two "
                             "check digits, followed by letters and digits only",
                             code="invalid_iban", param=param)
    country = iban[:2]
    expected = IBAN_LENGTHS.get(country)
    if expected is None:
        raise InvalidRequest(f"{param}: {country} is not a SEPA country; SEPA accounts only",
                             code="invalid_iban", param=param)
    if len(iban) != expected:
        raise InvalidRequest(f"{param}: an IBAN of {country} has {expected} characters, this one "
                             f"has {len(iban)}", code="invalid_iban", param=param)
    if iban_mod97(iban) != 1:
        raise InvalidRequest(f"{param}: the check digits do not match (mod 97); check the IBAN "
                             "for typos", code="invalid_iban", param=param)
    return iban


def iban_bank_code(iban: str) -> str:
    start, end = _BANK_CODE_SLICES.get(iban[:2], (0, 4))
    return iban[4 + start:4 + end]


# ---- Brazilian tax ids (CPF for people, CNPJ for companies) -------------------------------------

@dataclass(frozen=True, repr=False)
class TaxId:
    kind: str  # cpf | cnpj
    value: str  # digits (and, for a new CNPJ, upper-case letters), no punctuation

    def masked(self) -> str:
        """Shown in responses: the type's layout with all but the middle digits hidden."""
        v = self.value
        if self.kind == "cpf":
            return f"***.{v[3:6]}.{v[6:9]}-**"
        return f"**.{v[2:5]}.{v[5:8]}/{v[8:12]}-**"

    def __repr__(self) -> str:
        return f"TaxId({self.kind}, {self.masked()})"


def _check_digit(values: list[int], weights: list[int]) -> int:
    rest = sum(v * w for v, w in zip(values, weights, strict=True)) % 11
    return 0 if rest < 2 else 11 - rest


def _cpf_ok(digits: str) -> bool:
    if len(set(digits)) == 1:  # 000.000.000-00 and the like pass the sums but are invalid
        return False
    vals = [int(d) for d in digits]
    first = _check_digit(vals[:9], list(range(10, 1, -1)))
    second = _check_digit(vals[:10], list(range(11, 1, -1)))
    return vals[9] == first and vals[10] == second


_CNPJ_W1: Final = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
_CNPJ_W2: Final = [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]


def _cnpj_ok(value: str) -> bool:
    if len(set(value)) == 1:
        return False
    vals = [ord(ch) - 48 for ch in value]  # Receita Federal: '0'..'9' -> 0..9, 'A' -> 17 ...
    return vals[12] == _check_digit(vals[:12], _CNPJ_W1) and \
        vals[13] == _check_digit(vals[:13], _CNPJ_W2)


def validate_tax_id(value: Any, param: str) -> TaxId:
    """A CPF (11 digits) or CNPJ (14 characters), punctuation allowed; check digits verified."""
    text = _TAX_ID_SEPARATORS.sub("", value).upper() if isinstance(value, str) else ""
    if _CPF.match(text):
        if _cpf_ok(text):
            return TaxId("cpf", text)
        raise InvalidRequest(f"{param}: the CPF's check digits do not match; check it for typos",
                             code="invalid_tax_id", param=param)
    if _CNPJ.match(text):
        if _cnpj_ok(text):
            return TaxId("cnpj", text)
        raise InvalidRequest(f"{param}: the CNPJ's check digits do not match; check it for typos",
                             code="invalid_tax_id", param=param)
    raise InvalidRequest(f"{param} must be a CPF (11 digits, e.g. 123.456.789-09) or a CNPJ "
                         "(14 characters, e.g. 12.345.678/0001-95)", code="invalid_tax_id",
                         param=param)


# ---- refund destinations ---------------------------------------------------------------------

DESTINATION_TYPES: Final = ("jp_bank_account", "br_bank_account", "iban")
JP_ACCOUNT_TYPES: Final = ("futsu", "toza", "chochiku")  # ordinary, current, savings
BR_ACCOUNT_TYPES: Final = ("checking", "savings")
_FIELDS: Final[Mapping[str, frozenset[str]]] = MappingProxyType({
    "jp_bank_account": frozenset({"type", "bank_code", "branch_code", "account_type",
                                  "account_number", "account_holder_name"}),
    "br_bank_account": frozenset({"type", "bank_code", "branch_code", "account_type",
                                  "account_number", "account_holder_name", "tax_id"}),
    "iban": frozenset({"type", "iban", "account_holder_name"}),
})


@dataclass(frozen=True, repr=False)
class BankAccount:
    """A validated refund destination: ``view`` is safe to show; ``secret`` (the full account
    number or IBAN) is only ever stored encrypted."""

    view: dict[str, Any]
    secret: str

    def __repr__(self) -> str:
        return f"BankAccount({self.view!r})"


def _digits(d: Mapping[str, Any], key: str, pattern: str, param: str, what: str) -> str:
    value = d.get(key)
    if value is None:
        raise InvalidRequest(f"{param}[{key}] is required", code="parameter_missing",
                             param=f"{param}[{key}]")
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise InvalidRequest(f"{param}[{key}] must be {what}", param=f"{param}[{key}]")
    return value


def _holder(d: Mapping[str, Any], param: str) -> str:
    value = d.get("account_holder_name")
    p = f"{param}[account_holder_name]"
    if value is None:
        raise InvalidRequest(f"{p} is required", code="parameter_missing", param=p)
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_HOLDER_NAME_CHARS \
            or not value.isprintable():
        raise InvalidRequest(f"{p} must be 1-{MAX_HOLDER_NAME_CHARS} printable characters",
                             param=p)
    return value.strip()


def _choice(d: Mapping[str, Any], key: str, choices: tuple[str, ...], param: str) -> str:
    value = d.get(key)
    if value not in choices:
        raise InvalidRequest(f"{param}[{key}] must be one of {', '.join(choices)}",
                             code="parameter_missing" if value is None else "parameter_invalid",
                             param=f"{param}[{key}]")
    return str(value)


def validate_destination(value: Any, expected_type: str, param: str = "destination"
                         ) -> BankAccount:
    """The shopper's account a refund is paid to; ``expected_type`` is what the method needs."""
    if not isinstance(value, dict):
        raise InvalidRequest(f"{param} must be an object with type {expected_type!r}",
                             param=param)
    if value.get("type") != expected_type:
        raise InvalidRequest(f"{param}[type] must be {expected_type!r} for this payment's "
                             "method and currency",
                             code="parameter_missing" if value.get("type") is None
                             else "parameter_invalid", param=f"{param}[type]")
    unknown = sorted(set(value) - _FIELDS[expected_type])
    if unknown:
        raise InvalidRequest(f"{param}[{unknown[0]}] is not a field of a {expected_type}",
                             code="parameter_unknown", param=f"{param}[{unknown[0]}]")
    holder = _holder(value, param)
    if expected_type == "iban":
        iban = validate_iban(value.get("iban"), f"{param}[iban]")
        return BankAccount({"type": "iban", "country": iban[:2], "bank_code": iban_bank_code(iban),
                            "last4": iban[-4:], "account_holder_name": holder}, iban)
    if expected_type == "jp_bank_account":
        bank = _digits(value, "bank_code", r"[0-9]{4}", param, "the 4-digit Zengin bank code")
        branch = _digits(value, "branch_code", r"[0-9]{3}", param, "the 3-digit branch code")
        kind = _choice(value, "account_type", JP_ACCOUNT_TYPES, param)
        number = _digits(value, "account_number", r"[0-9]{7}", param,
                         "the 7-digit account number")
        return BankAccount({"type": expected_type, "country": "JP", "bank_code": bank,
                            "branch_code": branch, "account_type": kind, "last4": number[-4:],
                            "account_holder_name": holder}, number)
    bank = _digits(value, "bank_code", r"[0-9]{3}", param, "the 3-digit COMPE bank code")
    branch = _digits(value, "branch_code", r"[0-9]{4}(-[0-9Xx])?", param,
                     "the 4-digit agência (optionally with its check digit, 1234-5)")
    kind = _choice(value, "account_type", BR_ACCOUNT_TYPES, param)
    number = _digits(value, "account_number", r"[0-9]{1,12}-[0-9Xx]", param,
                     "the account number with its check digit, e.g. 12345678-9")
    tax = validate_tax_id(value.get("tax_id"), f"{param}[tax_id]")
    return BankAccount({"type": expected_type, "country": "BR", "bank_code": bank,
                        "branch_code": branch, "account_type": kind,
                        "last4": number.replace("-", "")[-4:], "account_holder_name": holder,
                        "tax_id": tax.masked()}, number)
