"""Redaction of what reaches logs. ``redact_json`` skips the walk when a scan of the text shows
``redact`` would change nothing: whatever the document, its answer must mean exactly what
walking it gives (checked on generated documents full of near-misses), and it keeps the text
as it came only when nothing needed masking."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openpse.domain.redaction import MASK, MAX_DEPTH, redact, redact_json

PAN = "4242424242424242"

keys = st.sampled_from(["id", "amount", "Number", "number", "cvc", "CVC", "card", "metadata",
                        "secret", "note", "pan", "number ", "last4", "iban", "x"])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([PAN, "4242 4242 4242 4242", "4242-4242-4242-4242", "4242424242424241",
                     "1234567890123", "sk_test_abc123", "whsec_Zm9v", "order 42", "ok", "",
                     "pay_01hx987wbv", "caf\u00e9", "tab\there", "number"]),
    st.text(alphabet="0123456789 -skwhec_t", max_size=30),
)
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=25)


@settings(max_examples=600, deadline=None)
@given(documents, st.booleans())
def test_it_means_what_walking_the_document_gives(doc: Any, spaced: bool) -> None:
    raw = (json.dumps(doc, indent=1) if spaced else json.dumps(doc)).encode()
    assert orjson.loads(redact_json(raw)) == redact(orjson.loads(raw))


def test_nothing_to_mask_keeps_the_text_as_it_came() -> None:
    raw = b'{"id": "pay_1", "amount": 1000, "card": {"last4": "4242", "brand": "visa"}}'
    assert redact_json(raw) == raw.decode()


@pytest.mark.parametrize("raw, key, masked", [
    (b'{"number": "' + PAN.encode() + b'"}', "number", MASK),
    (b'{"CVC": "123"}', "CVC", MASK),
    (b'{"\\u0063vc": "123"}', "cvc", MASK),  # an escaped key is still the key
    (b'{"note": "card 4242 4242 4242 4242 thanks"}', "note", "card 424242******4242 thanks"),
    (b'{"n": ' + PAN.encode() + b"}", "n", "424242******4242"),  # unquoted
    (b'{"k": "sk_live_abcdef"}', "k", MASK),
])
def test_what_must_be_masked_is_masked(raw: bytes, key: str, masked: str) -> None:
    assert json.loads(redact_json(raw)) == {key: masked}


def test_a_document_nested_past_the_limit_is_cut_as_before() -> None:
    doc: Any = "deep"
    for _ in range(MAX_DEPTH + 2):
        doc = [doc]
    raw = json.dumps(doc).encode()
    assert orjson.loads(redact_json(raw)) == redact(doc) != doc


def test_a_wide_shallow_document_keeps_its_text() -> None:
    """A page of payments has more brackets than ``MAX_DEPTH`` but is four levels deep: nothing
    to cut, so its text is kept as it came (and the walk is skipped)."""
    page = {"object": "list", "data": [{"id": f"pay_{i}", "metadata": {}, "card": {
        "last4": "4242", "checks": [{"cvc_check": "pass"}]}} for i in range(20)]}
    raw = json.dumps(page).encode()
    assert raw.count(b"{") + raw.count(b"[") > MAX_DEPTH
    assert redact_json(raw) == raw.decode()


@pytest.mark.parametrize("levels", [MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
def test_the_depth_limit_is_where_walking_puts_it(levels: int) -> None:
    """Beside many shallow brackets, a value ``levels`` deep: kept as it came up to the limit,
    cut past it, exactly as ``redact`` cuts it."""
    deep: Any = "deep"
    for i in range(levels - 1):  # the top object is one level: "deep" ends ``levels`` down
        deep = [deep] if i % 2 else {"x": deep}
    doc = {"pad": [{} for _ in range(MAX_DEPTH)], "deep": deep}
    raw = json.dumps(doc).encode()
    assert orjson.loads(redact_json(raw)) == redact(doc)
    if levels <= MAX_DEPTH:
        assert redact_json(raw) == raw.decode()
    else:
        assert redact(doc) != doc


def test_not_json_is_refused() -> None:
    with pytest.raises(ValueError):
        redact_json(b"number=4242424242424242&cvc=123")
