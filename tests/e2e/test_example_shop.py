"""The example shop (examples/shop) end to end against a live OpenPSE server: order, hosted page
paid by a form post, webhook, exactly-once fulfilment under redelivery, stock released when a
checkout expires."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from examples.shop.app import ShopConfig, create_app

from openpse_sdk import webhooks
from tests.support.servers import free_port
from tests.support.threaded_app import ThreadedApp

VISA = "4242424242424242"


def _wait(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _submit_hosted_page(url: str, fields: dict[str, str]) -> httpx.Response:
    """What the shopper's browser does: load the page, submit one of its forms."""
    page = httpx.get(url)
    assert page.status_code == 200, page.text
    hidden = dict(re.findall(r'<input type="hidden" name="(token|nonce)" value="([^"]*)"',
                             page.text))
    return httpx.post(url.split("?", 1)[0], data={**hidden, **fields})


CARD_FORM = {"method": "card", "number": VISA, "exp_month": "12", "exp_year": "2034",
             "cvc": "123", "name": "Hanako Yamada"}
KONBINI_FORM = {"method": "konbini", "name": "山田花子", "email": "hanako@example.jp"}
DAY_S = 86400


@contextmanager
def running_shop(merchant, tmp_path: Path) -> Iterator[tuple[Any, str, dict[str, Any]]]:
    """The shop on a free port, its webhook endpoint registered with OpenPSE."""
    port = free_port()
    shop_url = f"http://127.0.0.1:{port}"
    with merchant.sdk() as client:
        endpoint = client.webhook_endpoints.create(url=f"{shop_url}/webhooks/openpse",
                                                   enabled_events=["*"])
    config = ShopConfig(openpse_url=merchant.base_url, access_key=merchant.access_key,
                        secret=merchant.secret, public_url=shop_url,
                        db_path=tmp_path / "shop.db", webhook_secrets=[endpoint["secret"]])
    app = create_app(config)
    with ThreadedApp(app, port=port):
        yield app, shop_url, endpoint


def _fulfilments(db: Path, order_id: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM fulfilments WHERE order_id = ?",
                                (order_id,)).fetchone()[0])


def test_shop_end_to_end(merchant, tmp_path: Path) -> None:
    with running_shop(merchant, tmp_path) as (app, shop_url, endpoint), \
            merchant.sdk() as client, httpx.Client(base_url=shop_url) as shop:
        store, config = app.state.store, app.state.config

        def stock() -> int:
            return int({p["sku"]: p["stock"] for p in shop.get("/products").json()}["tea"])

        def order(order_id: str) -> dict[str, Any]:
            return dict(shop.get(f"/orders/{order_id}").json())

        # 1. an order reserves stock and opens a checkout session
        assert stock() == 5
        created = shop.post("/orders", json={"sku": "tea", "quantity": 2})
        assert created.status_code == 201, created.text
        order_id, checkout_url = created.json()["order"], created.json()["checkout_url"]
        assert stock() == 3 and order(order_id)["status"] == "pending"

        # 2. the shopper pays on the hosted page; the return page changes nothing by itself
        paid_page = _submit_hosted_page(checkout_url, CARD_FORM)
        assert paid_page.status_code == 303
        assert paid_page.headers["location"].startswith(f"{shop_url}/orders/{order_id}/thanks")

        # 3. the webhook marks the order paid, once
        _wait("the order to be paid", lambda: order(order_id)["status"] == "paid")
        paid = order(order_id)
        assert paid["fulfilments"] == 1 and paid["payment"].startswith("pay_")
        assert "Thank you" in shop.get(f"/orders/{order_id}/thanks").text
        [completed] = client.events.list(type="checkout.session.completed",
                                         object_id=paid["checkout_session"])["data"]
        [succeeded] = client.events.list(type="payment.succeeded",
                                         object_id=paid["payment"])["data"]
        _wait("both events", lambda: store.receipts(completed["id"]) == 1
              and store.receipts(succeeded["id"]) == 1)

        # 4. redelivered events (same webhook-id) are acknowledged and change nothing
        for event in (completed, succeeded):
            client.events.redeliver(event["id"])
        _wait("the redeliveries", lambda: store.receipts(completed["id"]) == 2
              and store.receipts(succeeded["id"]) == 2)
        assert order(order_id)["fulfilments"] == 1
        assert _fulfilments(config.db_path, order_id) == 1
        assert stock() == 3

        # 5. forged and stale deliveries are refused or ignored
        stale_payment = {**succeeded["data"]["object"], "version": 1, "status": "canceled",
                         "cancellation_reason": "expired"}
        stale = json.dumps({"id": "evt_late_arrival", "object": "event",
                            "type": "payment.canceled",
                            "data": {"object": stale_payment, "previous_attributes": {}}},
                           separators=(",", ":")).encode()
        forged = shop.post("/webhooks/openpse", content=stale, headers=webhooks.signed_headers(
            stale, webhooks.SECRET_PREFIX + "Zm9yZ2VkLXNlY3JldC1mb3ItYW4tYXR0YWNrZXIhIQ==",
            msg_id="evt_late_arrival"))
        assert forged.status_code == 400
        late = shop.post("/webhooks/openpse", content=stale, headers=webhooks.signed_headers(
            stale, endpoint["secret"], msg_id="evt_late_arrival"))
        assert late.status_code == 200 and late.json()["outcome"].startswith("stale")
        assert order(order_id)["status"] == "paid" and stock() == 3

        # 6. an expired checkout releases the stock it held
        second = shop.post("/orders", json={"sku": "tea", "quantity": 1}).json()["order"]
        assert stock() == 2
        client.checkout_sessions.expire(order(second)["checkout_session"])
        _wait("the expired order", lambda: order(second)["status"] == "canceled")
        assert stock() == 3 and order(second)["fulfilments"] == 0

        # every delivery to the shop succeeded (the last ones may still be recording)
        def statuses() -> set[str]:
            deliveries = client.webhook_endpoints.list_all_deliveries(endpoint["id"])
            return {d["status"] for d in deliveries}

        _wait("every delivery to succeed", lambda: statuses() == {"succeeded"})


def test_shop_releases_stock_when_a_voucher_expires(merchant, tmp_path: Path) -> None:
    with running_shop(merchant, tmp_path) as (app, shop_url, _endpoint), \
            merchant.sdk() as client, httpx.Client(base_url=shop_url) as shop:
        def tea() -> int:
            return int({p["sku"]: p["stock"] for p in shop.get("/products").json()}["tea"])

        created = shop.post("/orders", json={"sku": "tea", "quantity": 2}).json()
        order_id = created["order"]
        assert tea() == 3
        voucher = _submit_hosted_page(created["checkout_url"], KONBINI_FORM)
        assert voucher.status_code == 303, voucher.text  # to the voucher: pay at a store
        [payment] = client.payments.list(merchant_order_id=order_id)["data"]
        assert payment["status"] == "requires_action"

        client.test_helpers.advance_clock(seconds=5 * DAY_S)  # past the voucher's deadline
        _wait("the order to be released",
              lambda: shop.get(f"/orders/{order_id}").json()["status"] == "canceled")
        [canceled] = client.events.list(type="payment.canceled",
                                        object_id=payment["id"])["data"]
        assert canceled["data"]["object"]["cancellation_reason"] == "expired"
        _wait("the payment.canceled delivery", lambda: app.state.store.receipts(
            canceled["id"]) == 1)
        assert tea() == 5  # released once, although the session expired with it
        assert shop.get(f"/orders/{order_id}").json()["fulfilments"] == 0
