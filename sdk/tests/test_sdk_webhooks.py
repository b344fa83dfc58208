"""Webhook verification against hand-written vectors, and the stale-event helpers.

The expected signatures were computed outside Python with ``openssl dgst -sha256 -mac HMAC``
(the first is also the Standard Webhooks specification's own example).
"""

from __future__ import annotations

import base64
import threading
from typing import Any

import pytest

from openpse_sdk import webhooks
from openpse_sdk.errors import SignatureVerificationError

# The Standard Webhooks specification's example.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # noqa: S105 - a public test vector
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# An OpenPSE-shaped delivery: secret = whsec_ + base64(bytes 0x00..0x1f).
SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="  # noqa: S105 - a test vector
OTHER = "whsec_" + base64.b64encode(b"\x01" * 32).decode()
EVT_ID = "evt_01JD5Z8Q3X"
TS = 1763773200
BODY = (
    b'{"id":"evt_01JD5Z8Q3X","object":"event","type":"payment.succeeded",'
    b'"data":{"object":{"id":"pay_1","object":"payment","version":3}}}'
)
SIG = "v1,fbqSkp5YOQV43Dmi0W6SvMhZjxOUefSK5l1FsQYJatw="


def _headers(sig: str = SIG, ts: int = TS, msg_id: str = EVT_ID) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}


def _reason(**kw: Any) -> str:
    args: dict[str, Any] = {"payload": BODY, "headers": _headers(), "secret_or_secrets": SECRET,
                            "now": TS}
    args.update(kw)
    with pytest.raises(SignatureVerificationError) as info:
        webhooks.verify(args.pop("payload"), args.pop("headers"), args.pop("secret_or_secrets"),
                        **args)
    assert info.value.code is not None
    return info.value.code


class TestVectors:
    def test_spec_example_signs_and_verifies(self) -> None:
        signature = webhooks.sign(SPEC_BODY, SPEC_SECRET, msg_id=SPEC_ID, timestamp_s=SPEC_TS)
        assert signature == SPEC_SIG
        event = webhooks.verify(SPEC_BODY, _headers(SPEC_SIG, SPEC_TS, SPEC_ID), SPEC_SECRET,
                                now=SPEC_TS)
        assert event == {"test": 2432232314}

    def test_openpse_vector(self) -> None:
        assert webhooks.sign(BODY, SECRET, msg_id=EVT_ID, timestamp_s=TS) == SIG
        event = webhooks.verify(BODY, _headers(), SECRET, now=TS)
        assert event["data"]["object"]["version"] == 3

    def test_secret_without_prefix_and_str_payload(self) -> None:
        bare = SECRET.removeprefix("whsec_")
        assert webhooks.verify(BODY.decode(), _headers(), bare, now=TS)["id"] == EVT_ID

    def test_header_names_are_case_insensitive(self) -> None:
        headers = {k.upper(): v for k, v in _headers().items()}
        assert webhooks.verify(BODY, headers, SECRET, now=TS)["id"] == EVT_ID

    def test_signed_headers_round_trip(self) -> None:
        headers = webhooks.signed_headers(BODY, [SECRET, OTHER], msg_id=EVT_ID, timestamp_s=TS)
        assert headers["webhook-signature"].split()[0] == SIG
        assert webhooks.verify(BODY, headers, OTHER, now=TS)["id"] == EVT_ID


class TestRotation:
    def test_any_signature_with_any_configured_secret(self) -> None:
        other_sig = webhooks.sign(BODY, OTHER, msg_id=EVT_ID, timestamp_s=TS)
        both = _headers(f"{other_sig} {SIG}")
        assert webhooks.verify(BODY, both, SECRET, now=TS)["id"] == EVT_ID
        assert webhooks.verify(BODY, both, OTHER, now=TS)["id"] == EVT_ID
        # the receiver holds both secrets while the delivery carries only the new signature
        assert webhooks.verify(BODY, _headers(), [OTHER, SECRET], now=TS)["id"] == EVT_ID

    def test_unknown_versions_and_garbage_are_skipped(self) -> None:
        headers = _headers(f"v2,{SIG[3:]} v1,!!notbase64!! {SIG}")
        assert webhooks.verify(BODY, headers, SECRET, now=TS)["id"] == EVT_ID
        assert _reason(headers=_headers(f"v2,{SIG[3:]}")) == "no_matching_signature"

    def test_too_many_signatures(self) -> None:
        assert _reason(headers=_headers(" ".join([SIG] * 17))) == "no_matching_signature"


class TestRefusals:
    def test_wrong_secret(self) -> None:
        assert _reason(secret_or_secrets=OTHER) == "no_matching_signature"

    def test_tampered_body(self) -> None:
        assert _reason(payload=BODY.replace(b'"version":3', b'"version":4')) == (
            "no_matching_signature")

    def test_id_is_signed(self) -> None:
        assert _reason(headers=_headers(msg_id="evt_other")) == "no_matching_signature"

    def test_re_signed_timestamp_must_match(self) -> None:
        assert _reason(headers=_headers(ts=TS + 1), now=TS) == "no_matching_signature"

    @pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_missing_header(self, missing: str) -> None:
        headers = _headers()
        del headers[missing]
        assert _reason(headers=headers) == "missing_header"

    @pytest.mark.parametrize("value", ["1763773200.5", "-1", "2026-11-22T01:02:03Z", "9" * 13])
    def test_malformed_timestamp(self, value: str) -> None:
        headers = {**_headers(), "webhook-timestamp": value}
        assert _reason(headers=headers) == "invalid_timestamp"

    def test_tolerance_in_both_directions(self) -> None:
        assert webhooks.verify(BODY, _headers(), SECRET, now=TS + 300)["id"] == EVT_ID
        assert webhooks.verify(BODY, _headers(), SECRET, now=TS - 300)["id"] == EVT_ID
        assert _reason(now=TS + 301) == "timestamp_too_old"
        assert _reason(now=TS - 301) == "timestamp_too_new"
        assert _reason(now=TS + 61, tolerance_s=60) == "timestamp_too_old"

    def test_not_json(self) -> None:
        headers = webhooks.signed_headers(b"[1, 2]", SECRET, msg_id="m", timestamp_s=TS)
        assert _reason(payload=b"[1, 2]", headers=headers) == "invalid_payload"

    @pytest.mark.parametrize("secret", ["", "whsec_", "whsec_***", []])
    def test_misconfigured_secret_is_a_value_error(self, secret: Any) -> None:
        with pytest.raises(ValueError):
            webhooks.verify(BODY, _headers(), secret, now=TS)

    def test_error_carries_the_header(self) -> None:
        with pytest.raises(SignatureVerificationError) as info:
            webhooks.verify(BODY, _headers(), OTHER, now=TS)
        assert info.value.sig_header == SIG
        assert "secret" in str(info.value)


def _event(object_id: str, version: int) -> dict[str, Any]:
    return {"id": f"evt_{object_id}_{version}", "data": {"object": {"id": object_id,
                                                                   "version": version}}}


class TestStaleness:
    def test_is_stale(self) -> None:
        assert webhooks.is_stale(_event("pay_1", 3), None) is False
        assert webhooks.is_stale(_event("pay_1", 3), 2) is False
        assert webhooks.is_stale(_event("pay_1", 3), 3) is True  # a repeat
        assert webhooks.is_stale(_event("pay_1", 3), 5) is True  # arrived late
        with pytest.raises(ValueError):
            webhooks.is_stale({"data": {"object": {"version": "3"}}}, 1)

    def test_tracker_is_order_safe(self) -> None:
        tracker = webhooks.VersionTracker()
        applied: list[int] = []
        for version in [2, 1, 3, 3, 2, 5, 4]:
            event = _event("pay_1", version)
            if not tracker.is_stale(event):
                applied.append(version)
                tracker.record(event)
        assert applied == [2, 3, 5]
        assert tracker.last_seen("pay_1") == 5
        assert tracker.last_seen("pay_2") is None

    def test_tracker_is_bounded(self) -> None:
        tracker = webhooks.VersionTracker(max_objects=2)
        for name in ("a", "b", "c"):
            tracker.record(_event(name, 1))
        assert [tracker.last_seen(n) for n in ("a", "b", "c")] == [None, 1, 1]

    def test_tracker_threads(self) -> None:
        tracker = webhooks.VersionTracker()

        def work(offset: int) -> None:
            for version in range(1 + offset, 200, 4):
                tracker.record(_event("pay_1", version))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert tracker.last_seen("pay_1") == 199
