"""The routers of every capability, collected in one place (the app includes them in order)."""

from __future__ import annotations

from typing import Any

from openpse.api.routes import balance, payments, refunds, test_helpers

ROUTERS: list[Any] = [
    payments.router,
    refunds.router,
    balance.router,
    test_helpers.router,
]

# Webhook endpoints and events (issue 4).
from openpse.api.routes import events, webhooks  # noqa: E402

ROUTERS += [webhooks.router, events.router]

# Checkout sessions and the hosted pages they point at (/pay, /sandbox/3ds: not under /v1).
from openpse.api.routes import checkout  # noqa: E402
from openpse.pages import views as pages  # noqa: E402

ROUTERS += [checkout.router, pages.router]

# Who the caller is as the server sees it (key, mode, client address, clock): openpse doctor.
from openpse.api.routes import whoami  # noqa: E402

ROUTERS += [whoami.router]
