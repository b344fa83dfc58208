"""Money: currencies, amount validation, display and fee rounding (integers only)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openpse.domain.errors import InvalidRequest
from openpse.domain.money import (
    CURRENCY_EXPONENTS,
    MAX_AMOUNT_MINOR,
    exponent,
    format_amount,
    is_supported,
    parse_amount,
    parse_currency,
    percent_of,
)

REQUIRED_EXPONENTS = {
    **dict.fromkeys(["JPY", "KRW", "VND", "CLP", "ISK"], 0),
    **dict.fromkeys(["KWD", "BHD", "OMR", "JOD", "TND"], 3),
    **dict.fromkeys(
        "USD EUR GBP BRL CNY HKD SGD AUD CAD CHF SEK NOK DKK PLN CZK HUF MXN INR IDR THB PHP MYR"
        " TWD NZD ZAR TRY AED SAR ILS".split(),
        2,
    ),
}


class TestCurrencies:
    @pytest.mark.parametrize(("currency", "expected"), sorted(REQUIRED_EXPONENTS.items()))
    def test_exponent(self, currency: str, expected: int) -> None:
        assert is_supported(currency)
        assert exponent(currency) == expected

    def test_every_exponent_is_0_2_or_3(self) -> None:
        assert set(CURRENCY_EXPONENTS.values()) == {0, 2, 3}

    def test_table_is_read_only(self) -> None:
        with pytest.raises(TypeError):
            CURRENCY_EXPONENTS["XXX"] = 2  # type: ignore[index]

    @pytest.mark.parametrize("code", ["jpy", "Jpy", "XYZ", "", "US", "USDD"])
    def test_unsupported(self, code: str) -> None:
        assert not is_supported(code)

    def test_exponent_of_unknown_raises_key_error(self) -> None:
        with pytest.raises(KeyError):
            exponent("XYZ")


class TestParseCurrency:
    def test_valid(self) -> None:
        assert parse_currency("JPY") == "JPY"
        assert parse_currency("KWD", "payment[currency]") == "KWD"

    def test_lower_case_is_rejected_with_a_hint(self) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_currency("jpy")
        assert info.value.code == "invalid_currency"
        assert info.value.param == "currency"
        assert info.value.message == (
            "currency must be an upper-case ISO 4217 code such as JPY or USD; got 'jpy' "
            "(did you mean 'JPY'?)"
        )

    @pytest.mark.parametrize(
        "value", [None, 392, True, ["JPY"], "JP", "JPY ", "\uff2a\uff30\uff39"]
    )
    def test_wrong_shape(self, value: object) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_currency(value, param="refund[currency]")
        assert info.value.code == "invalid_currency"
        assert info.value.param == "refund[currency]"
        assert "upper-case ISO 4217" in info.value.message

    def test_unsupported_code_lists_what_to_send(self) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_currency("XYZ")
        assert info.value.code == "invalid_currency"
        assert info.value.message.startswith("currency 'XYZ' is not supported; send one of AED,")
        assert "JPY" in info.value.message

    def test_long_garbage_is_not_echoed_in_full(self) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_currency("x" * 5000)
        assert len(info.value.message) < 200


class TestParseAmount:
    @pytest.mark.parametrize("value", [1, 2000, MAX_AMOUNT_MINOR])
    def test_valid(self, value: int) -> None:
        assert parse_amount(value, "JPY") == value

    @pytest.mark.parametrize(
        ("value", "kind"),
        [
            (10.0, "a number with a fraction"),
            (10.5, "a number with a fraction"),
            (True, "a boolean"),
            ("1000", "a string"),
            (None, "null"),
            (Decimal("10"), "Decimal"),
            ([1], "an array"),
        ],
    )
    def test_wrong_type(self, value: object, kind: str) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_amount(value, "JPY")
        assert info.value.code == "invalid_amount"
        assert info.value.param == "amount"
        assert f"not {kind} " in info.value.message

    def test_float_message_explains_minor_units_for_jpy(self) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_amount(10.0, "JPY")
        assert info.value.message == (
            "amount must be a JSON integer counted in the currency's minor unit, not a number "
            "with a fraction (JPY has no minor unit: send 1000 for 1,000 JPY); got 10.0"
        )

    @pytest.mark.parametrize(
        ("currency", "example"),
        [
            ("USD", "USD has 2 decimals: send 1050 for 10.50 USD"),
            ("KWD", "KWD has 3 decimals: send 1050 for 1.050 KWD"),
            ("XYZ", "e.g. send 1000 for 1,000 JPY or 1050 for 10.50 USD"),
        ],
    )
    def test_message_example_per_currency(self, currency: str, example: str) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_amount("10.50", currency, param="capture[amount]")
        assert info.value.param == "capture[amount]"
        assert example in info.value.message
        assert "got '10.50'" in info.value.message

    @pytest.mark.parametrize("value", [0, -1, MAX_AMOUNT_MINOR + 1, 10**30])
    def test_out_of_range(self, value: int) -> None:
        with pytest.raises(InvalidRequest) as info:
            parse_amount(value, "USD")
        assert info.value.code == "amount_out_of_range"
        assert info.value.param == "amount"
        assert "between 1 and 99999999999" in info.value.message

    def test_custom_bounds(self) -> None:
        assert parse_amount(0, "USD", minimum=0) == 0
        assert parse_amount(500, "USD", maximum=500) == 500
        with pytest.raises(InvalidRequest) as info:
            parse_amount(501, "USD", maximum=500)
        assert info.value.code == "amount_out_of_range"

    def test_max_constant(self) -> None:
        assert MAX_AMOUNT_MINOR == 99_999_999_999


class TestFormatAmount:
    @pytest.mark.parametrize(
        ("amount", "currency", "expected"),
        [
            (1000, "JPY", "1,000 JPY"),
            (0, "JPY", "0 JPY"),
            (999, "JPY", "999 JPY"),
            (1_000_000, "KRW", "1,000,000 KRW"),
            (1050, "USD", "10.50 USD"),
            (5, "USD", "0.05 USD"),
            (0, "USD", "0.00 USD"),
            (123_456_789, "EUR", "1,234,567.89 EUR"),
            (MAX_AMOUNT_MINOR, "USD", "999,999,999.99 USD"),
            (1050, "KWD", "1.050 KWD"),
            (1, "BHD", "0.001 BHD"),
            (-1050, "USD", "-10.50 USD"),
            (-1000, "JPY", "-1,000 JPY"),
            # Beyond float precision: a float-based formatter would print ...90 or ...92.
            (10**17 + 1, "USD", "1,000,000,000,000,000.01 USD"),
        ],
    )
    def test_exact_strings(self, amount: int, currency: str, expected: str) -> None:
        assert format_amount(amount, currency) == expected

    @given(
        st.integers(min_value=-(10**24), max_value=10**24),
        st.sampled_from(sorted(CURRENCY_EXPONENTS)),
    )
    def test_round_trips_with_integer_parsing(self, amount: int, currency: str) -> None:
        text = format_amount(amount, currency)
        number, code = text.split(" ")
        assert code == currency
        negative = number.startswith("-")
        major, _, minor = number.lstrip("-").partition(".")
        assert len(minor) == exponent(currency)
        assert all(len(group) == 3 for group in major.split(",")[1:])
        value = int(major.replace(",", "")) * 10 ** exponent(currency) + int(minor or "0")
        assert (-value if negative else value) == amount


class TestPercentOf:
    @pytest.mark.parametrize(
        ("amount", "basis_points", "expected"),
        [
            (1000, 360, 36),  # 3.6% of 1000 = 36 exactly
            (1050, 360, 38),  # 37.8 -> 38
            (1, 5000, 1),  # 0.5 -> 1 (half-up)
            (3, 5000, 2),  # 1.5 -> 2
            (5, 1000, 1),  # 0.5 -> 1
            (4, 1000, 0),  # 0.4 -> 0
            (14, 1000, 1),  # 1.4 -> 1
            (15, 1000, 2),  # 1.5 -> 2
            (0, 360, 0),
            (1000, 0, 0),
            (1000, 10_000, 1000),
            (MAX_AMOUNT_MINOR, 295, 2_950_000_000),  # 2949999999.9705 -> 2950000000
        ],
    )
    def test_exact(self, amount: int, basis_points: int, expected: int) -> None:
        assert percent_of(amount, basis_points) == expected

    @given(st.integers(0, 10**20), st.integers(0, 100_000))
    def test_matches_exact_fraction_half_up(self, amount: int, basis_points: int) -> None:
        exact = Fraction(amount * basis_points, 10_000)
        expected = int(exact + Fraction(1, 2))  # int() floors a non-negative Fraction
        assert percent_of(amount, basis_points) == expected

    @pytest.mark.parametrize(("amount", "basis_points"), [(-1, 100), (100, -1)])
    def test_negative_inputs_are_refused(self, amount: int, basis_points: int) -> None:
        with pytest.raises(ValueError, match="non-negative"):
            percent_of(amount, basis_points)
