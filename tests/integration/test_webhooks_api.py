"""Webhook endpoints and events over the real API (CONTRACT §4, §5; RELIABILITY 10, 22, 23).

The ``server`` fixture runs ``openpse serve`` with its worker (OPENPSE_ALLOW_LOCAL_WEBHOOKS=1),
so a payment made through the API reaches a local receiver by itself; every request that
arrives is checked with the ``standardwebhooks`` reference verifier.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.conftest import MerchantKit, new_merchant
from tests.support.api_asserts import assert_error
from tests.support.ledger import VISA, payment_body
from tests.support.receiver import Receiver, verify_all

EP = "/v1/webhook_endpoints"


def create(raw: Any, url: str, events: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    res = raw.post(EP, {"url": url, "enabled_events": events or ["*"], **extra})
    assert res.status_code == 201, res.text
    return dict(res.json())


def patch(raw: Any, path: str, body: dict[str, Any]) -> Any:
    return raw.request("PATCH", path, json_body=body)


async def test_endpoint_lifecycle(merchant: MerchantKit) -> None:
    raw = merchant.raw()
    with Receiver() as r:
        ep = create(raw, r.url("/hook"), ["payment.succeeded", "refund.succeeded"],
                    description="orders service")
        assert ep["id"].startswith("we_") and ep["object"] == "webhook_endpoint"
        assert ep["secret"].startswith("whsec_") and len(ep["secret"]) >= 6 + 32
        assert (ep["livemode"], ep["status"], ep["version"]) == (False, "enabled", 1)
        assert ep["enabled_events"] == ["payment.succeeded", "refund.succeeded"]
        assert ep["created"].endswith("Z") and ep["updated"].endswith("Z")
        got = raw.get(f"{EP}/{ep['id']}").json()
        assert "secret" not in got and got == {k: v for k, v in ep.items() if k != "secret"}
        assert [e["id"] for e in raw.get(EP).json()["data"]] == [ep["id"]]

        res = patch(raw, f"{EP}/{ep['id']}", {"url": "http://169.254.169.254/hook"})
        assert_error(res, 400, "invalid_request_error", "invalid_webhook_url", param="url")
        res = patch(raw, f"{EP}/{ep['id']}", {"enabled_events": ["payment.teleported"]})
        assert_error(res, 400, "invalid_request_error", "invalid_event_type",
                     param="enabled_events")
        assert raw.get(f"{EP}/{ep['id']}").json()["version"] == 1  # nothing written

        res = patch(raw, f"{EP}/{ep['id']}", {"url": r.url("/v2"), "enabled_events": ["*"]})
        assert res.status_code == 200, res.text
        assert (res.json()["url"], res.json()["enabled_events"], res.json()["version"]) == (
            r.url("/v2"), ["*"], 2)
        off = patch(raw, f"{EP}/{ep['id']}", {"enabled": False}).json()
        assert (off["status"], off["disabled_reason"]) == ("disabled", "requested")
        on = patch(raw, f"{EP}/{ep['id']}", {"enabled": True}).json()
        assert (on["status"], on["disabled_reason"], on["version"]) == ("enabled", None, 4)

        rotated = raw.post(f"{EP}/{ep['id']}/rotate_secret",
                           {"expire_previous_in_seconds": 600}).json()
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != ep["secret"]
        assert rotated["previous_secret_expires_at"].endswith("Z")
        assert "secret" not in raw.get(f"{EP}/{ep['id']}").json()

        gone = raw.request("DELETE", f"{EP}/{ep['id']}")
        assert gone.status_code == 200 and gone.json() == {
            "id": ep["id"], "object": "webhook_endpoint", "livemode": False, "deleted": True}
        assert_error(raw.get(f"{EP}/{ep['id']}"), 404, "invalid_request_error",
                     "resource_missing")


@pytest.mark.parametrize("body,param,code", [
    ({"url": "https://example.com/h", "enabled_events": []}, "enabled_events",
     "parameter_invalid"),
    ({"url": "https://example.com/h", "enabled_events": ["*", "payment.failed"]},
     "enabled_events", "parameter_invalid"),
    ({"url": "https://example.com/h"}, "enabled_events", "parameter_missing"),
    ({"url": "https://example.com/h", "enabled_events": ["*"], "secret": "whsec_x"}, "secret",
     "parameter_unknown"),
    ({"url": "https://example.com/h", "enabled_events": ["*"], "status": "disabled"}, "status",
     "parameter_unknown"),
    ({"url": 5, "enabled_events": ["*"]}, "url", "parameter_invalid"),
])
async def test_malformed_creates_are_refused_and_write_nothing(
    merchant: MerchantKit, body: dict[str, Any], param: str, code: str
) -> None:
    raw = merchant.raw()
    assert_error(raw.post(EP, body), 400, "invalid_request_error", code, param=param)
    assert raw.get(EP).json()["data"] == []


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fd00:ec2::254]/",  # AWS metadata over IPv6
    "http://[::ffff:127.0.0.1]:8080/",  # loopback dressed as IPv6
    "http://0.0.0.0:8080/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.0.1/",
    "http://2130706433/",  # 127.0.0.1 as a decimal number
    "http://0x7f000001/",  # ... and in hex
    "http://0177.0.0.1/",  # ... and in octal
    "http://127.1/",
    "http://[fe80::1]/",
    "ftp://example.com/hook",
    "http://user:pass@example.com/hook",
])
async def test_ssrf_targets_are_refused_at_creation(merchant: MerchantKit, url: str) -> None:
    """Even on a sandbox server that allows loopback receivers (RELIABILITY 23)."""
    raw = merchant.raw()
    res = raw.post(EP, {"url": url, "enabled_events": ["*"]})
    err = assert_error(res, 400, "invalid_request_error", "invalid_webhook_url", param="url")
    assert "169.254.169.254" not in err["message"] or "169.254.169.254" in url
    assert raw.get(EP).json()["data"] == []


async def test_a_payment_reaches_the_receiver_signed(merchant: MerchantKit) -> None:
    raw = merchant.raw()
    with Receiver() as r:
        ep = create(raw, r.url("/hook"))
        res = raw.post("/v1/payments", payment_body(VISA, amount=1500, currency="JPY"))
        assert res.status_code == 201, res.text
        payment = res.json()
        events = raw.get(f"/v1/events?object_id={payment['id']}").json()["data"]
        assert events and {e["data"]["object"]["id"] for e in events} == {payment["id"]}
        r.wait_for(lambda: len(r.at("/hook")) >= len(events), timeout_s=15)
        got = r.at("/hook")
        assert sorted(x.webhook_id for x in got) == sorted(e["id"] for e in events)
        verify_all(got, ep["secret"])
        succeeded = [x for x in got if json.loads(x.body)["type"] == "payment.succeeded"]
        assert len(succeeded) == 1
        stored = raw.get(f"/v1/events/{succeeded[0].webhook_id}")
        assert stored.status_code == 200 and stored.content == succeeded[0].body
        obj = json.loads(succeeded[0].body)["data"]["object"]
        assert (obj["status"], obj["amount_received"]) == ("succeeded", 1500)

        def logged() -> list[dict[str, Any]]:
            return list(raw.get(f"{EP}/{ep['id']}/deliveries").json()["data"])

        deadline = time.monotonic() + 10
        while {d["status"] for d in logged()} != {"succeeded"} and time.monotonic() < deadline:
            time.sleep(0.1)
        log = logged()
        assert len(log) == len(events) and {d["status"] for d in log} == {"succeeded"}
        attempt = log[0]["attempts"][0]
        assert attempt["status_code"] == 200 and attempt["attempted_at"].endswith("Z")
        assert attempt["latency_ms"] >= 0 and attempt["response_excerpt"] == "ok"
        assert raw.get(f"{EP}/{ep['id']}/deliveries?status=failed").json()["data"] == []
        metrics = httpx.get(merchant.base_url + "/metrics").text
        for series in ('openpse_webhook_deliveries_total{outcome="succeeded"}',
                       "openpse_webhook_attempt_duration_seconds_bucket",
                       "openpse_webhook_delivery_lag_seconds_count",
                       "openpse_webhook_queue_depth_total",
                       "openpse_webhook_oldest_due_age_seconds_max"):
            assert series in metrics, series

        again = raw.post(f"/v1/events/{succeeded[0].webhook_id}/redeliver", {})
        assert again.status_code == 200, again.text
        assert [d["endpoint"] for d in again.json()["data"]] == [ep["id"]]
        r.wait_for(lambda: len(r.at("/hook")) == len(events) + 1, timeout_s=15)
        assert r.at("/hook")[-1].webhook_id == succeeded[0].webhook_id
        verify_all(r.at("/hook"), ep["secret"])


async def test_event_list_filters_and_pages(merchant: MerchantKit, services: Any) -> None:
    from openpse.services.context import Caller
    from tests.support.webhooks import emit_events

    caller = Caller(merchant_id=merchant.merchant_id, livemode=False)
    refunds = await emit_events(services, caller, 3, type="refund.succeeded")
    payments = await emit_events(services, caller, 2, type="payment.failed")
    raw = merchant.raw()
    listed = raw.get("/v1/events?type=refund.succeeded").json()
    assert [e["id"] for e in listed["data"]] == list(reversed(refunds))  # newest first
    first = raw.get("/v1/events?limit=2").json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = raw.get(f"/v1/events?limit=10&cursor={first['next_cursor']}").json()
    assert [e["id"] for e in first["data"] + rest["data"]] == list(reversed(refunds + payments))
    one = raw.get(f"/v1/events/{payments[0]}").json()
    assert raw.get(f"/v1/events?object_id={one['data']['object']['id']}").json()["data"] == [one]
    created = one["created"]
    assert raw.get(f"/v1/events?created_gte={created}&type=payment.failed").json()["data"]
    earlier = raw.get(f"/v1/events?created_lt={created}").json()["data"]
    assert all(e["created"] < created for e in earlier)
    assert payments[0] not in [e["id"] for e in earlier]
    assert_error(raw.get("/v1/events?created_gte=yesterday"), 400, "invalid_request_error",
                 "parameter_invalid", param="created_gte")


async def test_another_merchants_or_modes_ids_answer_404(
    merchant: MerchantKit, services: Any, server: Any
) -> None:
    """RELIABILITY 8 and 10: endpoints, deliveries, events and redelivery never cross."""
    from openpse.services import merchants as m
    from openpse.services.context import Caller
    from tests.support.webhooks import emit_events

    raw = merchant.raw()
    with Receiver() as r:
        mine = create(raw, r.url("/mine"))
        [event_id] = await emit_events(
            services, Caller(merchant_id=merchant.merchant_id, livemode=False), 1)
        other = (await new_merchant(services, server.base_url)).raw()
        theirs = create(other, r.url("/theirs"))
        approved = await new_merchant(services, server.base_url, approve=True)
        live = await m.create_access_key(services, approved.merchant_id, livemode=True)
        live_raw = MerchantKit(approved.merchant_id, live.key["id"], live.secret,
                               server.base_url).raw()
        sandbox_of_approved = approved.raw()
        sandbox_ep = create(sandbox_of_approved, r.url("/sandbox"))
        [sandbox_event] = await emit_events(
            services, Caller(merchant_id=approved.merchant_id, livemode=False), 1)
        probes: list[tuple[Any, str, str, dict[str, Any] | None]] = [
            (other, "GET", f"{EP}/{mine['id']}", None),
            (other, "PATCH", f"{EP}/{mine['id']}", {"enabled": False}),
            (other, "DELETE", f"{EP}/{mine['id']}", None),
            (other, "POST", f"{EP}/{mine['id']}/rotate_secret", {}),
            (other, "GET", f"{EP}/{mine['id']}/deliveries", None),
            (other, "GET", f"/v1/events/{event_id}", None),
            (other, "POST", f"/v1/events/{event_id}/redeliver", {}),
            (raw, "POST", f"/v1/events/{event_id}/redeliver", {"endpoint": theirs["id"]}),
            (live_raw, "GET", f"{EP}/{sandbox_ep['id']}", None),
            (live_raw, "POST", f"{EP}/{sandbox_ep['id']}/rotate_secret", {}),
            (live_raw, "GET", f"/v1/events/{sandbox_event}", None),
            (live_raw, "POST", f"/v1/events/{sandbox_event}/redeliver", {}),
        ]
        for client, method, path, body in probes:
            res = client.request(method, path, json_body=body)
            assert_error(res, 404, "invalid_request_error", "resource_missing")
        assert other.get("/v1/events").json()["data"] == []
        assert [e["id"] for e in other.get(EP).json()["data"]] == [theirs["id"]]
        assert live_raw.get(EP).json()["data"] == []
        still = raw.get(f"{EP}/{mine['id']}").json()
        assert (still["status"], still["version"]) == ("enabled", 1)
