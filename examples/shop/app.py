"""The example shop: a Starlette app that sells from stock through OpenPSE's hosted checkout.

    POST /orders              {sku, quantity} (form or JSON): reserve stock, open a checkout
                              session, send the shopper to its page
    GET  /orders/{id}         the order (JSON)
    GET  /orders/{id}/thanks  where the checkout page returns the shopper; it changes nothing:
                              only a verified webhook marks an order paid
    POST /webhooks/openpse    verified with openpse_sdk.webhooks, applied exactly once
                              (store.py says how)

Configuration (environment): OPENPSE_BASE_URL, OPENPSE_ACCESS_KEY, OPENPSE_SECRET,
SHOP_WEBHOOK_SECRETS (comma-separated whsec_ secrets: during a rotation list the new and the
old), SHOP_PUBLIC_URL (where shoppers reach this app), SHOP_DB (SQLite file),
SHOP_PAYMENT_METHODS (comma-separated, default card,konbini).
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from openpse_sdk import AsyncOpenPSE, OpenPSEError, webhooks
from openpse_sdk.errors import SignatureVerificationError

from .store import OutOfStock, Store

__all__ = ["ShopConfig", "create_app"]

log = logging.getLogger("shop")
CHECKOUT_EXPIRES_S = 1800  # the stock stays reserved this long at most


@dataclass
class ShopConfig:
    openpse_url: str
    access_key: str
    secret: str
    public_url: str
    db_path: Path
    webhook_secrets: list[str] = field(default_factory=list)
    # konbini: the shopper gets a voucher to pay at a store; unpaid, it expires (stock returns)
    payment_method_types: list[str] = field(default_factory=lambda: ["card", "konbini"])

    @classmethod
    def from_env(cls) -> ShopConfig:
        env = os.environ
        return cls(
            openpse_url=env.get("OPENPSE_BASE_URL", "http://127.0.0.1:8000"),
            access_key=env["OPENPSE_ACCESS_KEY"],
            secret=env["OPENPSE_SECRET"],
            public_url=env.get("SHOP_PUBLIC_URL", "http://127.0.0.1:8080"),
            db_path=Path(env.get("SHOP_DB", "shop.db")),
            webhook_secrets=[s for s in env.get("SHOP_WEBHOOK_SECRETS", "").split(",") if s],
            payment_method_types=env.get("SHOP_PAYMENT_METHODS", "card,konbini").split(","),
        )


def create_app(config: ShopConfig | None = None) -> Starlette:
    cfg = config or ShopConfig.from_env()
    store = Store(cfg.db_path)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        store.init()
        async with AsyncOpenPSE(cfg.openpse_url, cfg.access_key, cfg.secret) as client:
            state["client"] = client
            yield

    async def home(request: Request) -> Response:
        rows = "".join(
            f"<li>{html.escape(p['name'])}: {p['price']} {p['currency']} ({p['stock']} left)"
            f"<form method=post action=/orders><input type=hidden name=sku value={p['sku']}>"
            "<input name=quantity value=1 size=2><button>Buy</button></form></li>"
            for p in await asyncio.to_thread(store.products))
        return HTMLResponse(f"<h1>Example shop</h1><ul>{rows}</ul>")

    async def products(request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(store.products))

    async def create_order(request: Request) -> Response:
        wants_json = "application/json" in request.headers.get("content-type", "")
        data: Any = await request.json() if wants_json else dict(await request.form())
        try:
            order = await asyncio.to_thread(store.create_order, str(data.get("sku", "")),
                                            int(data.get("quantity", 1)))
        except OutOfStock:
            return JSONResponse({"error": "out of stock"}, status_code=409)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        client: AsyncOpenPSE = state["client"]
        try:
            session = await client.checkout_sessions.create(
                amount=order["amount"], currency=order["currency"],
                merchant_order_id=order["id"],
                payment_method_types=cfg.payment_method_types,
                success_url=f"{cfg.public_url}/orders/{order['id']}/thanks",
                cancel_url=f"{cfg.public_url}/",
                expires_in_seconds=CHECKOUT_EXPIRES_S,
                # the same key on every retry of *this* order: never two sessions for one order
                idempotency_key=f"checkout-{order['id']}",
            )
        except OpenPSEError as exc:
            log.warning("checkout for %s failed: %r", order["id"], exc)
            await asyncio.to_thread(store.cancel_unpaid, order["id"])
            return JSONResponse({"error": "payment is unavailable, try again"}, status_code=502)
        await asyncio.to_thread(store.attach_session, order["id"], session["id"])
        if wants_json:
            return JSONResponse({"order": order["id"], "checkout_url": session["url"]},
                                status_code=201)
        return RedirectResponse(session["url"], status_code=303)

    async def get_order(request: Request) -> Response:
        order = await asyncio.to_thread(store.order, request.path_params["order_id"])
        if order is None:
            return JSONResponse({"error": "no such order"}, status_code=404)
        return JSONResponse(order)

    async def thanks(request: Request) -> Response:
        order = await asyncio.to_thread(store.order, request.path_params["order_id"])
        status = order["status"] if order else "unknown"
        note = "" if status == "paid" else " We will email you as soon as the payment is confirmed."
        return HTMLResponse(f"<h1>Thank you</h1><p>Your order is {html.escape(status)}.{note}</p>")

    async def webhook(request: Request) -> Response:
        body = await request.body()  # the raw bytes: re-serialised JSON would not verify
        try:
            event = webhooks.verify(body, request.headers, cfg.webhook_secrets)
        except SignatureVerificationError as exc:
            log.warning("refused a webhook: %s (%s)", exc, exc.code)
            return JSONResponse({"error": exc.code}, status_code=400)
        # Any exception below answers 500: the event stays unprocessed and is delivered again.
        outcome = await asyncio.to_thread(store.handle_event, event)
        log.info("%s %s: %s", event["id"], event["type"], outcome)
        return JSONResponse({"received": event["id"], "outcome": outcome})

    app = Starlette(lifespan=lifespan, routes=[
        Route("/", home),
        Route("/products", products),
        Route("/orders", create_order, methods=["POST"]),
        Route("/orders/{order_id}", get_order),
        Route("/orders/{order_id}/thanks", thanks),
        Route("/webhooks/openpse", webhook, methods=["POST"]),
    ])
    app.state.store = store
    app.state.config = cfg
    return app
