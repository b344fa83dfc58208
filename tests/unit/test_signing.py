"""Request signing (CONTRACT §2). Every expected value below was computed independently
(openssl dgst / hand-derived canonical forms), not by the code under test."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openpse.domain.errors import AuthenticationFailed
from openpse.domain.signing import (
    NONCE_RE,
    TIMESTAMP_RE,
    body_sha256,
    canonical_query,
    is_valid_nonce,
    parse_timestamp,
    sign,
    signatures_equal,
    string_to_sign,
)

SECRET = "sk_test_5f3c9a1e7b2d4c6a8e0f1a3b5c7d9e1f"
TIMESTAMP = "1763773200"
NONCE = "n0nce-AbC_123456789"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

GET_QUERY_ON_WIRE = "status=succeeded&limit=2&merchant_order_id=%E6%B3%A8%E6%96%87%20%2342"
GET_CANONICAL = "limit=2&merchant_order_id=%E6%B3%A8%E6%96%87%20%2342&status=succeeded"
GET_SIGNATURE = "6434311bcf95503f20276beac19640b94243b1aaad4a01f99f15195f46ccb8c4"

POST_BODY = (
    b'{"amount":2000,"currency":"JPY","merchant_order_id":"ord-1001","payment_method":'
    b'{"type":"card","card":{"number":"4242424242424242","exp_month":12,"exp_year":2034,'
    b'"cvc":"123"}},"confirm":true}'
)
POST_BODY_SHA256 = "492c5360062a7b59fa105201149dfb45008b73f3249206832b5d3f32d5175c1a"
POST_SIGNATURE = "17db9f2a078fea38f7006b30349e53ac01bc7968b0d0bf7b9dd7cb42fb242b51"


class TestContractWorkedExamples:
    def test_get_canonical_query(self) -> None:
        assert canonical_query(GET_QUERY_ON_WIRE) == GET_CANONICAL

    def test_get_query_sent_unencoded_gives_the_same_canonical_form(self) -> None:
        assert (
            canonical_query(
                "status=succeeded&limit=2&merchant_order_id=注文 #42".replace("#", "%23")
            )
            == GET_CANONICAL
        )

    def test_get_string_to_sign_and_signature(self) -> None:
        sts = string_to_sign("GET", "/v1/payments", GET_QUERY_ON_WIRE, TIMESTAMP, NONCE, b"")
        assert sts == "\n".join(
            ["GET", "/v1/payments", GET_CANONICAL, TIMESTAMP, NONCE, EMPTY_SHA256]
        )
        assert sign(SECRET, sts) == GET_SIGNATURE

    def test_post_body_hash_and_signature(self) -> None:
        assert body_sha256(POST_BODY) == POST_BODY_SHA256
        sts = string_to_sign("POST", "/v1/payments", "", TIMESTAMP, NONCE, POST_BODY)
        assert sts == f"POST\n/v1/payments\n\n{TIMESTAMP}\n{NONCE}\n{POST_BODY_SHA256}"
        assert sign(SECRET, sts) == POST_SIGNATURE

    def test_integer_timestamp_signs_like_its_header_text(self) -> None:
        sts = string_to_sign("POST", "/v1/payments", "", 1763773200, NONCE, POST_BODY)
        assert sign(SECRET, sts) == POST_SIGNATURE


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("", "", id="empty"),
        pytest.param("b=2&a=3&a=1", "a=1&a=3&b=2", id="repeated-keys-keep-every-pair"),
        pytest.param("a=b&a=B&a=%41", "a=A&a=B&a=b", id="same-key-sorted-by-encoded-value"),
        pytest.param(
            "a_b=1&a~b=2&a%20b=3&a-b=4",
            "a%20b=3&a-b=4&a_b=1&a~b=2",
            id="sorted-by-encoded-key-bytes",
        ),
        pytest.param("q=a+b", "q=a%2Bb", id="plus-stays-a-plus"),
        pytest.param("q=a%2bb", "q=a%2Bb", id="encoded-plus-upper-cased"),
        pytest.param("k=%e6%b3%a8%2a", "k=%E6%B3%A8%2A", id="lower-case-hex-normalised"),
        pytest.param("t=a~b*c", "t=a~b%2Ac", id="tilde-kept-star-encoded"),
        pytest.param("u=%7E%2D%2E%5F", "u=~-._", id="encoded-unreserved-decoded"),
        pytest.param("名=値&a=1", "%E5%90%8D=%E5%80%A4&a=1", id="unicode-key-raw"),
        pytest.param(
            "%E5%90%8D=%E5%80%A4&a=1", "%E5%90%8D=%E5%80%A4&a=1", id="unicode-key-encoded"
        ),
        pytest.param("s=a b", "s=a%20b", id="space-as-%20"),
        pytest.param("a=1&&b=2&", "a=1&b=2", id="empty-segments-skipped"),
        pytest.param("flag&a=1", "a=1&flag=", id="pair-without-equals-has-empty-value"),
        pytest.param("a==b", "a=%3Db", id="split-on-first-equals"),
        pytest.param("=v", "=v", id="empty-key"),
        pytest.param("p=100%", "p=100%25", id="stray-percent-taken-literally"),
        pytest.param("r=%2F%3F%26%3D", "r=%2F%3F%26%3D", id="reserved-chars-stay-encoded"),
    ],
)
def test_canonical_query_vectors(raw: str, expected: str) -> None:
    assert canonical_query(raw) == expected


class TestHandComputedSignatures:
    def test_percent_encoded_path_kept_as_sent_and_method_upper_cased(self) -> None:
        body = b'{"amount":500}'
        assert body_sha256(body) == (
            "0780491803d7a0848aa262e346d8b1a3d7cfa31fe7655948de034ec7c10f84d0"
        )
        sts = string_to_sign("post", "/v1/payments/pay%5F1/capture", "", TIMESTAMP, NONCE, body)
        assert sts.splitlines()[:2] == ["POST", "/v1/payments/pay%5F1/capture"]
        assert sign(SECRET, sts) == (
            "4913324600add6558aa55e46d1d2a944874dc8b98e15adf321cdad0c0dc1b62a"
        )

    def test_get_with_plus_unicode_and_bare_key(self) -> None:
        sts = string_to_sign("GET", "/v1/payments", "q=a+b&%e6%b3%a8=1&z", TIMESTAMP, NONCE, b"")
        assert sts.split("\n")[2] == "%E6%B3%A8=1&q=a%2Bb&z="
        assert sign(SECRET, sts) == (
            "6e2aeafe6c7be2699b825fc7613a7a8eef29cf2c6a0b3a17ca8261820a7bf722"
        )

    def test_secret_is_keyed_by_its_utf8_bytes(self) -> None:
        assert sign("sk_test_é", "x") == (
            "2f8fcf2e37c7af06540578799e51953963722f86f388f97d0c035c9a7843f28c"
        )

    def test_empty_body_hash(self) -> None:
        assert body_sha256(b"") == EMPTY_SHA256

    def test_string_to_sign_has_six_lines_and_no_trailing_newline(self) -> None:
        sts = string_to_sign("GET", "/v1/balance", "", TIMESTAMP, NONCE, b"")
        assert sts.count("\n") == 5
        assert not sts.endswith("\n")


class TestSignaturesEqual:
    def test_equal(self) -> None:
        assert signatures_equal(GET_SIGNATURE, GET_SIGNATURE)

    def test_different(self) -> None:
        assert not signatures_equal(GET_SIGNATURE, POST_SIGNATURE)
        assert not signatures_equal(GET_SIGNATURE, GET_SIGNATURE[:-1])
        assert not signatures_equal(GET_SIGNATURE, GET_SIGNATURE.upper())

    def test_non_ascii_input_does_not_raise(self) -> None:
        assert not signatures_equal(GET_SIGNATURE, "é" * 64)


class TestNonceAndTimestampPatterns:
    @pytest.mark.parametrize("nonce", [NONCE, "a" * 16, "Z_-9" * 16])
    def test_valid_nonces(self, nonce: str) -> None:
        assert is_valid_nonce(nonce)

    @pytest.mark.parametrize(
        "nonce", ["a" * 15, "a" * 65, "abcdefghijklmno=", "abcdefghijklmnop\n", "abcdefghijklmnó1"]
    )
    def test_invalid_nonces(self, nonce: str) -> None:
        assert not is_valid_nonce(nonce)
        assert NONCE_RE.match(nonce) is None

    def test_timestamp_pattern_refuses_trailing_newline(self) -> None:
        assert TIMESTAMP_RE.match("1763773200\n") is None


class TestParseTimestamp:
    @pytest.mark.parametrize(
        ("raw", "expected"), [(TIMESTAMP, 1763773200), ("0", 0), ("9" * 12, 999_999_999_999)]
    )
    def test_whole_seconds(self, raw: str, expected: int) -> None:
        assert parse_timestamp(raw) == expected

    def test_milliseconds(self) -> None:
        with pytest.raises(AuthenticationFailed) as info:
            parse_timestamp("1763773200000")
        assert info.value.code == "invalid_timestamp"
        assert info.value.message == (
            "X-PSE-Timestamp looks like milliseconds; send whole seconds since the Unix epoch, "
            "e.g. 1763773200"
        )

    def test_rfc3339_text(self) -> None:
        with pytest.raises(AuthenticationFailed) as info:
            parse_timestamp("2026-11-22T09:00:00+08:00")
        assert info.value.code == "invalid_timestamp"
        assert "not a formatted time" in info.value.message
        assert "UTC" in info.value.message
        # `date -u -d '2026-11-22T09:00:00+08:00' +%s` prints 1795309200.
        assert "(that time is 1795309200)" in info.value.message

    def test_rfc3339_zulu_text_converted(self) -> None:
        with pytest.raises(AuthenticationFailed) as info:
            parse_timestamp("2025-11-22T01:00:00Z")
        # `date -u -d @1763773200` prints Sat Nov 22 01:00:00 UTC 2025.
        assert "(that time is 1763773200)" in info.value.message

    def test_rfc3339_without_offset_gets_no_conversion_hint(self) -> None:
        with pytest.raises(AuthenticationFailed) as info:
            parse_timestamp("2026-11-22 09:00:00")
        assert "not a formatted time" in info.value.message
        assert "that time is" not in info.value.message

    @pytest.mark.parametrize("raw", ["", "-1", "1763773200.5", " 1763773200", "0x10", "١٢٣"])
    def test_other_garbage_gets_the_generic_message(self, raw: str) -> None:
        with pytest.raises(AuthenticationFailed) as info:
            parse_timestamp(raw)
        assert info.value.code == "invalid_timestamp"
        assert "1-12 decimal digits" in info.value.message

    def test_long_garbage_is_not_echoed_in_full(self) -> None:
        with pytest.raises(AuthenticationFailed) as info:
            parse_timestamp("x" * 10_000)
        assert len(info.value.message) < 200


_QUERY_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="&="), max_size=12)


@given(st.lists(st.tuples(_QUERY_TEXT, _QUERY_TEXT), max_size=8))
def test_canonical_query_is_idempotent_and_order_independent(
    pairs: list[tuple[str, str]],
) -> None:
    raw = "&".join(f"{k}={v}" for k, v in pairs)
    canonical = canonical_query(raw)
    assert canonical_query(canonical) == canonical
    assert canonical_query("&".join(reversed(raw.split("&")))) == canonical
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%=&")
    assert set(canonical) <= allowed


_WIRE_TOKENS = [*"aZ09-._~+*%/ =&?#", "%2B", "%e6%b3%a8", "%41", "%zz", "注"]
_WIRE_TEXT = st.lists(st.sampled_from(_WIRE_TOKENS), max_size=20).map("".join)


@given(
    st.sampled_from(["GET", "post", "DELETE"]),
    _WIRE_TEXT,
    st.binary(max_size=64),
)
def test_sdk_copy_signs_exactly_like_the_server(method: str, raw_query: str, body: bytes) -> None:
    sdk_signing = pytest.importorskip("openpse_sdk._signing")
    server_sts = string_to_sign(method, "/v1/payments", raw_query, TIMESTAMP, NONCE, body)
    sdk_sts = sdk_signing.string_to_sign(method, "/v1/payments", raw_query, TIMESTAMP, NONCE, body)
    assert sdk_sts == server_sts
    assert sdk_signing.sign(SECRET, sdk_sts) == sign(SECRET, server_sts)
