"""Standard Webhooks signing: every signature is checked by the reference ``standardwebhooks``."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from openpse.webhooks.signing import (
    MAX_SIGNATURES_PER_HEADER,
    SignatureVerificationError,
    generate_secret,
    headers_for,
    sign,
    signature_header,
    verify,
)

BODY = (
    b'{"id":"evt_01","object":"event","type":"payment.succeeded","data":{"object":{"amount":2000}}}'
)
MSG_ID = "evt_01jd5k7m3qz8x4c2v6b9n0p1r"


def test_generate_secret_is_whsec_and_32_random_bytes() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert len({generate_secret() for _ in range(50)}) == 50


def test_known_answer_from_the_standard_webhooks_spec() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_sign_matches_the_reference_signer() -> None:
    secret = generate_secret()
    ts = 1763773200
    reference = Webhook(secret).sign(MSG_ID, datetime.fromtimestamp(ts, tz=UTC), BODY.decode())
    assert sign(secret, MSG_ID, ts, BODY) == reference


def test_headers_for_has_every_delivery_header_and_verifies_with_the_reference() -> None:
    secret = generate_secret()
    ts = int(time.time())
    headers = headers_for([secret], MSG_ID, ts, BODY)
    assert set(headers) == {
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "content-type",
        "user-agent",
    }
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == str(ts)
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "OpenPSE-Webhooks/1"
    assert Webhook(secret).verify(BODY, headers) == {
        "id": "evt_01",
        "object": "event",
        "type": "payment.succeeded",
        "data": {"object": {"amount": 2000}},
    }
    verify(secret, headers, BODY)


def test_rotation_sends_both_signatures_and_each_secret_alone_verifies() -> None:
    old, new, stranger = generate_secret(), generate_secret(), generate_secret()
    headers = headers_for([old, new], MSG_ID, int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers)
        verify(secret, headers, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(BODY, headers)
    with pytest.raises(SignatureVerificationError, match="no signature"):
        verify(stranger, headers, BODY)


@pytest.mark.parametrize(
    ("field", "value"),
    [("webhook-id", "evt_other"), ("webhook-timestamp", None), ("body", b'{"id":"evt_02"}')],
)
def test_any_changed_byte_fails_both_verifiers(field: str, value: object) -> None:
    secret = generate_secret()
    ts = int(time.time())
    headers = headers_for([secret], MSG_ID, ts, BODY)
    body = BODY
    if field == "body":
        assert isinstance(value, bytes)
        body = value
    elif field == "webhook-timestamp":
        headers[field] = str(ts - 1)
    else:
        assert isinstance(value, str)
        headers[field] = value
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)
    with pytest.raises(SignatureVerificationError):
        verify(secret, headers, body)


def test_timestamp_tolerance_applies_both_ways() -> None:
    secret = generate_secret()
    ts = 1763773200
    headers = headers_for([secret], MSG_ID, ts, BODY)
    verify(secret, headers, BODY, now_s=ts + 300)
    verify(secret, headers, BODY, now_s=ts - 300)
    with pytest.raises(SignatureVerificationError, match="-301 s from now"):
        verify(secret, headers, BODY, now_s=ts + 301)
    with pytest.raises(SignatureVerificationError, match=r"\+301 s from now"):
        verify(secret, headers, BODY, now_s=ts - 301)
    verify(secret, headers, BODY, now_s=ts + 3600, tolerance_s=3600)


def test_verify_reads_header_names_case_insensitively() -> None:
    secret = generate_secret()
    headers = headers_for([secret], MSG_ID, int(time.time()), BODY)
    verify(secret, {k.title(): v for k, v in headers.items()}, BODY)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"webhook-signature": ""}, "missing header"),
        ({"webhook-timestamp": "1763773200.5"}, "whole Unix seconds"),
        ({"webhook-timestamp": "-1"}, "whole Unix seconds"),
        ({"webhook-timestamp": "9" * 20}, "out of range"),
        ({"webhook-signature": "v2,AAAA v1,not-base64!"}, "no signature"),
        (
            {"webhook-signature": " ".join(["v1,AAAA"] * (MAX_SIGNATURES_PER_HEADER + 1))},
            "too many",
        ),
    ],
)
def test_verify_refuses_malformed_headers(change: dict[str, str], message: str) -> None:
    secret = generate_secret()
    ts = 1763773200
    headers = {**headers_for([secret], MSG_ID, ts, BODY), **change}
    with pytest.raises(SignatureVerificationError, match=message):
        verify(secret, headers, BODY, now_s=ts)


def test_unknown_versions_are_skipped_not_fatal() -> None:
    secret = generate_secret()
    ts = int(time.time())
    headers = headers_for([secret], MSG_ID, ts, BODY)
    headers["webhook-signature"] = "v1a,AAAA " + headers["webhook-signature"]
    verify(secret, headers, BODY)
    Webhook(secret).verify(BODY, headers)


@pytest.mark.parametrize(
    "secret",
    [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"x" * 16).decode(),  # shorter than 24 bytes
    ],
)
def test_invalid_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="webhook secret"):
        sign(secret, MSG_ID, 1, BODY)


def test_signature_header_needs_a_bounded_non_empty_list_of_secrets() -> None:
    with pytest.raises(ValueError, match="at least one"):
        signature_header([], MSG_ID, 1, BODY)
    secrets = [generate_secret() for _ in range(MAX_SIGNATURES_PER_HEADER + 1)]
    with pytest.raises(ValueError, match="at most"):
        signature_header(secrets, MSG_ID, 1, BODY)
    with pytest.raises(ValueError, match="negative"):
        sign(generate_secret(), MSG_ID, -1, BODY)
